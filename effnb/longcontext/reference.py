"""The plain reference the quantized-cache decode kernel is tested against: dequantize in float64, then
softmax attention. It reads the format itself rather than through :mod:`kvquant`, so it also checks that."""
from __future__ import annotations

import math

import torch


def _dequantize_ref(codes, scale, minimum, length: int, bits: int) -> torch.Tensor:
    """The first ``length`` rows of a quantized cache (effnb.longcontext.kvquant's format) as float64:
    channel c of a row is min[c // group] + scale[c // group] * code[c], int4 codes low nibble first."""
    codes = codes[:, :length].long()
    if bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=-1).flatten(-2)
    group = codes.shape[-1] // scale.shape[-1]
    scale = scale[:, :length].double().repeat_interleave(group, dim=-1)
    minimum = minimum[:, :length].double().repeat_interleave(group, dim=-1)
    return minimum + scale * codes.double()


def kv_decode_ref(q, k_codes, k_scale, k_min, v_codes, v_scale, v_min, length: int, bits: int) -> torch.Tensor:
    """Softmax attention of each query head (Hq, d) over its kv head's first ``length`` dequantized
    rows, scores scaled by 1/sqrt(d); query head j uses kv head j // (Hq // Hkv)."""
    hq, d = q.shape
    hkv = k_codes.shape[0]
    group = hq // hkv
    k = _dequantize_ref(k_codes, k_scale, k_min, length, bits)
    v = _dequantize_ref(v_codes, v_scale, v_min, length, bits)
    out = torch.zeros(hq, d, dtype=torch.double)
    for h in range(hkv):
        qh = q[h * group:(h + 1) * group].double()
        att = torch.softmax(qh @ k[h].t() / math.sqrt(d), dim=-1)
        out[h * group:(h + 1) * group] = att @ v[h]
    return out.float()
