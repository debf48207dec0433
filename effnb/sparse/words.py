"""Words and numbers whose direction or unit comes from a measurement.

A sentence that says "faster" must be generated from the ratio that says so:
the chapter glues these phrases into its prose, so a run where our kernel loses
prints "slower than", with the figure that made it so. The chapter's tables say
their numbers here too: times with their unit (µs, ms), ratios as 1.68x,
fractions as percentages, whole numbers whole, "-" where nothing applies.
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


def bias(same_vs_torch: float) -> str:
    """How a speed-up over our same-code dense kernel compares with one over torch's fastest dense form,
    given how fast that kernel is against torch (``same_vs_torch`` > 1: ours is faster): 'overstates',
    'understates' or 'matches' what a user gains."""
    r = _check(same_vs_torch)
    if round(r, 2) == 1:
        return "matches"
    return "overstates" if r < 1 else "understates"


def scale(shapes, sparsities, batch_sizes, cnn_seeds: int, ift_seeds: int, rs_seeds: int) -> str:
    """What this run covers, from its parameters: 'one weight shape (4096x4096), sparsities 50% and 90% at
    M = 1 and 32; 2 seeds per CNN configuration, 2 for Sparse-IFT and 3 per node sparsity for Random Search'."""
    shapes = [tuple(s) for s in shapes]
    nums = {1: "one", 2: "two", 3: "three", 4: "four"}
    what = f"{nums.get(len(shapes), len(shapes))} weight shape{'s' if len(shapes) > 1 else ''} " \
           f"({', '.join(f'{n}x{k}' for n, k in shapes)})"
    sp = sorted(float(s) for s in sparsities)
    sps = " and ".join(f"{s:.0%}" for s in sp) if len(sp) <= 2 else f"{len(sp)} sparsities from {sp[0]:.0%} to {sp[-1]:.0%}"
    sps = ("sparsities " if len(sp) <= 2 else "") + sps
    ms = sorted(int(m) for m in batch_sizes)
    mtxt = " and ".join(str(m) for m in ms) if len(ms) <= 2 else ", ".join(map(str, ms[:-1])) + f" and {ms[-1]}"
    return (f"{what}, {sps} at M = {mtxt}; {cnn_seeds} seed{'s' if cnn_seeds != 1 else ''} per CNN configuration, "
            f"{ift_seeds} for Sparse-IFT and {rs_seeds} per node sparsity for Random Search")


# ---------------------------------------------------------------- numbers with their units, for the tables

# the page's number formats live in core (effnb.units); re-exported for the chapter's calls
from ..units import DASH, duration, fixed, ms, percent, share, signed, styled, times  # noqa: E402,F401


def perf_table(table, **extra):
    """An :meth:`effnb.perf.Result.table` as the page shows it: times with units, ratios as 1.68x, % of roof."""
    fmt = {"ms": ms, "% of roof": percent} | {c: times for c in table.columns if str(c).startswith("vs ")}
    return styled(table.rename(columns={"ms": "time"}), {("time" if k == "ms" else k): v for k, v in fmt.items()}
                  | extra)


def vs_peer_pivot(table, x: str, value: str = "vs fastest peer"):
    """One row per ``x``, a column per kernel of ours with its speed-up ``value``, and the fastest peer named:
    the small comparison a reader wants from a race's long table."""
    p = table.pivot_table(index=x, columns="ours", values=value, sort=False)
    p.columns.name = None
    p["fastest peer"] = table.groupby(x, sort=False)["fastest peer"].first()
    return p


def speedup_pivot(cases, provider: str):
    """``by_case`` rows of one provider as sparsity x (shape, M): its speed-up over the baseline."""
    g = cases[cases["provider"] == provider].copy()
    g["case"] = [f"{n}x{k}, M={m}" for n, k, m in zip(g["n"], g["k"], g["m"])]
    p = g.pivot_table(index="sparsity", columns="case", values="speedup", sort=False)
    p.columns.name = None
    p.index = [share(s) for s in p.index]
    p.index.name = "sparsity"
    return p


def paired_summary(test: dict, one_sided_p: float, power: float, margin: float, confidence: float,
                   unit: str = "points"):
    """A paired test (``experiments.paired_test``) as a two-column table of statistic and value, with units."""
    import pandas as pd
    rows = [("seeds (pairs)", f"{int(test['n'])}"),
            ("mean difference", f"{signed(test['mean_diff'])} {unit}"),
            (f"{confidence:.0%} interval", f"{signed(test['ci_lo'])} to {signed(test['ci_hi'])} {unit}"),
            ("paired t-test p (two-sided)", fixed(3)(test["t_p"])),
            ("Wilcoxon p (two-sided)", fixed(3)(test["wilcoxon_p"])),
            ("one-sided p (a gain)", fixed(3)(one_sided_p)),
            (f"power at a true gain of {margin:g} point", share(power))]
    return pd.DataFrame(rows, columns=["statistic", "value"])
