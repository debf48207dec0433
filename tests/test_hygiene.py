"""Committed chapter notebooks follow the contract the runner, the sweeps and nbval rely on.

For every ``notebooks/NN_*.ipynb``: one ``parameters`` cell of annotated literal
assignments whose defaults are the smoke preset, YAML limits only on names the
cell defines, executed top to bottom with outputs (nbval's reference, made by
``effnb refresh``), no papermill traces, kernel python3. The same checks run on
the runner's fixture chapter, and on broken copies of it to show they bite.
"""
import ast
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if "." not in p.stem)
FIXTURE = Path(__file__).parent / "data" / "notebooks" / "99_tiny.ipynb"


def tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def papermill_names(src: str) -> set:
    """The parameter names papermill's own line parser sees (it warns about the rest on every run)."""
    import logging

    import nbformat
    from papermill.translators import PythonTranslator
    log = logging.getLogger("papermill")
    level, log.level = log.level, logging.ERROR
    try:
        return {p.name for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(src))}
    finally:
        log.setLevel(level)


def problems(nb: dict, spec: dict | None) -> list[str]:
    """Everything wrong with a committed chapter notebook (empty when it is clean)."""
    out = []
    cells = nb.get("cells", [])
    params = [c for c in cells if "parameters" in tags(c)]
    if len(params) != 1:
        out.append(f"{len(params)} cells tagged `parameters`; exactly one is required")
    defaults = {}
    for cell in params[:1]:
        try:
            tree = ast.parse(source(cell))
        except SyntaxError as exc:
            return out + [f"parameters cell does not parse: {exc}"]
        for stmt in tree.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value):
                out.append(f"parameters cell line {stmt.lineno}: not an annotated assignment `name: type = literal`")
                continue
            try:
                defaults[stmt.target.id] = ast.literal_eval(stmt.value)
            except ValueError:
                out.append(f"parameter {stmt.target.id}: default is not a literal")
    if params and defaults:
        missed = sorted(set(defaults) - papermill_names(source(params[0])))
        if missed:
            out.append(f"papermill cannot read parameter(s) {', '.join(missed)}: it skips any line with a "
                       "second '=' (write 'at least' for '>=' in help comments)")
    spec = spec or {}
    for name in (spec.get("parameters") or {}):
        if name not in defaults:
            out.append(f"YAML constrains `{name}`, which the parameters cell does not define")
    smoke = (spec.get("presets") or {}).get("smoke") or {}
    for name, value in smoke.items():
        if defaults.get(name, object()) != value:
            out.append(f"smoke preset sets {name}={value!r} but the notebook default is {defaults.get(name)!r}; "
                       "the notebook's defaults are the smoke preset")
    code = [c for c in cells if c.get("cell_type") == "code" and source(c).strip()]
    counts = [c.get("execution_count") for c in code]
    if any(n is None for n in counts):
        out.append("not executed: code cells without execution counts (run `effnb refresh CHAPTER`)")
    elif counts != sorted(counts) or len(set(counts)) != len(counts):
        out.append(f"execution counts {counts} are not in order: executed out of order (run `effnb refresh`)")
    if code and not any(c.get("outputs") for c in code):
        out.append("no outputs at all: nbval has nothing to compare (run `effnb refresh CHAPTER`)")
    for i, c in enumerate(cells):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            out.append(f"cell {i} has an error output")
        if "injected-parameters" in tags(c):
            out.append(f"cell {i} is tagged injected-parameters (a papermill output, not a source notebook)")
        if "papermill" in c.get("metadata", {}):
            out.append(f"cell {i} carries papermill metadata")
    if "papermill" in nb.get("metadata", {}):
        out.append("notebook metadata has a papermill section (commit the source, not a run)")
    out += plumbing_shown(cells)
    kernel = nb.get("metadata", {}).get("kernelspec", {}).get("name")
    if kernel != "python3":
        out.append(f"kernelspec is {kernel!r}, not 'python3'")
    return out


def _bookkeeping_only(src: str) -> bool:
    """Every statement is a ``ch.record(...)`` or ``ch.finish()`` call: nothing a reader needs to see."""
    try:
        body = ast.parse(src).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                              and isinstance(s.value.func, ast.Attribute) and isinstance(s.value.func.value, ast.Name)
                              and s.value.func.value.id == "ch" and s.value.func.attr in ("record", "finish")
                              for s in body)


def plumbing_shown(cells: list) -> list[str]:
    """The book hides plumbing with cell tags: nbval markers are tags, not comments; the set-up cell and
    cells heavy with bookkeeping (claims checks, three or more ``ch.record``) fold their code
    (``hide-input``); a cell of bookkeeping alone is removed (``remove-cell``)."""
    out = []
    for i, c in enumerate(cells):
        if c.get("cell_type") != "code":
            continue
        src, t = source(c), set(tags(c))
        if re.search(r"^\s*#\s*NBVAL_", src, re.M):
            out.append(f"cell {i}: an nbval comment marker shows on the page; tag the cell `nbval-check-output` instead")
        if _bookkeeping_only(src):
            if "remove-cell" not in t:
                out.append(f"cell {i} only records results: tag it `remove-cell`")
        elif ("effnb.chapter.start" in src or "ch.claims.check(" in src or src.count("ch.record(") >= 3) \
                and not t & {"hide-input", "remove-input", "remove-cell"}:
            out.append(f"cell {i} is set-up or bookkeeping code: tag it `hide-input`")
    return out + figures_uncaptioned(cells)


def figures_uncaptioned(cells: list) -> list[str]:
    """Every figure on a page is numbered and captioned: drawn with ``ch.figure(name)`` (the cell's own
    copy removed with ``remove-output``) and placed by a ``{glue:figure} name`` directive with a ``:name:``."""
    out, glued = [], []
    for i, c in enumerate(cells):
        for o in c.get("outputs", []):
            data, meta = o.get("data", {}), o.get("metadata", {})
            if "scrapbook" in meta:
                if any(k.endswith("image/png") or k.endswith("image/svg+xml") for k in data):
                    glued.append(meta["scrapbook"].get("name"))
            elif ("image/png" in data or "image/svg+xml" in data) and \
                    not set(tags(c)) & {"remove-output", "remove-cell"}:
                out.append(f"cell {i} shows a bare figure: draw it with ch.figure(name), tag the cell "
                           "`remove-output`, and place it with a captioned {glue:figure} directive")
    prose = "\n".join(source(c) for c in cells if c.get("cell_type") == "markdown")
    for name in glued:
        m = re.search(r"```\{glue:figure\}\s+" + re.escape(str(name)) + r"\s*\n(.*?)```", prose, re.S)
        if not m:
            out.append(f"figure {name!r} is glued but no {{glue:figure}} {name} directive places it")
        elif ":name:" not in m.group(1) or not re.sub(r"^:.*$", "", m.group(1), flags=re.M).strip():
            out.append(f"figure {name!r} needs a :name: (for its number and cross-references) and a caption")
    return out


def load(path: Path):
    nb = json.loads(path.read_text())
    spec_path = path.with_suffix(".yaml")
    spec = yaml.safe_load(spec_path.read_text()) if spec_path.exists() else None
    return nb, spec


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks committed under notebooks/ yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_chapter_notebook_is_clean(path):
    assert path.with_suffix(".yaml").exists(), f"{path.name} has no {path.stem}.yaml beside it"
    nb, spec = load(path)
    assert str(spec.get("chapter")).zfill(2) == path.stem.split("_", 1)[0], \
        "YAML `chapter` must be the notebook's number"
    assert spec.get("title"), "YAML needs a `title`"
    found = problems(nb, spec)
    assert not found, f"{path.name}:\n  " + "\n  ".join(found)


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks committed under notebooks/ yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_outputs_are_not_stale(path):
    """The committed outputs come from the chapter's current code: its cells, YAML, packages and kernels."""
    from effnb import runner
    nb = json.loads(path.read_text())
    recorded = (nb.get("metadata", {}).get("effnb") or {}).get("source_hash")
    stem = path.stem
    assert recorded == runner.source_hash(stem), (
        f"{path.name}: its outputs were made from other code than what is committed now "
        f"(a cell, its YAML, or a package or kernel family it declares changed): run `effnb refresh {stem[:2]}`")


# A number with a unit typed into prose drifts from what the code measures: it must come from glue,
# or be listed in the chapter YAML's `typed_numbers` (literal: why it is typed, e.g. a quoted paper figure).
_UNIT = (r"(?:x\b|×|%|\s?(?:ms|µs|us|ns|s|GB/s|GiB/s|MB/s|GFLOP/s|TFLOP/s|GFLOP|MFLOP|TFLOP|FLOPs?|MiB|GiB|MB|KiB"
         r"|points?|pts|images|sentences|tokens|bits|bytes|B|cores|threads)\b)")
_TYPED = re.compile(r"(?<![\w.{`/-])(\d+(?:\.\d+)?(?:\s?[-–]\s?\d+(?:\.\d+)?)?)" + _UNIT)


def typed_numbers(nb: dict) -> list[tuple[int, str]]:
    """(cell index, text) of each number-with-unit typed into markdown (glue, code and math are skipped)."""
    out = []
    for i, c in enumerate(nb.get("cells", [])):
        if c.get("cell_type") != "markdown":
            continue
        md = re.sub(r"\{glue:?\w*\}`[^`]*`", " ", source(c))
        md = re.sub(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", " ", md, flags=re.S)
        out += [(i, m.group(0).strip()) for m in _TYPED.finditer(md)]
    return out


@pytest.mark.skipif(not CHAPTERS, reason="no chapter notebooks committed under notebooks/ yet")
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_prose_numbers_are_glued_or_allowed(path):
    nb, spec = load(path)
    allowed = {str(k): v for k, v in ((spec or {}).get("typed_numbers") or {}).items()}
    typed = typed_numbers(nb)
    unexplained = sorted({t for _, t in typed if t not in allowed})
    assert not unexplained, (f"{path.name} types {unexplained} into its prose: glue them from the run "
                             f"(ch.record + {{glue:}}), or list each under typed_numbers in {path.stem}.yaml with why")
    unused = sorted(set(allowed) - {t for _, t in typed})
    assert not unused, f"{path.stem}.yaml allows typed numbers the notebook no longer has: {unused}"
    assert all(str(v).strip() for v in allowed.values()), "each typed number needs its reason"


def test_typed_numbers_are_found():
    nb = {"cells": [{"cell_type": "markdown", "source": "It ran 3.2x faster, at 45% of 20 GB/s; "
                     "{glue:text}`speed:.2f`x and `4x` and $2x$ are fine; FineQuant says 3.65x."}]}
    assert [t for _, t in typed_numbers(nb)] == ["3.2x", "45%", "20 GB/s", "3.65x"]


def test_fixture_chapter_is_clean():
    assert problems(*load(FIXTURE)) == []


def _broken(mutate):
    nb, spec = load(FIXTURE)
    nb, spec = copy.deepcopy(nb), copy.deepcopy(spec)
    mutate(nb, spec)
    return problems(nb, spec)


@pytest.mark.parametrize("mutate, expected", [
    (lambda nb, spec: nb["cells"][1]["metadata"].update(tags=[]), "0 cells tagged `parameters`"),
    (lambda nb, spec: nb["cells"][2]["metadata"].update(tags=["parameters"]), "2 cells tagged"),
    (lambda nb, spec: nb["cells"][1].update(source="threads = 1\n"), "not an annotated assignment"),
    (lambda nb, spec: nb["cells"][1].update(source="import os\nthreads: int = os.cpu_count()\n"),
     "not an annotated assignment"),
    (lambda nb, spec: nb["cells"][1].update(source="threads: int = os.cpu_count()\n"), "not a literal"),
    (lambda nb, spec: spec["presets"].update(smoke={"scale": 3.0}), "smoke preset sets scale=3.0"),
    (lambda nb, spec: spec["parameters"].update(repeats={"min": 1}), "YAML constrains `repeats`"),
    (lambda nb, spec: nb["cells"][1].update(source="threads: int = 1  # n >= 1\n"), "papermill cannot read"),
    (lambda nb, spec: nb["cells"][2].update(execution_count=None), "not executed"),
    (lambda nb, spec: nb["cells"][2].update(execution_count=9), "not in order"),
    (lambda nb, spec: nb["cells"][1]["metadata"].update(tags=["parameters", "injected-parameters"]),
     "tagged injected-parameters"),
    (lambda nb, spec: nb["metadata"].update(papermill={}), "papermill section"),
    (lambda nb, spec: nb["metadata"]["kernelspec"].update(name="python3.11"), "not 'python3'"),
    (lambda nb, spec: nb["cells"][2]["outputs"].append({"output_type": "error", "ename": "E", "evalue": "",
                                                        "traceback": []}), "error output"),
])
def test_checks_catch_broken_notebooks(mutate, expected):
    found = _broken(mutate)
    assert any(expected in f for f in found), found


@pytest.mark.parametrize("src, cell_tags, expected", [
    ("# NBVAL_CHECK_OUTPUT\nprint(1)", ["nbval-check-output"], "nbval comment marker"),
    ("ch.record('a', 1)\nch.record('b', 2);", [], "tag it `remove-cell`"),
    ("ch = effnb.chapter.start('01')", [], "tag it `hide-input`"),
    ("ch.claims.check('x', paper='p', statement='s', quoted='q', measured=1, target=('>=', 1))\nch.claims", [],
     "tag it `hide-input`"),
])
def test_plumbing_checks_bite(src, cell_tags, expected):
    cell = {"cell_type": "code", "metadata": {"tags": cell_tags}, "source": src, "outputs": []}
    assert any(expected in f for f in plumbing_shown([cell]))


def test_plumbing_checks_pass_tagged_cells():
    cells = [{"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": "ch.finish();"},
             {"cell_type": "code", "metadata": {"tags": ["hide-input"]}, "source": "ch = effnb.chapter.start('01')"},
             {"cell_type": "code", "metadata": {"tags": ["nbval-check-output"]}, "source": "print(1)"}]
    assert plumbing_shown(cells) == []


def test_figure_checks_bite():
    bare = {"cell_type": "code", "metadata": {}, "source": "plt.show()",
            "outputs": [{"output_type": "display_data", "data": {"image/png": "x"}, "metadata": {}}]}
    assert any("bare figure" in f for f in figures_uncaptioned([bare]))
    glued = {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "source": "ch.figure('fig_a')",
             "outputs": [bare["outputs"][0], {"output_type": "display_data", "metadata": {"scrapbook": {"name": "fig_a"}},
                                              "data": {"application/papermill.record/image/png": "x"}}]}
    assert any("no {glue:figure} fig_a" in f for f in figures_uncaptioned([glued]))
    placed = {"cell_type": "markdown", "source": "```{glue:figure} fig_a\n:name: fig-a\n\nWhat it shows.\n```"}
    assert figures_uncaptioned([glued, placed]) == []
    uncaptioned = {"cell_type": "markdown", "source": "```{glue:figure} fig_a\n:name: fig-a\n```"}
    assert any("caption" in f for f in figures_uncaptioned([glued, uncaptioned]))
