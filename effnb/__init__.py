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

# Numba's threading layer: tbb, else its own pool ("workqueue"), never "omp". Numba's omp layer
# loads the system's libgomp beside the copy torch ships, and torch's lazily bound OpenMP calls
# can then land in either: torch.set_num_threads(1) followed by torch.get_num_threads() returned
# 2. Workqueue has no OpenMP, but on 2 cores its parallel regions of under a millisecond or so
# ran no faster than one thread (MiniRocket, 16 series of length 256: 1.13 ms on 2 threads, 1.06
# on one; 0.52 with tbb, 0.58 with omp), and sktime's Numba code, the peer, ran on it too. The
# tbb wheel puts libtbb in <prefix>/lib, off the loader's path: loading it here lets numba's tbb
# layer find it, and the same directory on LD_LIBRARY_PATH lets child processes (a notebook's
# kernel, which inherits the layer's name) find it too. A NUMBA_THREADING_LAYER set by the user is kept.


def _load_tbb() -> bool:
    import ctypes
    import glob
    for lib in sorted(glob.glob(_os.path.join(_sys.prefix, "lib", "libtbb.so.12*"))):
        try:
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        path = _os.environ.get("LD_LIBRARY_PATH", "")
        if _os.path.dirname(lib) not in path.split(":"):
            _os.environ["LD_LIBRARY_PATH"] = _os.pathsep.join(p for p in (_os.path.dirname(lib), path) if p)
        return True
    return False


_layer = _os.environ.get("NUMBA_THREADING_LAYER")
if _layer is None:
    _os.environ["NUMBA_THREADING_LAYER"] = "tbb" if _load_tbb() else "workqueue"
elif _layer == "tbb":
    _load_tbb()
if "numba" in _sys.modules:  # imported before effnb: set it before its first parallel launch
    _sys.modules["numba"].config.THREADING_LAYER = _os.environ["NUMBA_THREADING_LAYER"]

# EFFNB_ISA=avx2 on an AVX-512 machine puts every kernel on its AVX2 path: the C++ families build for that
# level (effnb.ext) and Numba compiles for an AVX2 CPU (8 lanes in MiniRocket), unless the user named a Numba
# target. Like the layer above it must be set before Numba is imported; a notebook's kernel inherits it.
NUMBA_AVX2_TARGET = {"NUMBA_CPU_NAME": "haswell",
                     "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,"
                                           "+movbe,+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,"
                                           "-avx512f"}
if (_os.environ.get("EFFNB_ISA", "").strip().lower() == "avx2" and "NUMBA_CPU_NAME" not in _os.environ
        and "NUMBA_CPU_FEATURES" not in _os.environ):
    from . import provenance as _provenance
    if _provenance.lowered_isa() == "avx2":
        _os.environ.update(NUMBA_AVX2_TARGET)
        if "numba" in _sys.modules:
            _sys.modules["numba"].core.config.reload_config()

# Large torch tensors on 2 MiB pages, as numpy already puts its large arrays: streaming
# weights from memory runs ~15% faster here (effnb.memory.huge_pages says whether it took).
# torch reads the variable once, at its first allocation: it counts only when effnb is
# imported before torch (the Makefile exports it for every run and test).
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.2.0"
