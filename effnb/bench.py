"""Timing done the same way everywhere in the book.

Rules (the methodology page explains them): the first call is timed apart as
compile/JIT time; then warm-up calls; then ``repeats`` samples, each long
enough to dwarf the timer's resolution; we report the median and the
interquartile range and warn when the spread is large. Contenders raced at
one size take their samples in turns, so load meets them alike. In cold mode
every call reads a different copy of its inputs, rotating through a working
set of at least 4x the last-level cache, as a real decode pass or a long
stream does (the cache this machine really holds, measured:
:mod:`effnb.cachesize`).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from . import cachesize, provenance

COLD_FACTOR = 4          # cold working set >= COLD_FACTOR x last-level cache
SPREAD_WARN = 0.10       # warn when IQR / median exceeds this
MIN_SAMPLE_S = 2e-3      # each sample lasts at least this long
SETTLE_S = 10e-3         # in a race, a side runs this long untimed before each of its samples (see measure_together)
LONG_CALL_S = 50e-3      # calls at least this long are timed without settling: the switch costs them under 1%


class SpreadWarning(UserWarning):
    """The timings of one measurement disagree by more than SPREAD_WARN."""


@dataclass
class Timing:
    """Seconds per call for one kernel at one size."""
    times: np.ndarray
    compile_s: float
    calls_per_sample: int
    working_set_bytes: int = 0
    label: str = ""
    notes: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def q25(self) -> float:
        return float(np.quantile(self.times, 0.25))

    @property
    def q75(self) -> float:
        return float(np.quantile(self.times, 0.75))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else math.inf

    def __repr__(self) -> str:
        return (f"Timing({self.label or 'fn'}: median {self.median * 1e6:.1f} us, "
                f"IQR {100 * self.spread:.1f}%, n={len(self.times)}, compile {self.compile_s * 1e3:.1f} ms)")


def cold_copies(bytes_per_instance: int, llc: int | None = None, factor: int = COLD_FACTOR) -> int:
    """How many distinct input copies make a working set of ``factor`` x the last-level cache
    (as measured by :func:`effnb.cachesize.llc_bytes`, unless ``llc`` is given)."""
    if bytes_per_instance <= 0:
        raise ValueError("bytes_per_instance must be positive to size a cold working set")
    llc = cachesize.llc_bytes() if llc is None else llc
    return max(2, math.ceil(factor * llc / bytes_per_instance))


def measure(fn: Callable[[], Any] | list[Callable[[], Any]], *, warmup: int = 3, repeats: int = 15,
            min_sample_s: float = MIN_SAMPLE_S, label: str = "", working_set_bytes: int = 0) -> Timing:
    """Time ``fn()``; pass a list of callables to rotate through them (cold caches).

    The first call is timed on its own and reported as ``compile_s`` (JIT,
    lazy initialisation, first touch of memory); it never enters the median.
    """
    return measure_together({label: fn}, warmup=warmup, repeats=repeats, min_sample_s=min_sample_s,
                            working_set_bytes={label: working_set_bytes}, stacklevel=3)[label]


def measure_together(fns: Mapping[str, Callable[[], Any] | list[Callable[[], Any]]], *, warmup: int = 3,
                     repeats: int = 15, min_sample_s: float = MIN_SAMPLE_S,
                     working_set_bytes: Mapping[str, int] | None = None, stacklevel: int = 2) -> dict[str, Timing]:
    """Time several contenders sample by sample in turn (A, B, C, B, C, A, ...), one :class:`Timing` each.

    Load on a shared machine comes in bursts: timed one after the other, a
    burst lands on whichever side was running and decides the ratio. Taken in
    turns, every side meets the same load. Each side is compiled, warmed and
    calibrated (calls per sample) apart first; the order turns one step per
    round so no side always follows the same neighbour. Before each sample a
    side settles: it runs untimed for ``SETTLE_S`` (calls shorter than
    ``LONG_CALL_S``). Switching sides costs the incoming one for milliseconds:
    its threads were parked, the caches hold its neighbour's data, and on our
    Zen 5 machine a 0.2 ms int4 GEMV ran its first call at 1.7-2.6x and the
    next twenty at about 1.25x its steady time, whether a 30 ms pause or
    another library had run before it; settled, it ran in a race as fast as
    alone.
    """
    if warmup < 0 or repeats < 3:
        raise ValueError(f"need warmup >= 0 and repeats >= 3 (got warmup={warmup}, repeats={repeats})")
    sides = {key: list(f) if isinstance(f, (list, tuple)) else [f] for key, f in fns.items()}
    if not sides or not all(sides.values()):
        raise ValueError("measure() needs at least one callable")
    turn = {key: 0 for key in sides}     # each side rotates through its own copies

    def call(key):
        copies = sides[key]
        copies[turn[key] % len(copies)]()
        turn[key] += 1

    compile_s, calls, settle = {}, {}, {}
    for key, copies in sides.items():
        t0 = time.perf_counter()
        for f in copies:  # first touch of every copy; the first call also compiles
            f()
            if f is copies[0]:
                compile_s[key] = time.perf_counter() - t0
        for _ in range(warmup):
            call(key)
        # Calibrate: enough calls per sample that one sample lasts >= min_sample_s.
        t0 = time.perf_counter()
        call(key)
        one = max(time.perf_counter() - t0, 1e-9)
        calls[key] = max(1, math.ceil(min_sample_s / one))
        settle[key] = 0 if len(sides) == 1 or one >= LONG_CALL_S else max(1, math.ceil(SETTLE_S / one))
    keys = list(sides)
    times = {key: np.empty(repeats) for key in keys}
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            for _ in range(settle[key]):
                call(key)
            t0 = time.perf_counter()
            for _ in range(calls[key]):
                call(key)
            times[key][r] = (time.perf_counter() - t0) / calls[key]
    out = {}
    for key in keys:
        ws = (working_set_bytes or {}).get(key, 0)
        t = out[key] = Timing(times[key], compile_s[key], calls[key], ws, key)
        if t.spread > SPREAD_WARN:
            msg = f"{key or 'timing'}: IQR is {100 * t.spread:.0f}% of the median; the machine may be busy"
            t.notes.append(msg)
            warnings.warn(msg, SpreadWarning, stacklevel=stacklevel)
    return out


def _per_provider(count, name):
    """A provider's own work counter when ``count`` maps names to counters, else ``count`` itself."""
    return count.get(name) if isinstance(count, Mapping) else count


def bench(providers: Mapping[str, Callable[[Any], Callable[[], Any]]], sizes: Iterable, *,
          bytes_moved=None, flops=None, cold: bool = False, working_set: Callable[[Any], int] | None = None,
          warmup: int = 3, repeats: int = 15, progress: bool = True, desc: str = "bench"):
    """Measure every provider at every size in one run; return a tidy DataFrame.

    ``providers`` maps a name to a factory: ``factory(size)`` builds fresh
    inputs and returns a no-argument callable. At each size every provider's
    inputs are built, then all are timed in turns (:func:`measure_together`).
    In cold mode the factory is called as often as needed for a working set of
    4x the last-level cache (``working_set(size)`` gives one instance's bytes,
    default ``bytes_moved``). With ``bytes_moved`` / ``flops`` (a function of
    the size, or a dict of them by provider) the frame gets GB/s / GFLOP/s
    columns, with the interquartile band as ``*_lo`` / ``*_hi``.
    """
    import pandas as pd
    from .plots import quiet_tqdm
    tqdm = quiet_tqdm()

    sizes = list(sizes)
    rows = []
    for size in tqdm(sizes, desc=desc, disable=not progress, leave=False):
        fns, ws = {}, {}
        for name, factory in providers.items():
            if cold:
                per = working_set or _per_provider(bytes_moved, name)
                if per is None:
                    raise ValueError("cold=True needs working_set= or bytes_moved= to size the working set")
                n = cold_copies(int(per(size)))
                fns[name] = [factory(size) for _ in range(n)]
                ws[name] = n * int(per(size))
            else:
                fns[name] = factory(size)
                ws[name] = int(working_set(size)) if working_set else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpreadWarning)   # the spread_warning column says it
            timings = measure_together(fns, warmup=warmup, repeats=repeats, working_set_bytes=ws)
        del fns
        for name, t in timings.items():
            row = {"provider": name, "size": size, "median_s": t.median, "q25_s": t.q25, "q75_s": t.q75,
                   "spread": t.spread, "compile_s": t.compile_s, "cold": cold, "working_set_bytes": ws[name],
                   "spread_warning": bool(t.notes)}
            for col, count, scale in (("gbps", bytes_moved, 1e9), ("gflops", flops, 1e9)):
                count = _per_provider(count, name)
                if count is not None:
                    c = float(count(size)) / scale
                    row[col], row[col + "_lo"], row[col + "_hi"] = c / t.median, c / t.q75, c / t.q25
            rows.append(row)
    return pd.DataFrame(rows)


def ratio(df, numerator: str, denominator: str, *, column: str = "median_s"):
    """Per size, ``denominator``'s time over ``numerator``'s: the speed-up of numerator.

    Both providers come from the same ``bench`` call, so they shared the
    machine's state: a ratio is more trustworthy than either time alone.
    """
    wide = df.pivot_table(index="size", columns="provider", values=column, sort=False)
    for p in (numerator, denominator):
        if p not in wide:
            raise KeyError(f"provider {p!r} not in this benchmark; have {sorted(wide.columns)}")
    return wide[denominator] / wide[numerator]


def perf_plot(df, *, y: str = "gbps", x: str = "size", ylabel: str = "GB/s", xlabel: str = "size",
              title: str = "", roof: float | None = None, roof_label: str = "", logx: bool = True,
              logy: bool = False, ax=None):
    """One line per provider, metric in physical units vs size, interquartile band shaded.

    The machine's hardware id is always in the title: a number without its
    machine means nothing.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for name, g in df.groupby("provider", sort=False):
        line, = ax.plot(g[x], g[y], marker="o", label=name)
        if y + "_lo" in g and y + "_hi" in g:
            ax.fill_between(g[x], g[y + "_lo"], g[y + "_hi"], color=line.get_color(), alpha=0.2)
    if roof is not None:
        ax.axhline(roof, color="k", linestyle="--", linewidth=1, label=roof_label or "machine limit")
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} [{provenance.hardware_id()}]".strip())
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def grows_with_work(seconds, work, min_slope: float = 0.3) -> tuple[bool, str]:
    """Sanity check for a series whose time must grow with its work (flops or bytes).

    Fits the log-log slope of time against work; a slope below ``min_slope`` (an
    ideal kernel has ~1, a cache effect may bend it, but flat means the timer
    measured something else: a fixed overhead, a lazy op, a wrong callable).
    Returns ``(ok, reason)``, to pass as ``valid=`` to a claim.
    """
    t = np.asarray(seconds, dtype=float)
    w = np.asarray(work, dtype=float)
    if t.size != w.size or t.size < 2:
        raise ValueError(f"need at least 2 (seconds, work) pairs of equal length, got {t.size} and {w.size}")
    if not (np.isfinite(t).all() and (t > 0).all() and (w > 0).all()):
        return False, "a timing or work count is not a positive number"
    if w.max() / w.min() < 2:
        raise ValueError("the work must span at least 2x to tell growth from noise")
    slope = float(np.polyfit(np.log(w), np.log(t), 1)[0])
    if slope < min_slope:
        return False, (f"invalid measurement: time grew as work^{slope:.2f} over a {w.max() / w.min():.0f}x "
                       f"range of work (at least work^{min_slope} expected): the timer did not measure the work")
    return True, ""


def agrees_with(rate: float, reference: float, name: str, factor: float = 5.0) -> tuple[bool, str]:
    """The same op measured twice in one run must agree within ``factor``; else the measurement is broken."""
    if not (rate > 0 and reference > 0):
        return False, f"invalid measurement: {name} rate {rate!r} or its reference {reference!r} is not positive"
    off = max(rate / reference, reference / rate)
    if off > factor:
        return False, (f"invalid measurement: {name} ran at {rate:.3g}, {off:.0f}x off the {reference:.3g} "
                       "measured for the same op elsewhere in this run")
    return True, ""


class Contention:
    """How many cores other processes (and the hypervisor) took while the block ran: ``with Contention() as c:``.

    All CPUs' busy time from ``/proc/stat`` minus this process's own CPU time,
    over the wall time, in cores. A measurement that shared its cores says how
    fast the machine was when busy, not how fast the kernel is; the chapter's
    claims need less than ``max_cores`` of it. ``cores`` stays None where /proc is missing.
    """

    def __init__(self, max_cores: float = 0.5):
        self.max_cores, self.cores, self.seconds = max_cores, None, 0.0

    @staticmethod
    def _ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()  # fields after the command name; utime, stime are 12, 13
            return user + nice + system + irq + softirq + steal, int(own[11]) + int(own[12])
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "Contention":
        import time
        self._t0, self._start = time.perf_counter(), self._ticks()
        return self

    def __exit__(self, *exc) -> bool:
        import os
        import time
        self.seconds = time.perf_counter() - self._t0
        end = self._ticks()
        if self._start is not None and end is not None and self.seconds > 0:
            others = (end[0] - self._start[0]) - (end[1] - self._start[1])
            self.cores = max(0.0, others / os.sysconf("SC_CLK_TCK") / self.seconds)
        return False

    def validity(self, what: str) -> tuple[bool, str]:
        if self.cores is None or self.cores <= self.max_cores:
            return True, ""
        return False, (f"invalid measurement: other processes kept {self.cores:.1f} cores busy while {what} ran "
                       f"(at most {self.max_cores:g} allowed): the timings describe a shared machine")


def combine(*checks: tuple[bool, str]) -> tuple[bool, str]:
    """All checks must pass; the reasons of those that failed, joined."""
    bad = [why for ok, why in checks if not ok]
    return not bad, "; ".join(bad)
