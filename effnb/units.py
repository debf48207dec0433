"""Numbers as a page shows them: units in the cell (µs, ms, s, x, %), whole numbers whole, no
exponent notation, "-" where a value is missing or not finite. Every chapter's tables use these, so
one table reads like another; the full-precision frame is what ``ch.save_table`` writes as CSV.
"""
from __future__ import annotations

import math

DASH = "-"


def _num(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def duration(seconds) -> str:
    """A time with the unit that keeps it readable: '97.6 µs', '2.65 ms', '1.20 s' (three significant digits)."""
    s = _num(seconds)
    if s is None or s < 0:
        return DASH
    for size, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= size or unit == "µs":
            v = s / size
            return f"{v:.{max(0, 2 - int(math.floor(math.log10(v)))) if v > 0 else 2}f} {unit}"
    return DASH


def ms(value) -> str:
    """A time given in milliseconds, said as :func:`duration` says it."""
    v = _num(value)
    return DASH if v is None else duration(v / 1e3)


def sig(value, digits: int = 3) -> str:
    """A number to ``digits`` significant digits in plain notation: 0.499, 21.3, 1,024, 176."""
    v = _num(value)
    if v is None:
        return DASH
    if v == 0:
        return "0"
    return f"{v:,.{max(0, digits - 1 - int(math.floor(math.log10(abs(v)))))}f}"


def times(value, digits: int = 2) -> str:
    """A ratio: '1.68x'."""
    v = _num(value)
    return DASH if v is None else f"{v:.{digits}f}x"


def share(value, digits: int = 0) -> str:
    """A fraction as a percentage: 0.9 -> '90%'."""
    v = _num(value)
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def percent(value, digits: int = 0) -> str:
    """A number already in percent: 38.2 -> '38%'."""
    v = _num(value)
    return DASH if v is None else f"{v:.{digits}f}%"


def signed(value, digits: int = 2) -> str:
    """A difference with its sign: '+1.26', '-0.89'."""
    v = _num(value)
    return DASH if v is None else f"{v:+.{digits}f}"


def fixed(digits: int):
    """A formatter with ``digits`` decimals ('0.180' for 3)."""
    return lambda value: DASH if _num(value) is None else f"{_num(value):.{digits}f}"


def styled(df, formats: dict | None = None, index: bool = False):
    """``df`` as the page shows it: each column through its formatter in ``formats``, missing values
    as '-', the index hidden unless ``index``."""
    sty = df.style.format(formats or {}, na_rep=DASH)
    return sty if index else sty.hide(axis="index")
