"""STREAM-style bandwidth probes: the C++ ``stream`` kernel family's schemas, and the
same kernels in Numba, with numpy references for the tests.

The same four kernels as ``kernels/stream/stream.cpp`` (read = sum, copy, scale,
triad), written as parallel Numba loops. The read is a ``prange`` reduction.
For the writes each thread gets one contiguous slice (``prange`` over slices,
not elements) whose borders fall on cache lines, and large slices are written
with streaming stores, as memcpy does (see below): without them a Numba copy
stays well below memcpy's speed.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

KERNELS = ("read", "copy", "scale", "triad")
_BYTES_PER_ELEMENT = {"read": 4, "copy": 8, "scale": 8, "triad": 12}
_LINE = 16  # fp32 per 64-byte cache line


def bytes_moved(kernel: str, n: int) -> int:
    """Bytes a probe must move for ``n`` fp32 elements: read 4n, copy 8n, scale 8n, triad 12n.

    This is STREAM's convention: each array read or written counts once. An
    ordinary store first reads its destination line into the cache
    (write-allocate), so the memory bus really carries 12n for copy/scale and
    16n for triad unless the kernel uses non-temporal (streaming) stores, as
    memcpy and ``kernels/stream.cpp`` do for large arrays. The convention thus
    undercounts traffic for write-allocating kernels: their GB/s reads lower
    than the bus achieved. We keep it because it is what every STREAM number
    in the literature uses, and it is the useful number for "how long will
    moving these bytes take".
    """
    if kernel not in _BYTES_PER_ELEMENT:
        raise ValueError(f"unknown stream kernel {kernel!r}; pick one of {KERNELS}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _BYTES_PER_ELEMENT[kernel] * int(n)


def check(*arrays: np.ndarray) -> None:
    """Fail early and clearly: the probes take equal-length, contiguous 1-D float32 arrays."""
    n = None
    for i, x in enumerate(arrays):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"argument {i} is a {type(x).__name__}; pass a numpy float32 array")
        if x.dtype != np.float32:
            raise TypeError(f"argument {i} has dtype {x.dtype}; pass x.astype(np.float32)")
        if x.ndim != 1 or not x.flags.c_contiguous:
            raise ValueError(f"argument {i} must be 1-D and contiguous; pass np.ascontiguousarray(x).ravel()")
        if n is not None and x.size != n:
            raise ValueError(f"arrays differ in length ({n} vs {x.size}); pass equal-length arrays")
        n = x.size


# ---------------------------------------------------------------- streaming stores
#
# A plain store loop (b[i] = a[i]) makes the CPU read each destination line
# before overwriting it (write-allocate), so it moves 12 bytes per element, not
# 8, and loses to memcpy, which uses non-temporal stores for large arrays.
# Numba has no syntax for those, so three tiny intrinsics emit them: each
# handles 8 floats (one 256-bit vector; two 128-bit ones on SSE-only CPUs,
# and a plain store where the ISA has none) with LLVM's !nontemporal hint.

_VEC = 8
_f32 = ir.FloatType()
_vec = ir.VectorType(_f32, _VEC)
_STREAM_MIN = 1 << 20  # elements per thread; below this the destination fits in cache anyway


def _vptr(context, builder, arrty, arr, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.bitcast(builder.gep(ary.data, [idx]), _vec.as_pointer())


def _vload(context, builder, arrty, arr, idx):
    return builder.load(_vptr(context, builder, arrty, arr, idx), align=4, typ=_vec)


def _splat(builder, s):
    v = ir.Constant(_vec, ir.Undefined)
    for k in range(_VEC):
        v = builder.insert_element(v, s, ir.Constant(ir.IntType(32), k))
    return v


def _nt_store(context, builder, arrty, arr, idx, value):
    """Store 8 floats at arr[idx:idx+8] (32-byte aligned) bypassing the cache."""
    st = builder.store(value, _vptr(context, builder, arrty, arr, idx), align=32)
    st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
    return context.get_dummy_value()


@intrinsic
def _nt_copy8(typingctx, out, x, i):
    """out[i:i+8] = x[i:i+8]"""
    def codegen(context, builder, sig, args):
        o, a, idx = args
        return _nt_store(context, builder, sig.args[0], o, idx, _vload(context, builder, sig.args[1], a, idx))
    return types.void(out, x, types.intp), codegen


@intrinsic
def _nt_scale8(typingctx, out, x, i, s):
    """out[i:i+8] = s * x[i:i+8]"""
    def codegen(context, builder, sig, args):
        o, a, idx, sc = args
        v = builder.fmul(_splat(builder, sc), _vload(context, builder, sig.args[1], a, idx))
        return _nt_store(context, builder, sig.args[0], o, idx, v)
    return types.void(out, x, types.intp, types.float32), codegen


@intrinsic
def _nt_triad8(typingctx, out, x, y, i, s):
    """out[i:i+8] = x[i:i+8] + s * y[i:i+8]"""
    def codegen(context, builder, sig, args):
        o, b, c, idx, sc = args
        sy = builder.fmul(_splat(builder, sc), _vload(context, builder, sig.args[2], c, idx))
        v = builder.fadd(_vload(context, builder, sig.args[1], b, idx), sy)
        return _nt_store(context, builder, sig.args[0], o, idx, v)
    return types.void(out, x, y, types.intp, types.float32), codegen


@intrinsic
def _misaligned(typingctx, arr, i):
    """Is &arr[i] off a 32-byte boundary? (where the streaming part may start)"""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        addr = builder.ptrtoint(builder.gep(ary.data, [args[1]]), ir.IntType(64))
        low = builder.and_(addr, ir.Constant(ir.IntType(64), 31))
        return builder.icmp_unsigned("!=", low, ir.Constant(ir.IntType(64), 0))
    return types.boolean(arr, types.intp), codegen


@intrinsic
def _store_fence(typingctx):
    """Streaming stores are weakly ordered: make them visible before the slice ends."""
    def codegen(context, builder, sig, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


# ---------------------------------------------------------------- Numba kernels

@njit(cache=True)
def _slice(n, t, nt):
    """Thread t's slice [lo, hi) of n elements, borders on cache-line multiples."""
    lines = (n + _LINE - 1) // _LINE
    return min(n, (lines * t // nt) * _LINE), min(n, (lines * (t + 1) // nt) * _LINE)


@njit(parallel=True, fastmath=True, cache=True)
def _read(a):
    # prange over elements: Numba gives each thread one static chunk, and
    # fastmath lets LLVM keep several vector accumulators. The float64
    # accumulator keeps the sum accurate; converting costs nothing next to memory.
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s


@njit(parallel=True, fastmath=True, cache=True)
def _copy(a, b, nt):
    for t in prange(nt):
        lo, hi = _slice(a.size, t, nt)
        i = lo
        if hi - lo >= _STREAM_MIN:
            while i < hi and _misaligned(b, i):
                b[i] = a[i]
                i += 1
            while i + _VEC <= hi:
                _nt_copy8(b, a, i)
                i += _VEC
            _store_fence()
        for j in range(i, hi):
            b[j] = a[j]


@njit(parallel=True, fastmath=True, cache=True)
def _scale(a, b, s, nt):
    for t in prange(nt):
        lo, hi = _slice(a.size, t, nt)
        i = lo
        if hi - lo >= _STREAM_MIN:
            while i < hi and _misaligned(b, i):
                b[i] = s * a[i]
                i += 1
            while i + _VEC <= hi:
                _nt_scale8(b, a, i, s)
                i += _VEC
            _store_fence()
        for j in range(i, hi):
            b[j] = s * a[j]


@njit(parallel=True, fastmath=True, cache=True)
def _triad(a, b, c, s, nt):
    for t in prange(nt):
        lo, hi = _slice(a.size, t, nt)
        i = lo
        if hi - lo >= _STREAM_MIN:
            while i < hi and _misaligned(a, i):
                a[i] = b[i] + s * c[i]
                i += 1
            while i + _VEC <= hi:
                _nt_triad8(a, b, c, i, s)
                i += _VEC
            _store_fence()
        for j in range(i, hi):
            a[j] = b[j] + s * c[j]


def read(a: np.ndarray) -> float:
    """sum(a), touching each element once: the read-bandwidth probe."""
    check(a)
    return float(_read(a))


def copy(a: np.ndarray, b: np.ndarray) -> None:
    """b[:] = a."""
    check(a, b)
    _copy(a, b, numba.get_num_threads())


def scale(a: np.ndarray, b: np.ndarray, s: float) -> None:
    """b[:] = s * a."""
    check(a, b)
    _scale(a, b, np.float32(s), numba.get_num_threads())


def triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float) -> None:
    """a[:] = b + s * c (STREAM's triad; the first argument is written, as in the C++ op)."""
    check(a, b, c)
    _triad(a, b, c, np.float32(s), numba.get_num_threads())


# ---------------------------------------------------------------- numpy references

def reference_read(a: np.ndarray) -> float:
    return float(np.sum(a, dtype=np.float64))


def reference_scale(a: np.ndarray, b: np.ndarray, s: float) -> None:
    np.multiply(a, np.float32(s), out=b)


def reference_triad(a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float) -> None:
    np.add(b, np.float32(s) * c, out=a)


# ---------------------------------------------------------------- the C++ family

FAMILY = "stream"
SCHEMAS = {  # "(a!)" marks the argument each op writes in place
    "stream_read": "(Tensor a) -> float",
    "stream_copy": "(Tensor a, Tensor(a!) b) -> ()",
    "stream_scale": "(Tensor a, Tensor(a!) b, float s) -> ()",
    "stream_triad": "(Tensor(a!) a, Tensor b, Tensor c, float s) -> ()",
    "stream_peak_fma": "(Tensor(a!) out, int iters) -> ()",   # kernels/stream/peak.cpp
    "stream_fma_width": "(Tensor like) -> int",               # FMA lanes x chains per iteration
}


def cpp_ops():
    """``torch.ops.effnb`` with the stream family loaded, or None (say why with ``ext.status('stream')``)."""
    import torch

    from . import ext
    _declare()
    return torch.ops.effnb if ext.load(FAMILY) else None


def _declare():
    import torch

    from . import ext
    if FAMILY in ext._libraries:
        return
    ext.declare(FAMILY, SCHEMAS)
    for name in ("stream_copy", "stream_scale", "stream_triad", "stream_peak_fma"):  # in-place writers
        torch.library.register_fake(f"effnb::{name}")(lambda *args: None)


def peak_fma(threads: int, iters: int = 2_000_000):
    """(seconds callable, flops per call) of the register-blocked FMA probe, or None without the C++ family."""
    import torch
    ops = cpp_ops()
    if ops is None:
        return None
    out = torch.empty(16 * max(threads, 1))
    flops = 2.0 * iters * ops.stream_fma_width(out) * threads
    return (lambda: ops.stream_peak_fma(out, iters)), flops
