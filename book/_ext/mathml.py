"""Render math to MathML when the book is built, so pages need no MathJax.

Sphinx's default renderer loads MathJax from a CDN, which fails offline. Docutils
can translate LaTeX to MathML itself, and browsers display MathML natively, so
the built HTML stays self-contained. LaTeX the translator does not know is
shown as its source, with a build warning naming it.
"""
from docutils.nodes import SkipNode as _SkipNode
from docutils.utils.math import MathError, latex2mathml
from sphinx.locale import _
from sphinx.util import logging
from sphinx.util.math import get_node_equation_number

logger = logging.getLogger(__name__)


def _convert(self, node, block: bool) -> str:
    tex = node.astext()
    try:
        return latex2mathml.tex2mathml(tex, as_block=block)
    except MathError as err:
        logger.warning("math not converted to MathML (%s): %s", err, tex, location=node)
        return f'<code class="math-source">{self.encode(tex)}</code>'


def visit_inline(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate"))
    self.body.append(_convert(self, node, block=False) + "</span>")
    raise _SkipNode


def visit_block(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
    if node.get("number"):
        self.body.append(f'<span class="eqno">({get_node_equation_number(self, node)})')
        self.add_permalink_ref(node, _("Link to this equation"))
        self.body.append("</span>")
    self.body.append(_convert(self, node, block=True) + "</div>\n")
    raise _SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (visit_inline, None), (visit_block, None))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
