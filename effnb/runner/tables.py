"""The HTML pieces the generated pages share: tables in a scroll box, verdict badges, numbers with units.

Every table is written on consecutive lines (a MyST raw-HTML block ends at a
blank line) inside ``<div class="effnb-scroll">``, so a table wider than the
page's column scrolls on its own instead of widening the page. Columns whose
value is the same on every row leave the table for its caption. The colours
of the badges live in ``book/_static/effnb.css``, one set per colour mode.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field

_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def count(n: int, word: str) -> str:
    """'1 run', '4 runs', '2 machines'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def nowrap(text_html: str) -> str:
    return f'<span class="effnb-nowrap">{text_html}</span>'


def badge(verdict: str) -> str:
    """A verdict as a coloured badge (colours per light and dark mode in effnb.css)."""
    return f'<span class="effnb-verdict" data-verdict="{esc(verdict)}">{esc(verdict)}</span>'


def when(stamp: str) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC' (as given when it does not parse)."""
    from datetime import datetime, timezone
    try:
        t = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return stamp or "-"
    if t.tzinfo is not None:
        t = t.astimezone(timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


# --------------------------------------------------------------------------- numbers
def nbytes(n) -> str:
    """A size in bytes in binary units: 32 KiB, 23.5 GiB."""
    if not _real(n) or n <= 0:
        return "?"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{num(n / size)} {unit}"
    return f"{n:g} B"


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def num(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits, never as 4.37e-03: tiny or huge values as 4.4x10^-3 in print."""
    if not _real(x):
        return "-"
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "\u221e" if x > 0 else "-\u221e"
    if x == 0:
        return "0"
    a = abs(x)
    if a < 1e-3 or a >= 1e7:
        mant, exp = f"{x:.{digits - 1}e}".split("e")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        return f"{mant}\u00d710{str(int(exp)).translate(_SUPERSCRIPT)}"
    if a >= 10 ** digits:
        return f"{x:.0f}"
    text = f"{x:.{digits}g}"
    return f"{x:.0f}" if "e" in text else text


def seconds(s) -> str:
    """A time in seconds with the unit that reads best: 12.3 us, 4.37 ms, 2.5 s, 6 min 57 s, 1 h 02 min."""
    if not _real(s) or math.isnan(s):
        return "-"
    a = abs(s)
    if a >= 3600:
        return f"{int(a // 3600)} h {int(a % 3600 // 60):02d} min"
    if a >= 60:
        return f"{int(a // 60)} min {int(round(a % 60)):02d} s"
    if a >= 1 or a == 0:
        return f"{num(s)} s"
    if a >= 1e-3:
        return f"{num(s * 1e3)} ms"
    if a >= 1e-6:
        return f"{num(s * 1e6)} \u00b5s"
    return f"{num(s * 1e9)} ns"


_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "ns": 1e-9}


def with_unit(x, unit: str | None) -> str:
    """A measured value and its unit: 2.8x, 44.5%, 0.146x of 1x1 GFLOP/s, 4.37 ms, 1.93 points."""
    unit = (unit or "").strip()
    if not _real(x):
        return "-"
    head, _, rest = unit.partition(" ")
    if head in _TIME_UNITS:
        return (seconds(x * _TIME_UNITS[head]) + (f" {rest}" if rest else "")).strip()
    if head in ("x", "%"):
        return f"{num(x)}{head}" + (f" {rest}" if rest else "")
    return f"{num(x)} {unit}".strip()


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.])")


def tidy(text) -> str:
    """A target such as '>= 1.00e-05 max abs diff' as '\u2265 1\u00d710\u207b\u2075 max abs diff' (escaped)."""
    t = str(text or "")
    t = _NUMBER.sub(lambda m: num(float(m.group())) if re.search(r"[eE]", m.group()) else m.group(), t)
    t = re.sub(r"(\d) (x|%)(?=\W|$)", r"\1\2", t)
    t = t.replace(">=", "\u2265").replace("<=", "\u2264")
    return esc(t)


# --------------------------------------------------------------------------- tables
@dataclass
class Column:
    """One column: its header, each row's cell (escaped HTML) and the plain value compared across rows."""
    header: str
    cells: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    fold: bool = False          # when every row holds the same value, say it in the caption instead
    cls: str = ""               # class of the column's cells (effnb-text: a wrapping column with a min width)


def fit(columns: list[Column]) -> tuple[list[Column], list[str]]:
    """Drop the foldable columns that hold one value on every row; return what is kept and caption parts."""
    kept, caption = [], []
    for col in columns:
        distinct = set(col.values)
        if col.fold and len(distinct) <= 1 and col.values:
            value = next(iter(distinct))
            if value not in ("", "-"):
                caption.append(f"{esc(col.header)}: <b>{esc(value)}</b>")
            continue
        kept.append(col)
    return kept, caption


def table(cls: str, columns: list[Column], row_attrs: list[dict] | None = None, caption: str = "",
          fold: bool = True) -> str:
    """An HTML table in a horizontal scroll box; foldable single-value columns go to the caption."""
    n = max((len(c.cells) for c in columns), default=0)
    row_attrs = row_attrs or [{} for _ in range(n)]
    if fold:
        columns, parts = fit(columns)
        if parts:
            caption = (caption + " \u00b7 " if caption else "") + "; ".join(parts)
    head = "".join(f'<th class="{c.cls}">{esc(c.header)}</th>' if c.cls else f"<th>{esc(c.header)}</th>"
                   for c in columns)
    body = []
    for i in range(n):
        a = "".join(f' {k}="{esc(v)}"' for k, v in row_attrs[i].items())
        tds = "".join(f'<td{_cls(c.cls)} data-label="{esc(c.header)}">{c.cells[i]}</td>' for c in columns)
        body.append(f"<tr{a}>{tds}</tr>")
    # The caption stays outside the scroll box, so that it never scrolls out of sight with the table.
    cap = f'<p class="effnb-caption">{caption}</p>\n' if caption else ""
    return (f'<div class="effnb-table-block">\n{cap}<div class="effnb-scroll">\n<table class="table effnb-table {cls}">\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n</div>\n</div>\n")


def _cls(cls: str) -> str:
    return f' class="{cls}"' if cls else ""


def simple(cls: str, header: list[str], rows: list[tuple[dict, list[str]]], caption: str = "") -> str:
    """A table from rows of (tr attributes, escaped cells); no column is folded."""
    cols = [Column(h, [cells[i] for _, cells in rows]) for i, h in enumerate(header)]
    return table(cls, cols, [a for a, _ in rows], caption=caption, fold=False)
