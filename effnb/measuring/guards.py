"""Checks that make the chapter's verdicts able to fail, and the sentences that follow from them.

A verdict on a broken timing is worse than none: on a 2-core machine with one
more runnable process, torch's OpenMP threads wait in the scheduler for tens
of milliseconds per call, and every convolution then "takes" the same time
whatever its FLOPs. Each check returns ``(ok, reason)`` for ``Ledger.check(valid=...)``
or a phrase whose direction comes from the measurement, for the prose.
"""
from __future__ import annotations

from typing import Callable

from .. import bench, perf
from ..bench import Contention, combine  # noqa: F401  (core since chapter 03 uses them too)
from .workloads import place


def _span_ok(work) -> bool:
    w = [float(v) for v in work]
    return len(w) >= 2 and min(w) > 0 and max(w) / min(w) >= 2


def series_validity(seconds, work, name: str) -> tuple[bool, str]:
    """Time must grow with work over a series spanning >= 2x of it; a shorter series is not judged."""
    if not _span_ok(work):
        return True, ""
    ok, why = bench.grows_with_work(list(seconds), list(work))
    return ok, (f"{name}: {why}" if not ok else "")


def conv_validity(fractions, measured, factor: float = 5.0, busy: Contention | None = None) -> tuple[bool, str]:
    """The conv race measured the convolutions: its 1x1 times grow with their FLOPs, and its largest
    1x1 runs at the GFLOP/s :func:`.measure_workloads` found for the same conv earlier in the run.

    ``fractions`` is :func:`.depthwise_fraction`'s frame, ``measured`` the workloads' rows,
    ``busy`` the :class:`Contention` the race ran under.
    """
    need = {"conv1x1_s", "conv1x1_flops", "conv1x1_gflops"}
    if not need <= set(fractions.columns):
        raise ValueError(f"expected depthwise_fraction() of conv_pairs() with columns {sorted(need)}")
    checks = [series_validity(fractions["conv1x1_s"], fractions["conv1x1_flops"], "1x1 conv times")]
    size = fractions["conv1x1_flops"].astype(float).idxmax()
    ref = measured.loc[measured["name"] == f"conv1x1 {size}", "gflops"]
    if ref.empty:
        raise ValueError(f"no measure_workloads() row for conv1x1 {size}: measure the same shapes in both")
    checks.append(bench.agrees_with(float(fractions.loc[size, "conv1x1_gflops"]), float(ref.iloc[0]),
                                    f"1x1 conv {size} GFLOP/s", factor))
    if busy is not None:
        checks.append(busy.validity("the conv race"))
    return combine(*checks)


def caveat(valid: tuple[bool, str], what: str) -> str:
    """Nothing for a valid measurement; else the sentence that must precede its numbers in the prose."""
    ok, why = valid
    why = why.replace("invalid measurement: ", "")
    return "" if ok else (f"The {what} was an invalid measurement in this run ({why}), so the numbers that follow "
                          "describe a busy machine, not the kernels. ")


def finding(valid: tuple[bool, str], text: str, what: str) -> str:
    """``text`` (a finding, its direction taken from the data) when the measurement was valid; else why not."""
    return text if valid[0] else (f"The {what} gave no verdict in this run: its timings failed the chapter's checks "
                                  "(its section says which)")


def dw_phrase(fractions, valid: tuple[bool, str]) -> str:
    """The sentences the prose says about the depthwise race: its result, or why there is none."""
    ok, why = valid
    if not ok:
        return (f"The race between depthwise and 1x1 convolutions did not measure the convolutions in this run, so "
                f"it gives no verdict ({why}); rerun the chapter on a machine with no other busy process.")
    f = fractions["fraction"]
    return (f"Depthwise 3x3 convolutions run at a median {f.median():.2f} of the GFLOP/s of the 1x1 convolution on "
            f"the same activations (between {f.min():.2f} and {f.max():.2f} over the shapes). A network that swaps "
            "dense layers for depthwise ones saves FLOPs at that exchange rate: the time saved is the FLOPs saved "
            "times this fraction, and fewer FLOPs do not buy proportionally less time.")


def generation_validity(gen, max_spread: float = 0.5, busy: Contention | None = None) -> tuple[bool, str]:
    """Generation timings measured generation: time grows with the tokens generated, and the rounds of
    the median pair agree (interquartile range <= ``max_spread`` of the median). When other processes
    compete that hard, even the fastest round is no estimate of the idealized, contention-free runtime."""
    checks = [series_validity(gen["best_s"], gen["outputs"], "generation times vs output tokens")]
    spread = float(gen["spread"].median())
    if not spread <= max_spread:
        checks.append((False, f"invalid measurement: the rounds of the median length pair spread over {spread:.0%} "
                              f"of their median (at most {max_spread:.0%} expected): the cores were shared"))
    if busy is not None:
        checks.append(busy.validity("generation"))
    return combine(*checks)


def gemm_trend(measured, busy: Contention | None = None) -> dict:
    """How the GEMMs' % of the compute roof moves with n, as a phrase for the prose (and whether to trust it)."""
    g = measured[measured["family"] == "gemm"].sort_values("flops")
    if g.empty:
        return {"ok": False, "phrase": "were not measured in this run", "first_pct": None, "last_pct": None}
    first, last = g.iloc[0], g.iloc[-1]
    out = {"first_pct": float(first["pct_of_limit"]), "last_pct": float(last["pct_of_limit"])}
    ok, why = combine(series_validity(g["median_s"], g["flops"], "GEMM times"),
                      busy.validity("the workloads") if busy is not None else (True, ""))
    if len(g) == 1:
        phrase = f"reached {out['first_pct']:.0f}% of the compute roof at n = {first['size']} (one size only)"
    elif not ok:
        phrase = f"cannot be read off this run: {why}"
    elif out["last_pct"] >= out["first_pct"]:
        phrase = (f"come closer to the compute roof as they grow, from {out['first_pct']:.0f}% at n = "
                  f"{first['size']} to {out['last_pct']:.0f}% at n = {last['size']}: more FLOPs per byte, and "
                  "more work per call to hide its fixed costs")
    else:
        phrase = (f"fall away from the compute roof as they grow, from {out['first_pct']:.0f}% at n = "
                  f"{first['size']} to {out['last_pct']:.0f}% at n = {last['size']}, although a larger GEMM "
                  "has more FLOPs per byte: something outside the kernel slowed the longer calls (on a "
                  "shared machine, most often another runnable process), so do not read this as a property "
                  "of GEMM")
    return {**out, "ok": ok, "phrase": phrase}


def over_roof(measured, limit: float = 100.0):
    """The rows that claim more than ``limit`` % of their roof: each says the roof is wrong."""
    return measured[measured["pct_of_limit"] > limit]


def settle_roofs(measured, limits: dict, reprobe: Callable[[], dict]):
    """:func:`effnb.perf.settle_rates` for roofline rows (flops, bytes, median_s): each row's GB/s is
    held to the read roof and its GFLOP/s to the compute roof; returns the rows placed again under
    the settled limits, then ``(limits, phrase, info)``."""
    rates = [(key, float(r[count]) / float(r["median_s"]) / 1e9, str(r["name"]))
             for _, r in measured.iterrows() for key, count in (("read_gbps", "bytes"), ("peak_gflops", "flops"))]
    limits, phrase, info = perf.settle_rates(rates, limits, reprobe)
    return place(measured, limits), limits, phrase, info


__all__ = ["Contention", "combine", "caveat", "finding", "series_validity", "conv_validity", "dw_phrase",
           "generation_validity", "gemm_trend", "over_roof", "settle_roofs"]
