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
INVALID = "invalid measurement"       # the measurement itself failed a sanity check: no verdict on the paper
INCONCLUSIVE = "inconclusive"         # a statistical claim whose interval is wider than its margin
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_TESTABLE, INVALID, INCONCLUSIVE)

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
    backend: str = ""     # what produced the figure: cpp-avx2, numba-avx512, torch, ...

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


def _finite(measured) -> bool:
    return (isinstance(measured, (int, float)) and not isinstance(measured, bool) and math.isfinite(measured))


def _require_figure(key: str, measured) -> None:
    if not _finite(measured):
        raise ClaimError(f"claim {key!r} has no finite measured figure ({measured!r}): measure it, or use "
                         f"not_testable(...) with the reason")


def _paired(key: str, differences) -> tuple[int, float, float]:
    """n, mean and standard error of paired differences (at least 2, all finite)."""
    import numpy as np
    d = np.asarray(differences, dtype=float)
    if d.size < 2 or not np.isfinite(d).all():
        raise ClaimError(f"claim {key!r} needs at least 2 finite paired differences, got {d.tolist()}")
    return d.size, float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) or 1e-12


class Ledger:
    """The claims of one chapter run, in the order stated."""

    def __init__(self, chapter: str = "", backend: str = ""):
        self.chapter = chapter
        self.backend = backend   # named in every row that does not name its own
        self.claims: list[Claim] = []

    def _add(self, claim: Claim) -> Claim:
        if any(c.key == claim.key for c in self.claims):
            raise ClaimError(f"claim {claim.key!r} stated twice in chapter {self.chapter}; give it another key")
        self.claims.append(claim)
        return claim

    def check(self, key: str, *, paper: str, statement: str, quoted: str, measured: float | None,
              target: tuple[str, float], unit: str = "", reason: str = "", backend: str = "",
              valid: tuple[bool, str] = (True, "")) -> Claim:
        """State a claim and judge it: verdict = ``measured <op> value`` for ``target=(op, value)``.

        ``valid=(False, why)`` (e.g. from :func:`effnb.bench.grows_with_work`) makes the
        verdict "invalid measurement" whatever the figure: a broken timing proves nothing.
        """
        op, value = target
        if op not in _OPS:
            raise ClaimError(f"target operator {op!r} for claim {key!r} must be one of {sorted(_OPS)}")
        ok, why = valid
        if ok:
            _require_figure(key, measured)
        elif not why.strip():
            raise ClaimError(f"claim {key!r} is marked invalid without saying why")
        finite = _finite(measured)
        verdict = (REPRODUCED if _OPS[op](float(measured), float(value)) else NOT_REPRODUCED) if ok else INVALID
        return self._add(Claim(key, paper, statement, quoted, float(measured) if finite else None, unit,
                               f"{op} {_fmt(float(value))} {unit}".strip(), verdict,
                               reason if ok else f"{why}. {reason}".strip(), backend or self.backend))

    def equivalent(self, key: str, *, paper: str, statement: str, quoted: str, differences, margin: float,
                   unit: str = "points", alpha: float = 0.05, backend: str = "") -> Claim:
        """"No loss" claims, judged by an equivalence test (TOST) on paired ``differences``.

        Reproduced when the (1 - 2 alpha) confidence interval of the mean difference
        lies inside +/- ``margin``; not reproduced when it lies wholly outside;
        inconclusive otherwise. The row states the test, the margin, the interval,
        n and the power to detect equivalence at a true difference of 0.
        """
        from scipy import stats
        if not margin > 0:
            raise ClaimError(f"claim {key!r}: the equivalence margin must be > 0, got {margin!r}")
        n, mean, se = _paired(key, differences)
        t = stats.t.ppf(1 - alpha, n - 1)
        lo, hi = mean - t * se, mean + t * se
        power = float(max(0.0, 2 * stats.t.cdf(margin / se - t, n - 1) - 1))
        if -margin < lo and hi < margin:
            verdict = REPRODUCED
        elif hi < -margin or lo > margin:
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        why = (f"TOST, alpha {alpha} each side: {100 * (1 - 2 * alpha):.0f}% CI [{lo:+.3g}, {hi:+.3g}] {unit} vs "
               f"margin +/-{margin:g}; n = {n}; power at a true difference of 0: {power:.0%}")
        return self._add(Claim(key, paper, statement, quoted, mean, unit, f"|diff| < {margin:g} {unit}",
                               verdict, why, backend or self.backend))

    def better(self, key: str, *, paper: str, statement: str, quoted: str, differences, effect: float,
               unit: str = "points", alpha: float = 0.05, backend: str = "") -> Claim:
        """"A improves on B" claims, judged by a one-sided paired t-test on ``differences`` (A - B per item).

        Reproduced when the lower end of the one-sided (1 - alpha) confidence interval of the mean
        difference is above 0; not reproduced otherwise. The row states the test, the interval, n, p and
        the power to detect a true improvement of ``effect`` (the smallest gain worth claiming)."""
        from scipy import stats
        if not effect > 0:
            raise ClaimError(f"claim {key!r}: the effect to detect must be > 0, got {effect!r}")
        n, mean, se = _paired(key, differences)
        t = stats.t.ppf(1 - alpha, n - 1)
        lo = mean - t * se
        p = float(stats.t.sf(mean / se, n - 1))
        power = float(stats.t.sf(t - effect / se, n - 1))
        why = (f"paired t-test, one-sided, alpha {alpha}: mean {mean:+.3g} {unit}, lower {100 * (1 - alpha):.0f}% "
               f"bound {lo:+.3g}, p = {p:.2g}; n = {n}; power to detect +{effect:g} {unit}: {power:.0%}")
        return self._add(Claim(key, paper, statement, quoted, lo, unit, f"lower bound > 0 {unit}",
                               REPRODUCED if lo > 0 else NOT_REPRODUCED, why, backend or self.backend))

    def not_testable(self, key: str, *, paper: str, statement: str, quoted: str, reason: str,
                     measured: float | None = None, unit: str = "", backend: str = "") -> Claim:
        """A claim this machine cannot test (say why, and what was measured instead, if anything)."""
        if not reason.strip():
            raise ClaimError(f"claim {key!r} is marked not testable without a reason")
        return self._add(Claim(key, paper, statement, quoted, measured, unit, "-", NOT_TESTABLE, reason,
                               backend or self.backend))

    def rows(self) -> list[dict]:
        return [dict(c.row(), chapter=self.chapter) for c in self.claims]

    def to_frame(self):
        import pandas as pd
        return pd.DataFrame(self.rows(), columns=["chapter", *Claim.__dataclass_fields__])

    def _repr_html_(self) -> str:
        return claims_table_html(self.rows())

    def __repr__(self) -> str:
        lines = [f"{c.verdict.upper():>26}  {c.paper}: {c.statement} (paper {c.quoted}; "
                 f"ours {_fmt(c.measured, c.target)} {c.unit}; target {c.target}; {c.backend or 'backend ?'})"
                 for c in self.claims]
        return "\n".join(lines) or "(no claims)"


_COLOURS = {REPRODUCED: "#d4edda", NOT_REPRODUCED: "#f8d7da", NOT_TESTABLE: "#e2e3e5", INVALID: "#ffe5b4",
            INCONCLUSIVE: "#fff3cd"}


def claims_table_html(rows: list[dict], extra_columns: tuple[str, ...] = ()) -> str:
    """An HTML table of claim rows (used in notebooks and the ledger page)."""
    cols = [*extra_columns, "paper", "statement", "quoted", "measured", "target", "verdict", "backend", "reason"]
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
