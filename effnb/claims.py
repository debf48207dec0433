"""Paper claims next to our measurements, with an honest verdict.

A chapter states each claim once: the paper, the figure the paper quotes, the
figure we measured, the target that decides, and the verdict that follows from
them. A claim with no measured figure is an error, never a pass; a claim we
cannot test at this scale says why.
"""
from __future__ import annotations

import html
import math
import operator
import re
from dataclasses import asdict, dataclass

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable at this scale"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE)

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


class ClaimError(ValueError):
    """A claim is stated without what it needs to be judged."""


@dataclass
class Claim:
    key: str
    paper: str
    statement: str
    quoted: str
    measured: float | None
    unit: str
    target: str
    verdict: str
    reason: str = ""

    def row(self) -> dict:
        return asdict(self)


def _fmt(x: float | None, target: str = "") -> str:
    """3 significant digits, more when 3 would print the target's own number (0.98 for 0.9797)."""
    if x is None:
        return "-"
    if not (x == 0 or 1e-3 <= abs(x) < 1e5):
        return f"{x:.2e}"
    m = re.search(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", target or "")
    digits = 3
    while m and digits < 8 and float(f"{x:.{digits}g}") == float(m.group()) and x != float(m.group()):
        digits += 1
    return f"{x:.{digits}g}"


class Ledger:
    """The claims of one chapter run, in the order stated."""

    def __init__(self, chapter: str = ""):
        self.chapter = chapter
        self.claims: list[Claim] = []

    def _add(self, claim: Claim) -> Claim:
        if any(c.key == claim.key for c in self.claims):
            raise ClaimError(f"claim {claim.key!r} stated twice in chapter {self.chapter}; give it another key")
        self.claims.append(claim)
        return claim

    def check(self, key: str, *, paper: str, statement: str, quoted: str, measured: float | None,
              target: tuple[str, float], unit: str = "", reason: str = "") -> Claim:
        """State a claim and judge it: verdict = ``measured <op> value`` for ``target=(op, value)``."""
        if measured is None or not isinstance(measured, (int, float)) or isinstance(measured, bool) \
                or math.isnan(measured):
            raise ClaimError(f"claim {key!r} has no measured figure ({measured!r}): measure it, or use "
                             f"not_testable(...) with the reason")
        op, value = target
        if op not in _OPS:
            raise ClaimError(f"target operator {op!r} for claim {key!r} must be one of {sorted(_OPS)}")
        ok = _OPS[op](float(measured), float(value))
        return self._add(Claim(key, paper, statement, quoted, float(measured), unit,
                               f"{op} {_fmt(float(value))} {unit}".strip(),
                               REPRODUCED if ok else NOT_REPRODUCED, reason))

    def not_testable(self, key: str, *, paper: str, statement: str, quoted: str, reason: str,
                     measured: float | None = None, unit: str = "") -> Claim:
        """A claim this machine cannot test (say why, and what was measured instead, if anything)."""
        if not reason.strip():
            raise ClaimError(f"claim {key!r} is marked not testable without a reason")
        return self._add(Claim(key, paper, statement, quoted, measured, unit, "-", NOT_TESTABLE, reason))

    def rows(self) -> list[dict]:
        return [dict(c.row(), chapter=self.chapter) for c in self.claims]

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame(self.rows(), columns=["chapter", *Claim.__dataclass_fields__])

    def _repr_html_(self) -> str:
        return claims_table_html(self.rows())

    def __repr__(self) -> str:
        lines = [f"{c.verdict.upper():>26}  {c.paper}: {c.statement} (paper {c.quoted}; "
                 f"ours {_fmt(c.measured, c.target)} {c.unit}; target {c.target})" for c in self.claims]
        return "\n".join(lines) or "(no claims)"


_COLOURS = {REPRODUCED: "#d4edda", NOT_REPRODUCED: "#f8d7da", NOT_TESTABLE: "#e2e3e5"}


def claims_table_html(rows: list[dict], extra_columns: tuple[str, ...] = ()) -> str:
    """An HTML table of claim rows (used in notebooks and the ledger page)."""
    cols = [*extra_columns, "paper", "statement", "quoted", "measured", "target", "verdict", "reason"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if c == "measured":
                v = f"{_fmt(v, str(r.get('target') or ''))} {r.get('unit', '')}".strip()
            style = f' style="background:{_COLOURS.get(r["verdict"], "")}"' if c == "verdict" else ""
            cells.append(f"<td{style}>{html.escape('' if v is None else str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="effnb-claims"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')
