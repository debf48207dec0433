"""How much cache this machine really holds for us: read bandwidth against array size.

A cold benchmark must stream its inputs from memory, so its working set has to
be well above what the caches keep. The OS reports the last-level cache, but a
virtual machine on a large server may report the whole socket's L3 (480 MiB on
one of ours) while its two cores use a small part of it: working sets sized from
that figure move gigabytes per call for nothing and make the cold chapters
several times slower. Here one thread reads arrays of growing size; the cache
edge is the largest size still read clearly faster than memory (by
``CACHED_MARGIN``). Measured once per machine and cached like the roofline.
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import ext, files, provenance

MIB = 1 << 20
FLOOR_MIB = 32           # never size cold sets from less than this (the 32 MiB L3 the book was planned on)
TOP_MIB = 1024           # the largest array read: memory's bandwidth comes from the two largest
CACHED_MARGIN = 1.15     # a size is "in cache" when read this much faster than from memory
BATCH_BYTES = 64 * MIB   # each timed batch reads at least this much (small arrays: several calls)
SAMPLES = 5              # batches per size and pass; the fastest counts
PASSES = 2               # passes over every size; the fastest of each size counts
VERSION = 1
_taken: dict[str, dict] = {}  # this process's record per machine: a new cache folder does not measure again


def sizes_mib(reported: int | None = None) -> list[int]:
    """Array sizes probed: 4 MiB up to 4x the reported cache (at least 256 MiB, at most TOP_MIB), in steps of ~1.5x."""
    reported = provenance.llc_bytes() if reported is None else reported
    top = min(TOP_MIB, max(256, math.ceil(4 * reported / MIB)))
    out, s = [], 4
    while s < top:
        out += [s, s * 3 // 2]
        s *= 2
    return [v for v in out if v < top] + [top]


def edge_bytes(curve: list[tuple[int, float]], margin: float = CACHED_MARGIN) -> int | None:
    """The largest size (bytes) read ``margin`` x faster than memory with no such size above it; None if none.

    ``curve`` is [(bytes, GB/s)] in increasing size; memory's bandwidth is the
    mean of the two largest sizes. Small arrays can read slower than the cache
    allows (call overhead), so the edge is searched from the top down.
    """
    if len(curve) < 3:
        raise ValueError("edge_bytes needs a curve of at least 3 sizes")
    sizes = [s for s, _ in curve]
    if sizes != sorted(sizes):
        raise ValueError("edge_bytes needs the curve in increasing size")
    memory = (curve[-1][1] + curve[-2][1]) / 2
    for size, gbps in reversed(curve[:-2]):
        if gbps >= margin * memory:
            return size
    return None


def measure(progress: bool = False) -> dict:
    """One thread reads arrays of :func:`sizes_mib` sizes (the Numba read probe); uncached."""
    import numba

    from . import probes

    reported = provenance.llc_bytes()
    best: dict[int, float] = {}
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for _ in range(PASSES):
            for mib in sizes_mib(reported):
                a = np.full(mib * MIB // 4, 1.0, dtype=np.float32)
                probes.read(a)  # first touch (and the probe's compile, once)
                calls = max(1, BATCH_BYTES // a.nbytes)
                for _ in range(SAMPLES):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        probes.read(a)
                    gbps = calls * a.nbytes / (time.perf_counter() - t0) / 1e9
                    best[mib] = max(best.get(mib, 0.0), gbps)
                if progress:
                    print(f"{mib} MiB: {best[mib]:.1f} GB/s", flush=True)
                del a
    finally:
        numba.set_num_threads(saved)
    curve = [(mib * MIB, round(g, 2)) for mib, g in sorted(best.items())]
    edge = edge_bytes(curve)
    return {"hardware_id": provenance.hardware_id(), "reported_bytes": reported, "edge_bytes": edge,
            "curve": curve, "version": VERSION,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def usable(edge: int | None, reported: int) -> int:
    """The cache size cold benchmarks plan for: the measured edge, at least FLOOR_MIB, never above the report."""
    floor = min(reported, FLOOR_MIB * MIB)
    return min(reported, max(floor, edge or 0))


def cache_path():
    return ext.cache_dir() / "roofline" / f"{provenance.hardware_id()}-cache-v{VERSION}.json"


def record(refresh: bool = False) -> dict:
    """The cached measurement of this machine (taken now if missing or ``refresh``), with ``usable_bytes``."""
    hid, path = provenance.hardware_id(), cache_path()
    rec = None if refresh else _taken.get(hid) or files.read_json(path)
    fresh = not rec or rec.get("hardware_id") != hid or rec.get("version") != VERSION
    if fresh:
        rec = measure()
    if fresh or not path.exists():
        files.write_json(path, rec)
    _taken[hid] = rec
    rec = dict(rec)
    rec["usable_bytes"] = usable(rec["edge_bytes"], provenance.llc_bytes())
    return rec


def llc_bytes() -> int:
    """The last-level cache a cold working set must exceed: the measured edge, bounded by the OS's report."""
    return record()["usable_bytes"]


def phrase(rec: dict) -> str:
    """One clause on where the planned size came from, its direction read from the record."""
    mib = lambda b: f"{b / MIB:.0f} MiB"
    edge, usable, reported = rec["edge_bytes"], rec["usable_bytes"], rec["reported_bytes"]
    if edge is None:
        return f"no array was read clearly faster than the largest, so the book plans for its floor, {mib(usable)}"
    if edge >= reported:
        return f"reading stays fast up to {mib(edge)}, so the book plans for the reported {mib(reported)}"
    if usable > edge:
        return f"reading slows to memory's speed above {mib(edge)}, so the book plans for its floor, {mib(usable)}"
    return (f"reading slows to memory's speed above {mib(edge)}, below the reported {mib(reported)}, "
            f"so the book plans for {mib(usable)}")


def plot(rec: dict, cold_factor: int = 4, ax=None):
    """Read bandwidth against array size, with the edge, the reported cache and the cold working set marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8))
    mib = [s / MIB for s, _ in rec["curve"]]
    ax.plot(mib, [g for _, g in rec["curve"]], marker="o", color="tab:blue", label="read, one thread")
    marks = [(rec["reported_bytes"], "reported last-level cache", "grey", ":"),
             (rec["usable_bytes"], "cache the book plans for", "tab:green", "--"),
             (cold_factor * rec["usable_bytes"], f"cold working set ({cold_factor}x)", "tab:red", "-.")]
    for size, label, colour, style in marks:
        if size / MIB <= 2 * max(mib):
            ax.axvline(size / MIB, color=colour, linestyle=style, linewidth=1, label=f"{label}: {size / MIB:.0f} MiB")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("array size (MiB)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"Read bandwidth against array size [{rec['hardware_id']}]")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return ax
