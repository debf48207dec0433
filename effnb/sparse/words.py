"""Words whose direction comes from a measurement.

A sentence that says "faster" must be generated from the ratio that says so:
the chapter glues these phrases into its prose, so a run where our kernel loses
prints "slower than", with the figure that made it so.
"""
from __future__ import annotations

import math


def _check(ratio: float) -> float:
    r = float(ratio)
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"a speed ratio must be a finite number > 0, got {ratio!r}")
    return r


def speed(ratio: float, digits: int = 2) -> str:
    """'2.81x faster than', '1.39x slower than' or 'as fast as' for a speed-up ``ratio``
    (the other's time over ours): a ratio below 1 is said as its inverse, slower."""
    r = _check(ratio)
    if round(r, digits) == 1 or round(1 / r, digits) == 1:
        return "as fast as"
    return f"{r:.{digits}f}x faster than" if r > 1 else f"{1 / r:.{digits}f}x slower than"


def speed_range(lo: float, hi: float, digits: int = 2) -> str:
    """The same for a range of speed-ups: '1.59x to 3.94x faster than', '1.2x slower to 3.9x faster than'."""
    lo, hi = sorted((_check(lo), _check(hi)))
    if lo >= 1:
        return f"{lo:.{digits}f}x to {hi:.{digits}f}x faster than"
    if hi <= 1:
        return f"{1 / hi:.{digits}f}x to {1 / lo:.{digits}f}x slower than"
    return f"between {1 / lo:.{digits}f}x slower and {hi:.{digits}f}x faster than"


def change(points: float, digits: int = 2, unit: str = "points") -> str:
    """'a gain of 1.93 points' / 'a drop of 0.22 points' / 'no change' for a difference (new - old)."""
    p = float(points)
    if not math.isfinite(p):
        raise ValueError(f"a change must be finite, got {points!r}")
    if round(p, digits) == 0:
        return "no change"
    return f"a {'gain' if p > 0 else 'drop'} of {abs(p):.{digits}f} {unit}"


def break_even(value: float, measured) -> str:
    """Where a speed-up crossed 1 (``benchmarks.break_even``), said with what the measured range allows:
    nan means never reached, the lowest measured sparsity is an upper bound."""
    lo, hi = min(measured), max(measured)
    if not math.isfinite(value):
        return f"nowhere up to {hi:.0%}, the highest measured sparsity"
    if value <= lo:
        return f"at or below {lo:.0%}, the lowest measured sparsity"
    return f"at about {value:.0%} sparsity"


def higher(a: float, b: float, what: str = "sparsity") -> str:
    """'a higher sparsity than' / 'a lower sparsity than' / 'the same sparsity as' for ``a`` against ``b``;
    nan (a break-even never reached) counts as above every measured value."""
    a, b = (math.inf if not math.isfinite(v) else round(float(v), 2) for v in (a, b))
    if a == b:
        return f"the same {what} as"
    return f"a {'higher' if a > b else 'lower'} {what} than"
