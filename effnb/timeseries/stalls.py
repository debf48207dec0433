"""Why a short parallel call can take ten times its work: a parallel region waits for its slowest thread.

A Numba ``prange`` region with n threads ends when the last of its threads
ends. When another process holds one of the cores, one of those threads waits
for the scheduler to give it a time slice, milliseconds later, whatever the
work; a call of half a millisecond then takes several. One thread cannot be
left behind that way (it can only be preempted, which is rarer). The probe
times the same small call one at a time, ours and sktime's, with ``threads``
threads and with one, all interleaved so that every side sees the same load,
and an empty parallel region, which has no work at all to blame; once on the
machine as found, and once with a core kept busy on purpose. Our MiniRocket
opens no region for a call below ``minirocket.PARALLEL_MIN_WORK``: the probe
says for each side whether its call opened one (``opens_region``).
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit, prange

from . import peers
from .inputs import numba_threads

STALL_S = 1e-3     # a call this much slower than its side's fastest one-thread call counts as stalled (a slice is ms)


@njit(cache=True, parallel=True)
def _empty_region(out):
    for i in prange(out.shape[0]):
        out[i] += 1.0


def _region(threads: int):
    out = np.zeros(max(1, threads), dtype=np.float64)

    def call():
        with numba_threads(threads):
            _empty_region(out)
    return call


class busy_core:
    """Keep one core busy while the block runs: a child process that spins, ended (and waited for) on exit."""

    def __enter__(self):
        import subprocess
        import sys
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)          # let it start spinning
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        return False


def opens_region(side: str, transform, n_series: int, threads: int) -> bool:
    """Whether one ``transform`` call of ``side`` opens a parallel region: sktime's always does with more than
    one thread (one ``prange`` over series per call); ours only with more than one thread, more than one
    work item and at least ``minirocket.PARALLEL_MIN_WORK`` of work (the rule of ``MiniRocket.transform``)."""
    if int(threads) <= 1:
        return False
    if "effnb" not in side:
        return True
    from . import minirocket
    items = len(transform.dilations_) * -(-int(n_series) // minirocket.W)
    return items > 1 and transform.flops_per_series() * n_series >= minirocket.PARALLEL_MIN_WORK


PAUSE_S = 1e-3     # idle time before each probed call, as between requests: idle worker threads go to sleep


def _time_round_robin(sides: dict, calls: int) -> dict:
    """Each side called ``calls`` times (after two warm-up calls), one call per timing, round-robin, each
    after a pause of ``PAUSE_S`` (a parallel region then has to wake its worker threads, as a service does)."""
    import warnings
    times = {k: [] for k in sides}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(int(calls) + 2):
            for key, fn in sides.items():
                time.sleep(PAUSE_S)
                t0 = time.perf_counter()
                fn()
                if i >= 2:
                    times[key].append(time.perf_counter() - t0)
    return times


def parallel_stalls(threads: int, *, length: int, num_features: int, n_series: int, calls: int = 40,
                    seed: int = 0):
    """Per load, side (ours, sktime's MiniRocket, an empty parallel region) and thread count: fastest, median
    and slowest call in ms, and the share of calls more than ``STALL_S`` slower than the side's fastest call
    on one thread (more threads never need longer than that for the work; only a wait does).

    Two loads: the machine as found, then with one core kept busy by a
    process the probe starts (``busy_core``), which provokes the wait on
    purpose. Every side fits on and transforms the same ``n_series`` random
    series of ``length`` points; each is called ``calls`` times, one call per
    timing, round-robin over the sides (the first two calls are warm-up).
    The column ``region`` says whether the side's call opens a parallel region
    (``opens_region``), ``work_mflop`` the work it is credited with.
    """
    import warnings

    import pandas as pd
    X = np.random.default_rng(seed).normal(size=(n_series, 1, length))
    sides, region, work = {}, {}, {}
    for t in sorted({int(threads), 1}, reverse=True):
        made = peers.transformers(False, 10, num_features, t, seed)
        for label in ("MiniRocket effnb", "MiniRocket sktime"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tr = made[label].fit(X)
            sides[label, t] = (lambda tr=tr: tr.transform(X))
            region[label, t] = opens_region(label, tr, n_series, t)
        ours = made["MiniRocket effnb"]
        work.update({("MiniRocket effnb", t): ours.flops_per_series() * n_series / 1e6,
                     ("MiniRocket sktime", t): ours.flops_per_series() * n_series / 1e6})
        sides["empty parallel region", t] = _region(t)
        region["empty parallel region", t], work["empty parallel region", t] = t > 1, 0.0
    found = _time_round_robin(sides, calls)
    with busy_core():
        busy = _time_round_robin(sides, calls)
    rows = []
    for load, times in (("as found", found), ("one core kept busy", busy)):
        for (side, t), ts in times.items():
            ts, fastest1 = np.asarray(ts), min(times[side, 1])
            rows.append({"load": load, "side": side, "threads": t, "region": region[side, t],
                         "work_mflop": work[side, t], "fastest_ms": 1e3 * ts.min(),
                         "median_ms": 1e3 * np.median(ts), "slowest_ms": 1e3 * ts.max(),
                         "stalled": float(np.mean(ts > fastest1 + STALL_S))})
    return pd.DataFrame(rows)
