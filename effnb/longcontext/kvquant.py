"""A quantized KV cache format: asymmetric per-group int8 / int4 codes for keys and values.

Why: at long context the cache, not the weights, is what a decode step reads, so its bytes set the
step's time. Each token's row of each head is cut into groups of ``group`` consecutive channels; a
group keeps its min and a scale (max - min) / (2^bits - 1), and each channel the nearest code in
0 .. 2^bits - 1 (the asymmetric per-token grouping of KIVI- and QServe-style KV caches). Per-token
groups let the cache grow one row at a time without requantizing the past. int4 packs two codes a
byte: channel 2j in byte j's low nibble, 2j+1 in its high nibble. A constant group stores scale 0
and codes 0, so it comes back exactly.

Shapes for one layer: x (Hkv, n, d) fp32 -> codes uint8 (Hkv, n, d) (int8) or (Hkv, n, d // 2)
(int4), scale and min fp32 (Hkv, n, d // group). ``effnb.longcontext.ops.kv_decode`` attends over
this format without dequantizing it into memory.
"""
from __future__ import annotations

import numbers

import torch

BITS = (4, 8)


def _check_bits_group(bits, group, d: int) -> None:
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits is {bits!r}; pass 4 or 8")
    if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1:
        raise ValueError(f"group is {group!r}; pass a positive channel count that divides d = {d}")
    if d % group:
        raise ValueError(f"group = {group} does not divide d = {d}; pass a group size that divides the head size")
    if bits == 4 and d % 2:
        raise ValueError(f"d = {d} is odd; int4 packs two channels a byte, so pass an even head size or bits=8")


def quantize_kv(x: torch.Tensor, bits: int = 8, group: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, min) of x (Hkv, n, d) fp32, per (head, token, group of ``group`` channels).

    code = round((x - min) / scale) clamped to 0 .. 2^bits - 1, so |x - dequantized| <= scale / 2."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"x is {x.dtype}; pass x.float()")
    if x.dim() != 3:
        raise ValueError(f"x is {x.dim()}-D {tuple(x.shape)}; pass one layer's keys or values as (Hkv, n, d)")
    heads, n, d = x.shape
    _check_bits_group(bits, group, d)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or inf; quantize only finite keys and values")
    top = 2 ** bits - 1
    xg = x.reshape(heads, n, d // group, group)
    lo, hi = xg.amin(dim=-1), xg.amax(dim=-1)
    scale = (hi - lo) / top
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))   # constant group: x - min is 0, code 0
    codes = ((xg - lo[..., None]) / safe[..., None]).round_().clamp_(0, top).to(torch.uint8).reshape(heads, n, d)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return codes.contiguous(), scale.contiguous(), lo.contiguous()


def unpack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """One uint8 code per channel: int4's packed bytes split (low nibble first), int8's as they are."""
    if bits == 8:
        return codes
    return torch.stack([codes & 0x0F, codes >> 4], dim=-1).flatten(-2)


def dequantize_kv(codes: torch.Tensor, scale: torch.Tensor, min: torch.Tensor, bits: int = 8,
                  group: int = 32) -> torch.Tensor:
    """min + scale * code per channel: the fp32 (Hkv, n, d) tensor the codes stand for."""
    for name, t, dtype in (("codes", codes, torch.uint8), ("scale", scale, torch.float32), ("min", min, torch.float32)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != dtype:
            raise ValueError(f"{name} is {t.dtype}; pass the {dtype} tensor quantize_kv returned")
        if t.dim() != 3:
            raise ValueError(f"{name} is {t.dim()}-D {tuple(t.shape)}; pass (Hkv, n, ...) as quantize_kv returns")
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits is {bits!r}; pass 4 or 8")
    heads, n, width = codes.shape
    d = width * 8 // bits
    _check_bits_group(bits, group, d)
    if tuple(scale.shape) != (heads, n, d // group) or min.shape != scale.shape:
        raise ValueError(f"scale and min have shapes {tuple(scale.shape)}, {tuple(min.shape)}; pass "
                         f"(Hkv, n, d // group) = ({heads}, {n}, {d // group}) for {bits}-bit codes of d = {d}")
    per_channel = unpack_codes(codes, bits).float().reshape(heads, n, d // group, group)
    return (min[..., None] + scale[..., None] * per_channel).reshape(heads, n, d)


def kv_bytes(n_tokens: int, heads: int, d: int, bits: int = 8, group: int = 32) -> int:
    """Bytes one layer's keys and values (both) hold for ``n_tokens`` tokens: the codes plus an fp32
    scale and min per group, for each of the two. (The fp32 cache holds 8 * n_tokens * heads * d.)"""
    for name, value, low in (("n_tokens", n_tokens, 0), ("heads", heads, 0), ("d", d, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} is {value!r}; pass an int >= {low}")
    _check_bits_group(bits, group, d)
    rows = n_tokens * heads
    return 2 * rows * (d * bits // 8 + 2 * 4 * (d // group))
