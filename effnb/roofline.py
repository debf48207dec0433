"""This machine's limits, measured: memory bandwidth (STREAM probes) and fp32 peak (an FMA probe).

A kernel's speed only means something next to what the machine could do. The
roofline model (Williams, Waterman and Patterson 2009) says a kernel doing
``I`` flops per byte moved can reach at most ``min(peak, I * bandwidth)``;
:func:`machine` measures both numbers once per machine and thread count and
caches them, :func:`bound` says which one binds a measured kernel and how
close it came, :func:`plot` draws the picture.

Bandwidth is measured, never taken from a spec sheet: several implementations
of the same STREAM kernels (Numba, our C++ ops, numpy, torch) run in one
sitting on arrays far larger than the last-level cache, and the best of them is
the machine's limit. If our own kernels came far below numpy's memcpy, the
number would describe our code, not the machine; the chapter checks that.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from . import bench, cachesize, ext, files, plots, probes, provenance
from . import threads as _threads

MIB = 1 << 20
DEFAULT_MIB = 256          # per array: 8x a 32 MiB L3 (more where the last-level cache is larger)
DEFAULT_GEMM_N = 2048      # 17 GFLOP per call: long enough, cache-resident enough to hit the FMA peak
_SCALE = 3.0              # the triad's scalar


def min_mib() -> int:
    """Smallest array size (MiB) for the probes: one array alone is >= 4x the last-level cache."""
    return math.ceil(bench.COLD_FACTOR * cachesize.llc_bytes() / MIB)


def default_mib() -> int:
    """The probes' array size unless told: 256 MiB, or 4x the cache measured by
    :func:`effnb.cachesize.llc_bytes` where that is more."""
    return max(DEFAULT_MIB, min_mib())


def _check_threads(threads):
    return _threads.validate_threads(_threads.available_cores() if threads is None else threads)


class _threads_set:
    """Use ``n`` threads everywhere inside the block (torch, Numba, our kernels), then put them back."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import numba
        import torch
        self.saved = (torch.get_num_threads(), numba.get_num_threads())
        _threads.set_threads(self.n)
        return self

    def __exit__(self, *exc):
        import numba
        _threads.set_threads(self.saved[0])
        numba.set_num_threads(self.saved[1])
        return False


# ---------------------------------------------------------------- probes

def _providers(a: np.ndarray, b: np.ndarray, c: np.ndarray, use_cpp: bool) -> dict:
    """kernel -> {provider name: factory}; all share the same three arrays (no extra memory)."""
    import torch
    ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
    s = _SCALE
    groups = {
        "read": {"numba read": lambda n: (lambda: probes.read(a)),
                 "numpy sum": lambda n: (lambda: a.sum()),
                 "torch sum": lambda n: (lambda: ta.sum())},
        "copy": {"numba copy": lambda n: (lambda: probes.copy(a, b)),
                 "numpy copy": lambda n: (lambda: np.copyto(b, a)),
                 "torch copy": lambda n: (lambda: tb.copy_(ta))},
        "triad": {"numba triad": lambda n: (lambda: probes.triad(a, b, c, s)),
                  "torch triad": lambda n: (lambda: torch.add(tb, tc, alpha=s, out=ta))},
    }
    if use_cpp:
        ops = torch.ops.effnb
        groups["read"]["cpp read"] = lambda n: (lambda: ops.stream_read(ta))
        groups["copy"]["cpp copy"] = lambda n: (lambda: ops.stream_copy(ta, tb))
        groups["triad"]["cpp triad"] = lambda n: (lambda: ops.stream_triad(ta, tb, tc, s))
    return groups


def probe_bandwidth(threads: int | None = None, mib: int | None = None, repeats: int = 15,
                    progress: bool = True, rounds: int = 3):
    """Measure read, copy and triad bandwidth with every implementation, in one sitting.

    ``mib`` is the size of each fp32 array (at least :func:`min_mib`, so that
    no probe runs from cache). Every provider is measured in each of
    ``rounds`` interleaved rounds and keeps its best round (STREAM, too,
    reports the best of several trials): a moment of interference from another
    process then cannot decide which implementation looks fastest. Returns a
    tidy DataFrame, one row per provider, GB/s with STREAM's byte counting (see
    :func:`effnb.probes.bytes_moved`), ``gbps_rounds`` listing every round;
    ``df.attrs['notes']`` says what was skipped.
    """
    import pandas as pd

    n_threads = _check_threads(threads)
    mib = default_mib() if mib is None else mib
    if isinstance(mib, bool) or not isinstance(mib, int) or mib < min_mib():
        raise ValueError(f"mib={mib!r}: each probe array must be >= 4x the last-level cache "
                         f"({cachesize.llc_bytes() / MIB:.0f} MiB here, measured); pass mib >= {min_mib()}")
    if repeats < 3:
        raise ValueError(f"repeats={repeats}: pass repeats >= 3")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}: pass a whole number >= 1")
    n = mib * MIB // 4
    notes = []
    use_cpp = probes.cpp_ops() is not None
    if not use_cpp:
        notes.append(f"C++ probes skipped: {ext.status('stream')['reason']}")
    with _threads_set(n_threads):
        a = np.full(n, 1.0, dtype=np.float32)  # written once so every page is really mapped
        b = np.full(n, 2.0, dtype=np.float32)
        c = np.full(n, 0.5, dtype=np.float32)
        frames = []
        for r in range(rounds):
            for kernel, providers in _providers(a, b, c, use_cpp).items():
                df = bench.bench(providers, [n], bytes_moved=lambda size, k=kernel: probes.bytes_moved(k, size),
                                 working_set=lambda size, k=kernel: probes.bytes_moved(k, size),
                                 repeats=repeats, progress=progress,
                                 desc=f"{kernel} bandwidth, round {r + 1}/{rounds}")
                df.insert(1, "kernel", kernel)
                df["round"] = r
                frames.append(df)
        del a, b, c
    every = pd.concat(frames, ignore_index=True)
    best = every.loc[every.groupby("provider", sort=False)["gbps"].idxmax()].reset_index(drop=True)
    best["gbps_rounds"] = [every.loc[every["provider"] == p, "gbps"].round(2).tolist() for p in best["provider"]]
    best["impl"] = best["provider"].str.split().str[0]
    best["threads"] = n_threads
    best["mib"] = mib
    best.attrs["notes"] = notes
    return best


def gemm_frame(n: int = DEFAULT_GEMM_N, threads: int | None = None, repeats: int = 7, progress: bool = False):
    """Time an ``n x n`` fp32 torch GEMM (2 n^3 flops): the practical compute roof."""
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 64:
        raise ValueError(f"n={n!r}: pass a whole number >= 64 for the GEMM size")
    n_threads = _check_threads(threads)
    with _threads_set(n_threads):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, n, generator=g)
        y = torch.randn(n, n, generator=g)
        z = torch.empty(n, n)
        df = bench.bench({"torch gemm": lambda size: (lambda: torch.mm(x, y, out=z))}, [n],
                         flops=lambda size: 2.0 * size ** 3, repeats=repeats, progress=progress,
                         desc="fp32 GEMM")
    df.insert(1, "kernel", "gemm")
    df["impl"] = "torch"
    df["threads"] = n_threads
    return df


def fma_frame(threads: int | None = None, repeats: int = 7, iters: int = 2_000_000):
    """Time the register-blocked FMA probe (kernels/stream/peak.cpp): the compute roof, no memory in the loop.

    Returns None without the C++ stream family (the GEMM then stands in for the roof).
    """
    n_threads = _check_threads(threads)
    with _threads_set(n_threads):
        probe = probes.peak_fma(n_threads, iters)
        if probe is None:
            return None
        fn, flops = probe
        df = bench.bench({"cpp fma": lambda size: fn}, [iters], flops=lambda size: flops, repeats=repeats,
                         progress=False, desc="fp32 FMA peak")
    df.insert(1, "kernel", "fma")
    df["impl"] = "cpp"
    df["threads"] = n_threads
    return df


def peak_flops(n: int = DEFAULT_GEMM_N, threads: int | None = None, repeats: int = 7) -> float:
    """fp32 GFLOP/s of a large torch GEMM: what this machine really sustains, not the spec sheet."""
    return float(gemm_frame(n, threads, repeats)["gflops"].iloc[0])


# ---------------------------------------------------------------- the cached machine record

MAX_PROBES = 8           # probes kept per machine and parameters
MAX_BUSY_CORES = 0.5     # a probe during which other processes took more than this is not trusted alone
PROBE_TRIES = 3          # probes taken at most in one call while the machine stays busy
LIMIT_KEYS = ("read_gbps", "copy_gbps", "triad_gbps", "peak_gflops", "gemm_gflops")


def cache_path(threads: int | None = None, mib: int | None = None, repeats: int = 15, rounds: int = 3,
               gemm_n: int = DEFAULT_GEMM_N) -> Path:
    """One cache file per machine and probe parameters: other parameters are other probes."""
    mib = default_mib() if mib is None else mib
    name = f"{provenance.hardware_id()}-t{_check_threads(threads)}-m{mib}-r{repeats}x{rounds}-g{gemm_n}-v2.json"
    return ext.cache_dir() / "roofline" / name


def _best(df, kernel: str) -> tuple[float, str]:
    rows = df[df["kernel"] == kernel]
    i = rows["gbps"].idxmax()
    return float(rows.loc[i, "gbps"]), str(rows.loc[i, "provider"])


def _records(df) -> list[dict]:
    return json.loads(df.to_json(orient="records"))  # plain JSON types, NaN -> None


def probe(threads: int | None = None, mib: int | None = None, repeats: int = 15, rounds: int = 3,
          gemm_n: int = DEFAULT_GEMM_N, progress: bool = True) -> dict:
    """One full probe of the machine's limits (bandwidth, the FMA roof and the fp32 GEMM), uncached."""
    import pandas as pd

    n_threads = _check_threads(threads)
    mib = default_mib() if mib is None else mib
    t0 = time.perf_counter()
    bw = probe_bandwidth(n_threads, mib=mib, repeats=repeats, progress=progress, rounds=rounds)
    gemm = gemm_frame(gemm_n, n_threads)
    fma = fma_frame(n_threads)
    read, read_by = _best(bw, "read")
    copy, copy_by = _best(bw, "copy")
    triad, triad_by = _best(bw, "triad")
    return {
        "hardware_id": provenance.hardware_id(), "threads": n_threads,
        "read_gbps": read, "copy_gbps": copy, "triad_gbps": triad,
        # the compute roof: the FMA probe where the C++ family runs, else the GEMM
        "peak_gflops": float(fma["gflops"].iloc[0]) if fma is not None else float(gemm["gflops"].iloc[0]),
        "peak_by": "register-blocked FMA probe" if fma is not None else "fp32 torch GEMM",
        "gemm_gflops": float(gemm["gflops"].iloc[0]),
        "read_by": read_by, "copy_by": copy_by, "triad_by": triad_by,
        "mib": mib, "repeats": repeats, "rounds": rounds, "gemm_n": gemm_n, "ext": ext.backend("stream"),
        "notes": bw.attrs.get("notes", []),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "probes": _records(pd.concat([bw, gemm] + ([fma] if fma is not None else []), ignore_index=True)),
    }


def quiet(rec: dict) -> bool:
    """Whether a probe had the cores to itself (None: no /proc to tell; records older than the check: no).
    Load only lowers a limit, so a busy probe alone makes every "% of the limit" look better than it is."""
    return "busy_cores" in rec and (rec["busy_cores"] is None or rec["busy_cores"] <= MAX_BUSY_CORES)


def best_of(taken: list[dict]) -> dict:
    """Each limit as the best over several probes: load on a shared machine only ever lowers a probe."""
    if not taken:
        raise ValueError("best_of needs at least one probe record")
    best = dict(max(taken, key=lambda t: t["read_gbps"]))  # its rows and notes describe the best read
    for k in LIMIT_KEYS:
        top = max(taken, key=lambda t: float(t[k]))
        best[k] = float(top[k])
        label = k.split("_")[0] + "_by"      # read_by, copy_by, triad_by, peak_by: where the best came from
        if label in top:
            best[label] = top[label]
    best["probe_count"] = len(taken)
    best["spread"] = {k: (max(float(t[k]) for t in taken) - min(float(t[k]) for t in taken)) / best[k]
                      for k in LIMIT_KEYS}
    return best


def _keep(taken: list[dict]) -> list[dict]:
    """At most MAX_PROBES probes: the best of each limit, then the newest; no limit can drop on a refresh."""
    best = {id(max(taken, key=lambda t: float(t[k]))) for k in LIMIT_KEYS}
    keep = [t for t in taken if id(t) in best]
    for t in reversed(taken):
        if len(keep) >= MAX_PROBES:
            break
        if id(t) not in best:
            keep.append(t)
    return sorted(keep, key=lambda t: t["measured_at"])


def machine(threads: int | None = None, refresh: bool = False, mib: int | None = None,
            repeats: int = 15, rounds: int = 3, gemm_n: int = DEFAULT_GEMM_N, progress: bool = True,
            min_probes: int = 1) -> dict:
    """The limits of this machine at ``threads`` threads: the best of every probe taken with these parameters.

    Keys: read_gbps, copy_gbps, triad_gbps (the best implementation of each),
    peak_gflops (the register-blocked FMA probe; the fp32 GEMM where the C++
    family is missing), gemm_gflops, hardware_id, threads, the probe parameters,
    probe_count, probes (the rows of the best read) and where each best came
    from. Cached as JSON under ``$EFFNB_CACHE/roofline/``, one file per machine
    and probe parameters; a new probe is taken when fewer than ``min_probes``
    quiet ones (see :func:`quiet`) are stored or ``refresh=True``, and joins the
    others (best kept); while other processes keep the cores busy, up to
    ``PROBE_TRIES`` probes are taken.
    """
    n_threads = _check_threads(threads)
    mib = default_mib() if mib is None else mib
    path = cache_path(n_threads, mib, repeats, rounds, gemm_n)
    stored = files.read_json(path) or {}
    taken = [t for t in stored.get("taken", []) if t.get("hardware_id") == provenance.hardware_id()]
    fresh = refresh or len([t for t in taken if quiet(t)]) < min_probes
    if fresh:
        for _ in range(PROBE_TRIES):  # a probe that shared its cores is kept, but another is taken
            with bench.Contention(max_cores=MAX_BUSY_CORES) as busy:
                taken.append(probe(n_threads, mib, repeats, rounds, gemm_n, progress))
            taken[-1]["busy_cores"] = busy.cores
            if quiet(taken[-1]):
                break
        taken = _keep(taken)
        files.write_json(path, {"taken": taken})
    limits = best_of(taken)
    limits["cached"] = not fresh
    return limits


def probes_frame(limits: dict):
    """The probe rows of a :func:`machine` record as a DataFrame."""
    import pandas as pd
    return pd.DataFrame(limits.get("probes", []))


READ_PROBE = "torch sum"   # the reader timed beside kernels (read_beside): one of the two best in every probe here


def read_beside(kernels: dict, repeats: int = 9, mib: int | None = None) -> dict:
    """GB/s of kernels and a read probe (``torch.sum``, ``mib`` MiB) in turns (:func:`bench.measure_together`).

    ``kernels``: name -> (callables over cold copies, bytes one call moves). A roof is the best of the stored
    probes (:func:`machine`), but shared memory delivers less in some minutes than in others: the probe
    beside the kernels says what it delivered in theirs. Returns name -> (GB/s, spread), the probe too.
    """
    import torch

    mib = default_mib() if mib is None else mib
    if isinstance(mib, bool) or not isinstance(mib, int) or mib < min_mib():
        raise ValueError(f"mib={mib!r}: the probe array must be >= 4x the last-level cache; pass mib >= {min_mib()}")
    if not kernels or READ_PROBE in kernels:
        raise ValueError(f"pass at least one kernel, none named {READ_PROBE!r}")
    nbytes = {name: b for name, (_, b) in kernels.items()}
    if any(not (isinstance(b, (int, float)) and b > 0) for b in nbytes.values()):
        raise ValueError(f"bytes moved per call must be > 0 for every kernel, got {nbytes}")
    a = torch.ones(mib * MIB // 4)
    nbytes[READ_PROBE] = a.numel() * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bench.SpreadWarning)   # the spread comes back with each rate instead
        t = bench.measure_together({**{n: fn for n, (fn, _) in kernels.items()}, READ_PROBE: a.sum}, repeats=repeats)
    return {name: (nbytes[name] / t[name].median / 1e9, t[name].spread) for name in nbytes}


# ---------------------------------------------------------------- using the limits

def percent_of(value: float, limit: float) -> float:
    """``value`` as a percentage of ``limit`` (e.g. measured GB/s of the machine's GB/s)."""
    if not (isinstance(limit, (int, float)) and limit > 0 and math.isfinite(limit)):
        raise ValueError(f"limit must be a positive number, got {limit!r}")
    return 100.0 * float(value) / float(limit)


def bound(flops: float, bytes: float, seconds: float, limits: dict, bandwidth: str = "read_gbps") -> dict:  # noqa: A002
    """Which roof binds a kernel that did ``flops`` and moved ``bytes`` in ``seconds``, and how close it got.

    The memory roof is ``intensity * limits[bandwidth]`` (default the read
    bandwidth: most inference kernels mostly read), the compute roof
    ``limits['peak_gflops']``; the lower one binds. ``pct_of_limit`` is the
    achieved rate as a percentage of the binding roof: GB/s of bandwidth when
    memory binds, GFLOP/s of peak when compute does.
    """
    for name, v in (("flops", flops), ("bytes", bytes), ("seconds", seconds)):
        if not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds!r}")
    if flops == 0 and bytes == 0:
        raise ValueError("a kernel with no flops and no bytes has no place on a roofline; pass flops or bytes > 0")
    for key in (bandwidth, "peak_gflops"):
        if key not in limits or not limits[key] or limits[key] <= 0:
            raise ValueError(f"limits lacks a positive {key!r}; pass the dict from effnb.roofline.machine()")
    bw, peak = float(limits[bandwidth]), float(limits["peak_gflops"])
    gflops, gbps = flops / seconds / 1e9, bytes / seconds / 1e9
    intensity = flops / bytes if bytes > 0 else math.inf
    memory_roof = intensity * bw
    binding = "memory" if memory_roof < peak else "compute"
    pct = 100.0 * gbps / bw if binding == "memory" else 100.0 * gflops / peak
    return {"gflops": gflops, "gbps": gbps, "intensity": intensity, "binding": binding,
            "pct_of_limit": pct, "attainable_gflops": min(peak, memory_roof), "ridge": peak / bw}


def plot(limits: dict, points_df=None, ax=None, bandwidth: str = "read_gbps", title: str = "Roofline"):
    """Log-log roofline: the memory slope and the compute roof, each named on its line, and each kernel
    as a point.

    ``points_df`` has columns ``name``, ``intensity`` (flop/byte) and ``gflops``. Two optional
    columns keep a crowded plot readable: ``group`` (one colour and one legend entry per group) and
    ``label`` (the text written beside a point; an empty label writes none). Without ``label`` every
    point is labelled with its ``name``. Labels go where they overlap no other text, legend or point.
    """
    import matplotlib.pyplot as plt

    bw, peak = float(limits[bandwidth]), float(limits["peak_gflops"])
    ridge = peak / bw
    pts = None
    if points_df is not None and len(points_df):
        missing = {"name", "intensity", "gflops"} - set(points_df.columns)
        if missing:
            raise ValueError(f"points_df lacks columns {sorted(missing)}; pass name, intensity, gflops")
        pts = points_df[(points_df["intensity"] > 0) & (points_df["gflops"] > 0)]
    lo, hi = 1 / 16, max(64.0, ridge * 8)
    if pts is not None and len(pts):
        lo = min(lo, float(pts["intensity"].min()) / 2)
        hi = max(hi, float(pts["intensity"].max()) * 2)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.5))
    x = np.geomspace(lo, hi, 200)
    ax.plot(x, np.minimum(peak, x * bw), color="k", linewidth=2)
    ax.plot(x, x * bw, color="tab:blue", linestyle=":", linewidth=1)
    ax.axhline(peak, color="tab:red", linestyle="--", linewidth=1)
    ax.axvline(ridge, color="grey", linestyle=":", linewidth=0.8)
    # each roof is named on its own line, where no kernel can be: above the slope and above the flat roof
    mem_text = ax.annotate(f"memory: {bw:.1f} GB/s ({bandwidth.replace('_gbps', '')})", (lo * 1.5, lo * 1.5 * bw),
                           textcoords="offset points", xytext=(-4, 4), ha="left", va="bottom", fontsize="small",
                           color="tab:blue", rotation_mode="anchor")
    comp_text = ax.annotate(f"compute: {peak:.0f} GFLOP/s ({limits.get('peak_by', 'fp32 GEMM')})", (hi, peak),
                            textcoords="offset points", xytext=(-4, 4), ha="right", va="bottom", fontsize="small",
                            color="tab:red")
    ridge_text = ax.annotate(f"ridge {ridge:.1f} flop/B", (ridge, 0.02), xycoords=ax.get_xaxis_transform(),
                             textcoords="offset points", xytext=(-3, 0), ha="right", va="bottom", rotation=90,
                             fontsize="small", color="grey")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min([lo * bw / 1.5] + ([float(pts["gflops"].min()) / 2] if pts is not None and len(pts) else [])),
                peak * 2)
    _plain_log_ticks(ax)
    groups = []
    if pts is not None:
        if "group" in pts.columns:
            for name, g in pts.groupby("group", sort=False):
                groups.append(ax.scatter(g["intensity"], g["gflops"], zorder=3, label=str(name)))
        else:
            for _, p in pts.iterrows():
                ax.scatter(p["intensity"], p["gflops"], zorder=3)
    ax.set_xlabel("arithmetic intensity (flop / byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{title} [{limits.get('hardware_id') or provenance.hardware_id()}, "
                 f"{limits.get('threads', '?')} threads]")
    ax.grid(True, which="major", alpha=0.3)
    legends = [ax.legend(handles=groups, fontsize="small", loc="upper left")] if groups else []   # no kernel there
    _along(ax, mem_text, (lo, lo * bw), (hi, hi * bw))
    if pts is not None:
        texts = pts["label"] if "label" in pts.columns else pts["name"]
        plots.place_labels(ax, [(float(p["intensity"]), float(p["gflops"]), str(t))
                           for (_, p), t in zip(pts.iterrows(), texts) if isinstance(t, str) and t.strip()],
                      avoid=[*legends, mem_text, comp_text, ridge_text],
                      dots=list(zip(pts["intensity"], pts["gflops"])))
    return ax


def _plain_log_ticks(ax) -> None:
    """Ticks read at a glance: 1/4, 1, 4, 16 on x (every second power of two past ten), 1, 10, 100 on y."""
    from fractions import Fraction

    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = ax.get_xlim()
    k0, k1 = math.ceil(math.log2(lo)), math.floor(math.log2(hi))
    step = 2 if k1 - k0 > 10 else 1
    ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(k0 - k0 % step, k1 + 1, step) if k >= k0]))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda v, _: f"{v:g}" if v >= 1 else f"1/{Fraction(v).limit_denominator(1 << 20).denominator}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _along(ax, text, a, b) -> None:
    """Turn ``text`` to the angle the line from data point ``a`` to ``b`` has on the drawn figure."""
    ax.figure.canvas.draw()   # the layout settles first: the angle is that of the figure as drawn
    (x0, y0), (x1, y1) = ax.transData.transform([a, b])
    text.set_rotation(math.degrees(math.atan2(y1 - y0, x1 - x0)))


def main(argv: list[str] | None = None) -> int:
    """``python -m effnb.roofline``: measure (or show the cached) limits of this machine."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m effnb.roofline",
                                     description="Measure this machine's memory bandwidth (STREAM probes: "
                                                 "Numba, C++, numpy, torch) and fp32 GEMM peak; cached per "
                                                 "hardware id and thread count under $EFFNB_CACHE/roofline/.")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all usable cores)")
    parser.add_argument("--mib", type=int, default=None,
                        help=f"MiB per probe array (default {DEFAULT_MIB}, or 4x the last-level cache if larger)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="samples per probe (default %(default)s)")
    parser.add_argument("--refresh", action="store_true",
                        help="take one more probe; the best of all stored probes is kept")
    args = parser.parse_args(argv)
    m = machine(args.threads, refresh=args.refresh, mib=args.mib, repeats=args.repeats, rounds=args.rounds)
    probes = probes_frame(m)
    bw = probes[~probes["kernel"].isin(["gemm", "fma"])]
    peer = bw.loc[bw["provider"].isin(["numpy copy", "torch copy"]), "gbps"].max()
    print(f"{m['hardware_id']}, {m['threads']} threads, {m['mib']} MiB arrays, best of {m['probe_count']} "
          f"probe(s), best read measured {m['measured_at']}"
          f"{' (cached)' if m.get('cached') else ''}")
    for _, r in bw.iterrows():
        print(f"  {r['provider']:<12} {r['gbps']:6.1f} GB/s   {100 * r['gbps'] / peer:5.0f}% of best numpy/torch copy")
    print(f"  read {m['read_gbps']:.1f} ({m['read_by']}), copy {m['copy_gbps']:.1f} ({m['copy_by']}), "
          f"triad {m['triad_gbps']:.1f} ({m['triad_by']}) GB/s; compute roof {m['peak_gflops']:.0f} GFLOP/s "
          f"({m.get('peak_by', 'fp32 GEMM')}), fp32 GEMM {m.get('gemm_gflops', float('nan')):.0f} GFLOP/s")
    for note in m.get("notes", []):
        print("  note:", note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
