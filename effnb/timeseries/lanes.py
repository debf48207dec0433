"""W float32 or int32 lanes in one vector register, for Numba kernels that put W series side by side.

Numba vectorises only an innermost loop over contiguous elements and keeps
loop-carried counters in registers only as scalars; these intrinsics hand it
LLVM's vector types instead. W is one register of the CPU Numba compiles for:
16 lanes (512 bits) where that CPU has AVX-512, else 8 (256 bits; two 128-bit
registers on SSE-only CPUs). Numba's on-disk cache keys a kernel by its source
and by that CPU's name and features, so a build for one width is never loaded
for the other. ``empty`` gives arrays whose lanes start on a register-sized
boundary: Numba aligns its arrays to 32 bytes only, and with 16 lanes a load
from such an array would straddle two cache lines.

Numba's on-disk cache checks only the file of a cached kernel, not this one,
whose code it inlines: after editing this module, touch ``minirocket.py`` (or
delete its ``__pycache__``) so that its kernels compile again.
"""
from __future__ import annotations

import operator

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.extending import intrinsic, models, overload, register_model


def numba_features() -> set[str]:
    """The features of the CPU Numba compiles for (``NUMBA_CPU_FEATURES``, as Numba reads it, else this CPU's),
    in LLVM's spelling (``avx512vnni``): the same features that key Numba's on-disk cache."""
    from numba.core import config
    features = config.CPU_FEATURES
    if features is None:
        features = binding.get_host_cpu_features().flatten()
    return {f[1:] for f in features.split(",") if f.startswith("+")}


def numba_has_avx512() -> bool:
    """Whether Numba compiles for a CPU with AVX-512."""
    return "avx512f" in numba_features()


def numba_isa_level() -> str:
    """The SIMD level of the code Numba compiles, in ``provenance.isa_level``'s names: the CPU's level unless
    ``NUMBA_CPU_FEATURES`` asks for less (an AVX2 run on an AVX-512 machine must not be named after the CPU)."""
    have = numba_features()
    if "avx512f" in have:
        return "avx512vnni" if "avx512vnni" in have else "avx512"
    return "avx2" if "avx2" in have else "neon" if "neon" in have else "generic"


W = 16 if numba_has_avx512() else 8   # series per vector
if W == 16:
    binding.initialize_native_asmparser()   # count_above's inline assembly
_f32_lanes_ir = ir.VectorType(ir.FloatType(), W)
_i32_lanes_ir = ir.VectorType(ir.IntType(32), W)


class _Lanes(types.Type):
    """W lanes of float32 (a kernel's output) or int32 (PPV counters) held in one register."""

    def __init__(self, kind: str):
        self.kind = kind
        super().__init__(name=f"{kind}x{W}")


f32_lanes, i32_lanes = _Lanes("f32"), _Lanes("i32")


@register_model(_Lanes)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _f32_lanes_ir if fe_type.kind == "f32" else _i32_lanes_ir)


def _lanes_ptr(context, builder, arrty, arr, i):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [i]), (_f32_lanes_ir if arrty.dtype == types.float32 else _i32_lanes_ir)
                           .as_pointer())


@intrinsic
def load(typingctx, arr, i):
    """arr[i:i+W] (a float32 or int32 array) as one vector."""
    def codegen(context, builder, sig, args):
        return builder.load(_lanes_ptr(context, builder, sig.args[0], *args), align=4)
    return (f32_lanes if arr.dtype == types.float32 else i32_lanes)(arr, types.intp), codegen


@intrinsic
def store(typingctx, arr, i, v):
    """arr[i:i+W] = v"""
    def codegen(context, builder, sig, args):
        builder.store(args[2], _lanes_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()
    return types.void(arr, types.intp, v), codegen


@intrinsic
def splat(typingctx, x):
    """x in every lane (float32)."""
    def codegen(context, builder, sig, args):
        s = context.cast(builder, args[0], sig.args[0], types.float32)
        v = builder.insert_element(ir.Constant(_f32_lanes_ir, ir.Undefined), s, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
    return f32_lanes(x), codegen


@intrinsic
def zeros(typingctx):
    """W counters at zero."""
    def codegen(context, builder, sig, args):
        return ir.Constant(_i32_lanes_ir, [0] * W)
    return i32_lanes(), codegen


@intrinsic
def count_above(typingctx, n, v, b):
    """n + (v > b), lane by lane; integer counters leave the float adders to the convolution. On 256-bit
    registers a comparison gives an all-ones mask, -1 as an integer, so n - mask: two instructions. AVX-512
    compares into a mask register, and LLVM turns any IR for this (a select of n + 1 included) into a
    widening of that mask and a subtract, three instructions; so there it is one masked subtract of -1,
    written as inline assembly. In development on a Zen 5 that made the MiniRocket transform about a tenth
    faster (length 1024, one thread)."""
    def codegen(context, builder, sig, args):
        n, v, b = args
        above = builder.fcmp_ordered(">", v, b)
        if W != 16:
            return builder.sub(n, builder.sext(above, _i32_lanes_ir))
        mask = builder.bitcast(above, ir.IntType(16))
        fty = ir.FunctionType(_i32_lanes_ir, [_i32_lanes_ir, ir.IntType(16), _i32_lanes_ir])
        masked_sub = ir.InlineAsm(fty, "vpsubd $3, $0, $0 {$2}", "=v,0,^Yk,v", side_effect=False)
        return builder.call(masked_sub, [n, mask, ir.Constant(_i32_lanes_ir, [-1] * W)])
    return i32_lanes(n, v, b), codegen


@intrinsic
def proportion(typingctx, n, m):
    """n / m per lane, divided in float64 and rounded to float32: the proportion of positive values."""
    def codegen(context, builder, sig, args):
        f64_lanes = ir.VectorType(ir.DoubleType(), W)
        m = context.cast(builder, args[1], sig.args[1], types.float64)
        mv = builder.insert_element(ir.Constant(f64_lanes, ir.Undefined), m, ir.Constant(ir.IntType(32), 0))
        mv = builder.shuffle_vector(mv, mv, ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))
        return builder.fptrunc(builder.fdiv(builder.sitofp(args[0], f64_lanes), mv), _f32_lanes_ir)
    return f32_lanes(n, m), codegen


@intrinsic
def store_transposed(typingctx, src, i, dst, j, stride, rows):
    """The W x W block whose row r is src[i + r W : i + (r + 1) W], transposed: its first ``rows`` columns
    stored as rows of W floats at dst[j + c stride] (c < rows). Turns W finished features, each W series
    wide, into W contiguous features of each series' output row: one shuffle network (W log2 W two-register
    shuffles) and a vector store per series, where copying element by element took a third of a short
    MiniRocket call."""
    def codegen(context, builder, sig, args):
        src, i, dst, j, stride, rows = args
        step = ir.Constant(i.type, W)
        vecs = []
        for r in range(W):
            vecs.append(builder.load(_lanes_ptr(context, builder, sig.args[0], src, i), align=4))
            i = builder.add(i, step)
        half = W // 2
        lo = ir.Constant(ir.VectorType(ir.IntType(32), W), [x for k in range(half) for x in (k, k + W)])
        hi = ir.Constant(ir.VectorType(ir.IntType(32), W), [x for k in range(half, W) for x in (k, k + W)])
        for _ in range(W.bit_length() - 1):      # log2(W) rounds of interleaving rows k and k + W/2
            vecs = [v for k in range(half) for v in (builder.shuffle_vector(vecs[k], vecs[k + half], lo),
                                                        builder.shuffle_vector(vecs[k], vecs[k + half], hi))]
        for c in range(W):
            with builder.if_then(builder.icmp_signed("<", ir.Constant(rows.type, c), rows), likely=True):
                at = builder.add(j, builder.mul(stride, ir.Constant(stride.type, c)))
                builder.store(vecs[c], _lanes_ptr(context, builder, sig.args[2], dst, at), align=4)
        return context.get_dummy_value()
    return types.void(src, types.intp, dst, types.intp, types.intp, types.intp), codegen


def _lanes_op(name):
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(*args, flags=("fast",))
        return f32_lanes(a, b), codegen
    return op


_vadd, _vsub, _vmul = _lanes_op("fadd"), _lanes_op("fsub"), _lanes_op("fmul")


def _on_lanes(fn):
    def typer(a, b):
        if a is f32_lanes and b is f32_lanes:
            return lambda a, b: fn(a, b)
    return typer


overload(operator.add)(_on_lanes(_vadd))
overload(operator.sub)(_on_lanes(_vsub))
overload(operator.mul)(_on_lanes(_vmul))


@njit(inline="always")
def empty(n, dtype):
    """An uninitialised array of n elements of ``dtype`` (4 bytes wide) whose first element sits on a
    W * 4-byte boundary, so every load at a multiple of W stays within one cache line."""
    raw = np.empty(n + W, dtype=dtype)
    skip = (-(raw.ctypes.data // 4)) % W
    return raw[skip:skip + n]
