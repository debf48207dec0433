"""Block fusion, raced: our fused block, the same code unfused, and torch's eager block.

Lavin (2024) fuses all layers of a residual block into one kernel "thereby
creating temporal locality, avoiding communication, and reducing workspace
size". The fair test of that mechanism keeps everything else equal: the same
C++ building blocks run once fused (the expanded activation stays in cache) and
once as three passes through memory. torch's eager block (three F.conv2d, in
NCHW and in channels_last) is the peer a reader would otherwise use.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import ext, perf, provenance
from . import ops
from .block import IRBlock, block_counts, channels_last, eager, intermediate_bytes, make_block, parse
from .counts import positive_ints
from .guards import combine, series_validity
from .workloads import torch_backend


def default_tile_rows(batch: int, hw: int, threads: int) -> int:
    """The fewest tiles per image that still give every thread two tasks: whole images at large batch."""
    positive_ints(batch=batch, hw=hw, threads=threads)
    per_image = math.ceil(2 * threads / batch)
    return max(1, math.ceil(hw / per_image))


class _Inputs:
    """One block's weights and activations per spec, in every layout the contenders read (built once)."""

    def __init__(self, batch: int, expansion: int, seed: int):
        self.batch, self.expansion, self.seed = batch, expansion, seed
        self._cache: dict = {}

    def __call__(self, spec: str) -> dict:
        if spec not in self._cache:
            c, hw = parse(spec)
            blk = make_block(c, self.expansion, seed=self.seed)
            g = torch.Generator().manual_seed(self.seed + 1)
            x = torch.randn(self.batch, hw, hw, c, generator=g)      # NHWC
            nchw = x.permute(0, 3, 1, 2).contiguous()
            self._cache[spec] = {"block": blk, "hw": hw, "x": x, "mats": blk.mats(), "nchw": nchw,
                                 "cl": nchw.to(memory_format=torch.channels_last), "cl_w": channels_last(blk)}
        return self._cache[spec]


def block_benchmark(blocks: Sequence[str], batch: int, *, threads: int, expansion: int = 6,
                    tile_rows: int | None = None, channel_block: int = 0, rounds: int = 3, repeats: int = 5,
                    seed: int = 0) -> perf.Benchmark:
    """Fused vs unfused (the baseline: same code) vs torch eager NCHW and channels_last, per block spec.

    ``tile_rows=None`` takes :func:`default_tile_rows` for each block. Both of
    our contenders are marked ours, so the table gives each one's ratio to the
    fastest torch block; GFLOP/s counts every contender's work the same way.
    """
    if isinstance(blocks, (str, bytes)) or not len(blocks):
        raise ValueError(f"blocks must be a non-empty list like ['24@56'], got {blocks!r}")
    for s in blocks:
        parse(s)
    positive_ints(batch=batch, threads=threads, expansion=expansion, rounds=rounds)
    inputs = _Inputs(batch, expansion, seed)
    cpp = ops.backend()

    def tiles(spec):
        return tile_rows or default_tile_rows(batch, parse(spec)[1], threads)

    def make_fused(spec):
        d = inputs(spec)
        return lambda: ops.fused(d["x"], d["mats"], d["block"].residual, tiles(spec), channel_block)

    def make_unfused(spec):
        d = inputs(spec)
        return lambda: ops.unfused(d["x"], d["mats"], d["block"].residual)

    def make_eager(layout):
        def make(spec):
            d = inputs(spec)
            return (lambda: eager(d["nchw"], d["block"])) if layout == "nchw" else \
                (lambda: eager(d["cl"], d["block"], d["cl_w"]))
        return make

    def cost(i):
        return lambda spec: block_counts(inputs(spec)["block"], batch, inputs(spec)["hw"])[i]

    return perf.Benchmark(
        name=f"inverted-residual block, batch {batch}, expansion {expansion}", x="block", x_values=list(blocks),
        providers=[perf.Provider("fused", "fused (ours)", make_fused, ours=True, backend=cpp),
                   perf.Provider("unfused", "same code, unfused (ours)", make_unfused, ours=True, backend=cpp),
                   perf.Provider("torch", "torch eager, NCHW", make_eager("nchw"), backend=torch_backend()),
                   perf.Provider("torch_cl", "torch eager, channels_last", make_eager("cl"),
                                 backend=torch_backend())],
        baseline="unfused", unit="GFLOP/s", flops=cost(0), bytes_moved=cost(1), rounds=rounds, repeats=repeats,
        warmup=2)


def fusion_table(result, batch: int, expansion: int = 6):
    """Per block: fused and unfused ms, fusion's gain, fused vs the fastest torch block, and the size of
    the expanded activation next to this machine's L2 and L3 (what fusion keeps out of memory)."""
    import pandas as pd
    t = result.df.pivot_table(index="x", columns="provider", values="median_s", sort=False)
    rows = []
    for spec in t.index:
        c, hw = parse(spec)
        blk_bytes = intermediate_bytes(_shape_only(c, expansion), batch, hw)
        peer = "torch" if t.loc[spec, "torch"] <= t.loc[spec, "torch_cl"] else "torch_cl"
        rows.append({"block": spec, "fused_ms": 1e3 * t.loc[spec, "fused"], "unfused_ms": 1e3 * t.loc[spec, "unfused"],
                     "fusion_gain": t.loc[spec, "unfused"] / t.loc[spec, "fused"],
                     "fastest_torch": "NCHW" if peer == "torch" else "channels_last",
                     "vs_torch": t.loc[spec, peer] / t.loc[spec, "fused"],
                     "expanded_mib": blk_bytes / 2 ** 20})
    return pd.DataFrame(rows)


def _shape_only(c: int, expansion: int) -> IRBlock:
    """A block with the right shapes (weights unused): enough for byte counts."""
    e = c * expansion
    z = torch.empty(0)
    return IRBlock(torch.empty(e, c, 1, 1), z, z, z, torch.empty(c, e, 1, 1), z)


def stack_gain(table) -> float:
    """The gain of running every block in the table once: total unfused time over total fused time."""
    return float(table["unfused_ms"].sum() / table["fused_ms"].sum())


def fusion_validity(result, busy=None) -> tuple[bool, str]:
    """The race measured the kernels: the C++ family ran, both of our series grow with the blocks' FLOPs, and
    no other process took the cores meanwhile (``busy``: the :class:`.guards.Contention` it ran under)."""
    if ops.backend() == ext.FALLBACK:
        return False, ("invalid measurement: kernel family fused is not built (torch-fallback), so both of our "
                       "contenders ran the torch reference and the race says nothing about fusion")
    bad = []
    for key in ("fused", "unfused"):
        rows = result.df[result.df["provider"] == key]
        ok, why = series_validity(rows["median_s"], [result.spec.flops(s) for s in rows["size"]], f"{key} block times")
        if not ok:
            bad.append(why)
    return combine((not bad, "; ".join(bad)), busy.validity("the block race") if busy is not None else (True, ""))


def compare_phrase(ratio: float, peer: str) -> str:
    """``1.8x faster than <peer>`` or ``slower than <peer> (0.7x its speed)``: the direction follows the number."""
    return f"{ratio:.2f}x faster than {peer}" if ratio >= 1 else f"slower than {peer} ({ratio:.2f}x its speed)"


def fusion_finding(table) -> str:
    """The race in one sentence: fused vs the same code unfused, and where the gain was largest."""
    return (f"Fusing the block makes it {compare_phrase(stack_gain(table), 'the same code unfused')}; the gain "
            f"{fusion_trend(table)}")


def fusion_trend(table) -> str:
    """Where fusion paid most and least, and whether that follows the size of the expanded activation."""
    hi, lo = table.loc[table["fusion_gain"].idxmax()], table.loc[table["fusion_gain"].idxmin()]
    ends = (f"largest for {hi['block']} ({hi['fusion_gain']:.2f}x, {hi['expanded_mib']:.1f} MiB expanded) and "
            f"smallest for {lo['block']} ({lo['fusion_gain']:.2f}x, {lo['expanded_mib']:.1f} MiB)")
    if len(table) < 2:
        return f"measured on one block only: {hi['fusion_gain']:.2f}x"
    rho = table["fusion_gain"].rank().corr(table["expanded_mib"].rank())
    if rho > 0:
        return f"grows with the size of the expanded activation: it is {ends}"
    return f"does not grow with the size of the expanded activation here: it is {ends}"


def race_points(result):
    """Every contender at every block as roofline rows (name, flops, bytes, median_s, gflops, gbps)."""
    df = result.df
    out = df[["median_s"]].copy()
    out["name"] = df["label"] + " " + df["x"]
    out["flops"] = [float(result.spec.flops(s)) for s in df["size"]]
    out["bytes"] = [float(result.spec.bytes_moved(s)) for s in df["size"]]
    out["gflops"], out["gbps"] = out["flops"] / out["median_s"] / 1e9, out["bytes"] / out["median_s"] / 1e9
    return out.reset_index(drop=True)


def cache_sizes() -> dict:
    """This machine's per-core L2 and shared L3 in MiB (what the expanded activation is compared with)."""
    c = provenance.caches()
    return {k: c[k] / 2 ** 20 for k in ("L2", "L3") if c.get(k)}


__all__ = ["default_tile_rows", "block_benchmark", "fusion_table", "stack_gain", "fusion_validity",
           "compare_phrase", "fusion_finding", "fusion_trend", "race_points", "cache_sizes"]
