"""One place that sets the thread count of every runtime before work starts.

Timings are only comparable when torch, Numba, OpenMP and BLAS all use the same
number of threads, so chapters call :func:`set_threads` once, first.
"""
from __future__ import annotations

import contextlib
import os

_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# NUMBA_NUM_THREADS is Numba's pool size, fixed once its threads start: changing
# the variable later makes the next compilation fail, so we only ever call
# numba.set_num_threads (and record the variable, never write it).
_RECORDED_VARS = _ENV_VARS + ("NUMBA_NUM_THREADS",)


def available_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def validate_threads(n) -> int:
    """Return ``n`` as an int in 1..available_cores(), or raise a ValueError saying what to pass."""
    cores = available_cores()
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"threads must be a whole number from 1 to {cores}, got {n!r}")
    if not 1 <= n <= cores:
        raise ValueError(f"threads={n} is outside 1..{cores} (this machine has {cores} usable cores); "
                         f"pass threads=1..{cores}")
    return n


def set_threads(n: int | None = None) -> int:
    """Set torch, Numba, OpenMP and BLAS to ``n`` threads (default: all usable cores)."""
    n = validate_threads(available_cores() if n is None else n)
    for var in _ENV_VARS:
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)
    from . import ext
    ext.sync_threads(n)   # our kernels' OpenMP runtime is not torch's
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # numba is optional for users of the torch path only
        pass
    return n


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block on ``n`` torch threads (``None``: leave them), then restore the count: tiny
    models run fastest, and steadiest on a shared machine, on one."""
    import torch
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(validate_threads(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def current_threads() -> dict:
    """What each runtime reports now: recorded in provenance."""
    out = {"env": {v: os.environ.get(v) for v in _RECORDED_VARS}}
    try:
        import torch
        out["torch"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        out["torch"] = None
    try:
        import numba
        out["numba"] = numba.get_num_threads()
    except ImportError:  # pragma: no cover
        out["numba"] = None
    return out


def numba_layer() -> str:
    """The Numba threading layer (tbb, omp or workqueue) this process's parallel regions ran on;
    before its first region, the one requested (effnb/__init__.py says which it picks and why)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return str(numba.config.THREADING_LAYER)
