"""The quant kernel family: op schemas (declared here, once), fake kernels, and the calls.

Why schemas in Python: the ops exist, get fake kernels and pass ``opcheck``
whether or not ``kernels/quant/quant.cpp`` is built; the C++ file only
registers implementations. Without a build, :func:`linear` and
:func:`dgq_linear` run the torch references, and :func:`backend` says so.
"""
from __future__ import annotations

import torch

from .. import ext
from .formats import DGQPacked, Packed, to_panels
from .reference import dgq_linear_ref, linear_ref, prep_x

FAMILY = "quant"
SCHEMAS = {  # x is fp32 [M, K]; every op returns fp32 [M, N], N the weight's rows
    "quant_w8_linear": "(Tensor x, Tensor q, Tensor scales, bool a8) -> Tensor",
    "quant_w4a8_panels": "(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group, int n) -> Tensor",
    "quant_a8_layout": "(Tensor probe) -> str",   # the W8A8/W4A8 weight layout of this build: panels or rows
    "quant_w4_linear": "(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group, bool a8) -> Tensor",
    "quant_dgq_linear": "(Tensor x, Tensor packed, Tensor kint, Tensor scale, int group) -> Tensor",
    "quant_peak_int8": "(Tensor(a!) out, int iters) -> ()",      # kernels/quant/peak.cpp
    "quant_peak_chains": "(Tensor out) -> int",
    "quant_peak_lanes": "(Tensor out) -> int",                   # int32 lanes of one step: 8 or 16
    "quant_ternary_linear": "(Tensor x, Tensor packed, Tensor scales) -> Tensor",   # kernels/quant/ternary.cpp
    "quant_binary_linear": "(Tensor x, Tensor packed, Tensor scales) -> Tensor",    # kernels/quant/binary.cpp
    "quant_binary_path": "(Tensor probe) -> str",   # the popcount path binary.cpp was built with
}

_loaded: list[bool] = []   # the answer of available(), asked once per process


def _output(x: torch.Tensor, n: int) -> torch.Tensor:
    """What every op returns for N output columns: fp32 [M, N]."""
    return x.new_empty((x.shape[0], n), dtype=torch.float32)


def _declare() -> None:
    if FAMILY in ext._libraries:
        return
    ext.declare(FAMILY, SCHEMAS)
    # N is the scales' length for int8 (rows or panels), the packed rows otherwise, an argument for int4 panels
    torch.library.register_fake("effnb::quant_w8_linear")(lambda x, q, scales, a8: _output(x, scales.shape[0]))
    torch.library.register_fake("effnb::quant_w4_linear")(
        lambda x, packed, scales, zeros, group, a8: _output(x, packed.shape[0]))
    torch.library.register_fake("effnb::quant_w4a8_panels")(lambda x, packed, scales, zeros, group, n: _output(x, n))
    torch.library.register_fake("effnb::quant_dgq_linear")(
        lambda x, packed, kint, scale, group: _output(x, packed.shape[0]))
    torch.library.register_fake("effnb::quant_peak_int8")(lambda out, iters: None)
    torch.library.register_fake("effnb::quant_ternary_linear")(
        lambda x, packed, scales: _output(x, packed.shape[0]))
    torch.library.register_fake("effnb::quant_binary_linear")(lambda x, packed, scales: _output(x, packed.shape[0]))


def available() -> bool:
    """True when the C++ quant ops are loaded in this process (decided once; never compiles)."""
    if not _loaded:
        _declare()
        _loaded.append(ext.load(FAMILY))
    return _loaded[0]


def cpp_ops():
    """``torch.ops.effnb`` with the quant family loaded, or None (``ext.status('quant')`` says why)."""
    return torch.ops.effnb if available() else None


def backend() -> str:
    """What runs: ``cpp-<isa path>`` (avx512-vnni, avx-vnni, avx2-emulated-vnni, avx2, scalar) or
    ``torch-fallback``; every benchmark row and claim names it."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK


def linear(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """``x @ W^T`` for a packed weight; x [..., K] in any float dtype, result fp32 [..., N].

    Uses the C++ kernel when loaded (:func:`available`), the torch reference otherwise.
    """
    if not isinstance(p, Packed):
        raise TypeError("p must come from effnb.quant.quantize(weight, scheme)")
    if (type(x) is torch.Tensor and x.dim() == 2 and x.dtype == torch.float32 and x.is_cpu and x.shape[1] == p.k
            and x.is_contiguous()):
        x2, lead = x, None   # already what the kernels read: 2.5 us less per call than prep_x (measured at 32 rows)
    else:
        x2, lead = prep_x(x, p)
    if not available():
        y = linear_ref(x2, p)
        return y if lead is None else y.reshape(*lead, p.n)
    ops = torch.ops.effnb
    if p.scheme.kind == "ternary":
        y = ops.quant_ternary_linear(x2, p.q, p.scales)
    elif p.scheme.kind == "binary":
        y = ops.quant_binary_linear(x2, p.q, p.scales)
    elif p.scheme.wbits == 8:
        y = ops.quant_w8_linear(x2, p.q, p.scales, p.scheme.a8)
    elif p.layout == "panels":
        y = ops.quant_w4a8_panels(x2, p.q, p.scales, p.zeros, p.group, p.n)
    else:
        y = ops.quant_w4_linear(x2, p.q, p.scales, p.zeros, p.group, p.scheme.a8)
    return y if lead is None else y.reshape(*lead, p.n)


def a8_layout() -> str:
    """The weight layout this build's W8A8 and W4A8 kernels read fastest: ``panels`` (AVX-512 VNNI: 32 output
    columns by 4 weights, packed once by :func:`prepack`) or ``rows`` (every other path, and the reference)."""
    return torch.ops.effnb.quant_a8_layout(torch.empty(0)) if available() else "rows"


def prepack(p: Packed) -> Packed:
    """``p`` in the layout this build's kernel reads fastest, packed once (fbgemm's prepacking, done at load):
    a W8A8 or W4A8 weight becomes panels where :func:`a8_layout` says so; anything else comes back as it is."""
    if not isinstance(p, Packed):
        raise TypeError("p must come from effnb.quant.quantize(weight, scheme)")
    if p.scheme.a8 and not p.scheme.kind and p.layout == "rows" and a8_layout() == "panels":
        return to_panels(p)
    return p


def binary_path() -> str:
    """The popcount path of the w1a4-binary kernel in this build: ``avx512-vpopcntdq``, ``avx2-pshufb``
    (nibble lookup), ``scalar`` (one popcnt per 64-bit word), or ``torch-fallback``. The integer
    dot-product path that :func:`backend` names is the one of the other kernels (ternary included)."""
    if not available():
        return ext.FALLBACK
    return torch.ops.effnb.quant_binary_path(torch.empty(0))


def dgq_linear(x: torch.Tensor, p: DGQPacked) -> torch.Tensor:
    """``x @ W^T`` with DGQ's W4A8 kernel (``torch.ops.effnb.quant_dgq_linear``): the integer group
    scales multiply inside the integer pipeline, so nothing is converted to fp32 per group."""
    if not isinstance(p, DGQPacked):
        raise TypeError("p must come from effnb.quant.dgq_pack(weight, group)")
    x2, lead = prep_x(x, p)
    if not available():
        return dgq_linear_ref(x2, p).reshape(*lead, p.n)
    return torch.ops.effnb.quant_dgq_linear(x2, p.q, p.kint, p.scale, p.group).reshape(*lead, p.n)


def peak_int8(iters: int = 4_000_000, repeats: int = 5) -> float | None:
    """GOP/s (2 per 8-bit multiply-add) of this build's integer dot-product step alone, on the threads
    effnb.threads set, best of ``repeats``: the roof our W8A8/W4A8 kernels can reach. None without
    the C++ family."""
    if not available():
        return None
    threads = ext.omp_threads(FAMILY)
    out = torch.empty(16 * threads, dtype=torch.int32)
    ops = torch.ops.effnb
    ops.quant_peak_int8(out, 1000)  # wakes the OpenMP pool
    best = min(_timed(lambda: ops.quant_peak_int8(out, iters)) for _ in range(repeats))
    pairs = 4 * ops.quant_peak_lanes(out) * ops.quant_peak_chains(out)   # byte pairs per iteration
    return 2.0 * pairs * iters * threads / best / 1e9


def _timed(fn) -> float:
    import time
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
