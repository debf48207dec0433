"""The ``longcontext`` kernel family as torch ops: the schema, its fake kernel, and the call that picks a kernel.

The schema lives here, not in ``kernels/longcontext/``, so the op exists (with a fake kernel for tracing and
``opcheck``) even where the library is not built; the C++ file only registers the CPU implementation.
:func:`kv_decode` checks its inputs, then calls the C++ kernel when the family is loaded and the plain
reference of :mod:`effnb.longcontext.reference` otherwise; :func:`backend` says which ran.
"""
from __future__ import annotations

import torch

from .. import ext
from ..family import KernelOps, check_cache_heads, check_tensor
from . import reference

FAMILY = "longcontext"

SCHEMAS = {
    # q (Hq, d) against a quantized cache (effnb.longcontext.kvquant): codes uint8 (Hkv, cap, d * bits // 8),
    # scale and min fp32 (Hkv, cap, d // group), first `length` rows valid
    "longcontext_kv_decode": "(Tensor q, Tensor k_codes, Tensor k_scale, Tensor k_min, Tensor v_codes, "
                             "Tensor v_scale, Tensor v_min, int length, int bits) -> Tensor",
}


def _kv_decode_fake(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, length, bits):
    """One output row per query head: (Hq, d)."""
    torch._check(q.dim() == 2, lambda: f"q must be 2-D (Hq, d), got {q.dim()}-D")
    return q.new_empty(q.shape)


_OPS = KernelOps(FAMILY, SCHEMAS, {"longcontext_kv_decode": _kv_decode_fake}.__getitem__)
declare, available = _OPS.declare, _OPS.available
declare()  # the op exists (with its fake kernel) whether or not the library loads


def backend() -> str:
    """What the op runs: ``cpp-<isa path>`` (``cpp-avx512``, ``cpp-avx2``, ``cpp-scalar``) or ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force it


def _check_kv_decode(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, length, bits) -> None:
    """Raise a ValueError that says what to pass; the kernel then never sees a bad input."""
    check_tensor(q, "q", torch.float32, 2, "the new token's query heads as (Hq, d)")
    if isinstance(bits, bool) or bits not in (4, 8):
        raise ValueError(f"bits is {bits!r}; pass 4 or 8, the bits the cache was quantized with")
    hq, d = q.shape
    width = d * bits // 8
    if bits == 4 and d % 2:
        raise ValueError(f"q has head size d = {d}, odd; int4 codes pack two channels a byte, so d must be even")
    for which, codes, scale, minimum in (("k", k_codes, k_scale, k_min), ("v", v_codes, v_scale, v_min)):
        check_tensor(codes, f"{which}_codes", torch.uint8, 3, f"the {which} codes as (Hkv, cap, d * bits // 8)")
        check_tensor(scale, f"{which}_scale", torch.float32, 3, f"the {which} scales as (Hkv, cap, d // group)")
        check_tensor(minimum, f"{which}_min", torch.float32, 3, f"the {which} mins as (Hkv, cap, d // group)")
    hkv, cap, _ = k_codes.shape
    ng = k_scale.shape[2]
    if ng < 1 or d % ng:
        raise ValueError(f"k_scale has {ng} groups per row; pass d // group of them, for a group that divides d = {d}")
    for which, codes, scale, minimum in (("k", k_codes, k_scale, k_min), ("v", v_codes, v_scale, v_min)):
        if tuple(codes.shape) != (hkv, cap, width):
            raise ValueError(f"{which}_codes has shape {tuple(codes.shape)}; pass (Hkv, cap, d * bits // 8) = "
                             f"({hkv}, {cap}, {width}) for {bits}-bit codes of d = {d}")
        if tuple(scale.shape) != (hkv, cap, ng) or minimum.shape != scale.shape:
            raise ValueError(f"{which}_scale and {which}_min have shapes {tuple(scale.shape)}, "
                             f"{tuple(minimum.shape)}; pass (Hkv, cap, d // group) = ({hkv}, {cap}, {ng}) "
                             "for both, as quantize_kv returns them")
    length = check_cache_heads(hq, hkv, length, cap)


def kv_decode(q: torch.Tensor, k_codes: torch.Tensor, k_scale: torch.Tensor, k_min: torch.Tensor,
              v_codes: torch.Tensor, v_scale: torch.Tensor, v_min: torch.Tensor, length: int,
              bits: int) -> torch.Tensor:
    """One new token's dense attention over a quantized KV cache, without an fp32 copy of it.

    q (Hq, d): the token's query heads, already rotated; the cache in :mod:`effnb.longcontext.kvquant`'s
    format: codes uint8 (Hkv, cap, d) at bits=8 or (Hkv, cap, d // 2) at bits=4, scale and min fp32
    (Hkv, cap, d // group), first ``length`` rows valid. Returns softmax(q k^T / sqrt(d)) v (Hq, d) over
    the dequantized rows; query head j uses kv head j // (Hq // Hkv)."""
    _check_kv_decode(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, length, bits)
    if not available():
        return reference.kv_decode_ref(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, length, bits)
    return torch.ops.effnb.longcontext_kv_decode(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min,
                                                 int(length), int(bits))
