"""The chapter's tables as a reader sees them: units in the headers or the cells (µs, ms, GB/s, x, %),
whole numbers as whole numbers, no exponent notation, "-" where a value does not apply.

Each function takes a frame the chapter computed and returns a pandas ``Styler`` for the page; the
frame itself, every column at full precision, is what ``ch.save_table`` writes as CSV beside the run.
"""
from __future__ import annotations


from ..units import DASH, duration, sig, times  # noqa: F401  (the page's number formats, from core)
from ..units import percent as pct  # noqa: F401
from ..units import styled as _style  # noqa: F401


def probes(frame):
    """The STREAM and peak probes: best rate, interquartile band, share of the best implementation."""
    df = frame.copy()
    bw = df["gbps"].notna() if "gbps" in df else None
    out = df[["kernel", "provider"]].copy()
    out["GB/s"] = df.get("gbps")
    out["GB/s, interquartile"] = [f"{sig(lo)} to {sig(hi)}" if b else DASH
                                  for lo, hi, b in zip(df.get("gbps_lo"), df.get("gbps_hi"), bw)]
    out["GFLOP/s"] = df.get("gflops")
    out["% of best"] = df.get("% of best peer")
    return _style(out, {"GB/s": sig, "GFLOP/s": sig, "% of best": pct})


def workloads(measured):
    """Every measured workload: intensity, time, rates, which roof binds and how close it came."""
    out = measured[["name", "intensity", "median_s", "gflops", "gbps", "binding", "pct_of_limit"]].rename(columns={
        "name": "workload", "intensity": "flop/byte", "median_s": "time", "gflops": "GFLOP/s", "gbps": "GB/s",
        "binding": "bound by", "pct_of_limit": "% of that roof"})
    return _style(out, {"flop/byte": sig, "time": duration, "GFLOP/s": sig, "GB/s": sig, "% of that roof": pct})


def depthwise(fractions):
    """Per activation shape: the two layers' GFLOP/s and times, and the ratio the claim is about."""
    df = fractions.reset_index()
    out = df[["size", "conv1x1_gflops", "dwconv3x3_gflops", "fraction"]].rename(columns={
        "size": "activations", "conv1x1_gflops": "1x1 GFLOP/s", "dwconv3x3_gflops": "depthwise GFLOP/s",
        "fraction": "depthwise / 1x1"})
    for col, name in (("conv1x1_s", "1x1 time"), ("dwconv3x3_s", "depthwise time")):
        if col in df:
            out[name] = df[col]
    return _style(out, {"1x1 GFLOP/s": sig, "depthwise GFLOP/s": sig, "depthwise / 1x1": lambda v: sig(v, 2),
                        "1x1 time": duration, "depthwise time": duration})


def fusion(table):
    """Per block: fused and unfused time, fusion's gain, fused against torch's fastest eager block."""
    out = table.rename(columns={"fused_ms": "fused", "unfused_ms": "unfused", "fusion_gain": "fusion's gain",
                                "fastest_torch": "torch's fastest layout", "vs_torch": "fused vs torch",
                                "expanded_mib": "expanded activation (MiB)"})
    ms = lambda v: duration(v / 1e3)   # noqa: E731
    return _style(out, {"fused": ms, "unfused": ms, "fusion's gain": times, "fused vs torch": times,
                        "expanded activation (MiB)": sig})


def race(table):
    """The block race's full table (``perf.Result.table``): every one of ours at every block."""
    ratio = [c for c in table.columns if c.startswith("vs ")]
    out = table.drop(columns=["backend"], errors="ignore").rename(columns={"ms": "time"})
    fmt = {"time": lambda v: duration(v / 1e3), "% of roof": pct} | {c: times for c in ratio}
    return _style(out, fmt)


def search(summary):
    """Per search method at the full budget: median and worst gap to the exhaustive best, share within target."""
    out = summary.rename(columns={"median_gap_pct": "median gap", "worst_gap_pct": "worst gap",
                                  "within_target": "searches within target"})
    out.index.name = "method"
    return _style(out, {"median gap": lambda v: pct(v, 1), "worst gap": lambda v: pct(v, 1),
                        "searches within target": lambda v: pct(100 * v)}, index=True)


def configurations(table, n: int = 8):
    """The ``n`` fastest configurations of the exhaustive measurement (best round, and how well it repeats)."""
    top = table.sort_values("best_s").head(n)
    out = top[["tile_rows", "channel_block", "threads", "best_s", "repeat_pct"]].rename(columns={
        "tile_rows": "tile rows", "channel_block": "channel block", "best_s": "fastest round",
        "repeat_pct": "second round slower by"})
    out["channel block"] = out["channel block"].map(lambda c: "all" if c == 0 else str(int(c)))
    return _style(out, {"fastest round": duration, "second round slower by": lambda v: pct(v, 1)})


def generation_errors(gen):
    """The runtime model's error (%) at every (prompt, output tokens) pair: held-out pairs, then the fit's own."""
    import pandas as pd
    parts = []
    for split in ("held-out", "train"):
        g = gen[gen["split"] == split]
        if len(g):
            p = g.pivot_table(index="prompt", columns="outputs", values="error_pct", sort=True)
            p.index = pd.MultiIndex.from_product([[split], p.index], names=["lengths", "prompt tokens"])
            parts.append(p)
    out = pd.concat(parts)
    out = out[sorted(out.columns)]
    out.columns = [f"{c} out" for c in out.columns]
    return out.style.format(lambda v: f"{v:+.1f}%", na_rep=DASH)


def generation(gen):
    """Every timed (prompt, outputs) pair: fastest and median round, spread, prediction and its error."""
    out = gen[["split", "prompt", "outputs", "best_s", "median_s", "spread", "predicted_s", "error_pct"]].rename(
        columns={"best_s": "fastest round", "median_s": "median round", "predicted_s": "predicted",
                 "error_pct": "error"})
    return _style(out, {"fastest round": duration, "median round": duration, "predicted": duration,
                        "spread": lambda v: pct(100 * v), "error": lambda v: f"{v:+.1f}%"})


__all__ = ["duration", "sig", "times", "pct", "probes", "workloads", "depthwise", "fusion", "race", "search",
           "configurations", "generation_errors", "generation"]
