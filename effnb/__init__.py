"""effnb: measure what efficient-ML techniques buy on your machine.

Core modules know no technique: bench (timing), perf (benchmark specs),
threads, provenance, claims, chapter (a run's record), sidecar, ext (the C++
kernel families), family (their ops as Python sees them), probes and roofline
(machine limits), units, files, show, plots.
The runner package runs chapters (spec, inputs, execute, sweep, pages, cli).
Each technique family is a package (measuring, quant, sparse, timeseries, ...)
split the same way: formats, ops, reference, peers, experiments, plots.
"""
import os as _os
import sys as _sys

# One OpenMP runtime per process. Numba's "omp" threading layer loads the
# system's libgomp beside the copy torch ships, and torch's lazily bound OpenMP
# calls can then land in either: torch.set_num_threads(1) followed by
# torch.get_num_threads() returned 2, and timings ran on a thread count nobody
# asked for. Numba's own pool ("workqueue") has no OpenMP at all.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
if "numba" in _sys.modules:  # imported before effnb: set it before its first parallel launch
    _sys.modules["numba"].config.THREADING_LAYER = _os.environ["NUMBA_THREADING_LAYER"]

# Large torch tensors on 2 MiB pages, as numpy already puts its large arrays: streaming
# weights from memory runs ~15% faster here (effnb.memory.huge_pages says whether it took).
# torch reads the variable once, at its first allocation: it counts only when effnb is
# imported before torch (the Makefile exports it for every run and test).
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.2.0"
