"""Plain torch references for every kernel: the same quantized numbers, float64 (or fp32) arithmetic.

Why: every kernel test compares against these, and without a C++ build they
are what ``linear`` and ``dgq_linear`` run.
"""
from __future__ import annotations

import torch

from .formats import DGQPacked, Packed, dequantize, dgq_dequantize


def quantize_acts(x: torch.Tensor, block: int, qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row and block of ``block`` values, exactly as the kernel does it.

    Returns (q int8 [M, K], scales fp32 [M, K/block]); K must be a multiple of block. ``qmax=7``
    gives the 4-bit codes of w1a4-binary (in [-7, 7], scale max|x| / 7).
    """
    m, k = x.shape
    xb = x.reshape(m, k // block, block)
    amax = xb.abs().amax(-1)
    # qmax / amax as one IEEE division, like the kernel (`127.0 / tensor` in torch is
    # reciprocal-then-multiply: two roundings, and now and then a different int8 code)
    inv = torch.where(amax > 0, torch.full_like(amax, float(qmax)) / amax, torch.zeros_like(amax))
    q = torch.clamp(torch.round(xb * inv[..., None]), -qmax, qmax)
    return q.reshape(m, k).to(torch.int8), amax / float(qmax)


def prep_x(x: torch.Tensor, p) -> tuple[torch.Tensor, tuple]:
    """x [..., K] -> (contiguous fp32 [rows, K], the leading shape), or a clear error."""
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a torch tensor")
    if x.shape[-1] != p.k:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects K={p.k}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, p.k).to("cpu", torch.float32).contiguous(), lead


def _int8_acts(xp: torch.Tensor, block: int, dtype: torch.dtype) -> torch.Tensor:
    """Activations quantized per row and block, then decoded back to ``dtype``."""
    q, s = quantize_acts(xp, block)
    m, k = q.shape
    return (q.to(dtype).reshape(m, k // block, block) * s.to(dtype)[..., None]).reshape(m, k)


def act_block(p: Packed) -> int:
    """Activations per scale: the whole (padded) token for w8a8, ternary and binary, the group for w4a8."""
    return p.kp if p.scheme.wbits == 8 or p.scheme.kind else p.group


def linear_ref(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """Reference ``x @ W^T`` in float64 arithmetic on the same quantized numbers as the kernel."""
    x2, lead = prep_x(x, p)
    xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
    w = torch.nn.functional.pad(dequantize(p), (0, p.kp - p.k)).double()
    if p.scheme.abits == 4:
        q, s = quantize_acts(xp, p.kp, qmax=7)
        xd = q.double() * s.double()
    elif p.scheme.a8:
        xd = _int8_acts(xp, act_block(p), torch.float64)
    else:
        xd = xp.double()
    return (xd @ w.T).float().reshape(*lead, p.n)


def fake_linear(x: torch.Tensor, p: Packed, w: torch.Tensor | None = None) -> torch.Tensor:
    """The quantized arithmetic of ``linear`` in fp32 torch ops (any batch size, fast)."""
    x2, lead = prep_x(x, p)
    w = dequantize(p) if w is None else w
    if p.scheme.abits == 4:
        xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
        q, s = quantize_acts(xp, p.kp, qmax=7)
        x2 = (q.float() * s)[:, :p.k]
    elif p.scheme.a8:
        xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
        x2 = _int8_acts(xp, act_block(p), torch.float32)[:, :p.k]
    return torch.nn.functional.linear(x2, w).reshape(*lead, p.n)


def dgq_linear_ref(x: torch.Tensor, p: DGQPacked) -> torch.Tensor:
    """Reference in float64: int8 activations with one scale per token, times the DGQ weight."""
    if not isinstance(p, DGQPacked):
        raise TypeError("p must come from effnb.quant.dgq_pack(weight, group)")
    x2, lead = prep_x(x, p)
    xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
    q, sx = quantize_acts(xp, p.kp)
    w = torch.nn.functional.pad(dgq_dequantize(p), (0, p.kp - p.k)).double()
    return ((q.double() * sx.double()) @ w.T).float().reshape(*lead, p.n)
