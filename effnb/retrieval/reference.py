"""Plain torch MaxSim: what the kernels must compute, and the padded batch a user would write.

The loop references run where the C++ family is not built (the fallback) and
are what the tests compare the kernels with; nothing here is tuned except
:func:`maxsim_padded`, the fastest plain-torch form, which the benchmark races.
"""
from __future__ import annotations

import torch


def _rows(offsets: torch.Tensor, c: int) -> tuple[int, int]:
    return int(offsets[c]), int(offsets[c + 1])


def maxsim_f32(q, vectors, offsets, cand) -> torch.Tensor:
    """What ``maxsim_f32`` computes: per candidate ``(q @ v.T).max(dim=1).values.sum()``, 0 when empty."""
    out = torch.zeros(len(cand), dtype=torch.float32)
    for n, c in enumerate(cand.tolist()):
        a, b = _rows(offsets, c)
        if b > a:
            out[n] = (q @ vectors[a:b].T).max(dim=1).values.sum()
    return out


def maxsim_i8(q8, qscale, codes, vscale, offsets, cand) -> torch.Tensor:
    """What ``maxsim_i8`` computes, step for step: exact integer dots (in float64, exact at these sizes)
    rounded to fp32, times ``qscale_i * vscale_j`` (one fp32 product), max over j, sum over i."""
    out = torch.zeros(len(cand), dtype=torch.float32)
    for n, c in enumerate(cand.tolist()):
        a, b = _rows(offsets, c)
        if b > a:
            dots = (q8.double() @ codes[a:b].double().T).float()
            scores = dots * (qscale[:, None] * vscale[None, a:b])
            out[n] = scores.max(dim=1).values.sum()
    return out


def maxsim(q: torch.Tensor, index, cand: torch.Tensor) -> torch.Tensor:
    """The per-document loop on an index (int8 dequantized): the plainest way to write it."""
    v = index.dequantized()
    return maxsim_f32(q, v, index.offsets, cand)


def pad_candidates(index, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates' vectors padded to the longest one, fp32 [C, L, d], and which rows are real [C, L]."""
    start, lens = index.offsets[cand], index.offsets[cand + 1] - index.offsets[cand]
    width = int(lens.max()) if len(cand) else 0
    pos = torch.arange(width)
    real = pos[None, :] < lens[:, None]
    rows = (start[:, None] + pos[None, :]).clamp_max(max(index.vectors.shape[0] - 1, 0))
    v = index.vectors[rows] if width else index.vectors.new_zeros(len(cand), 0, index.dim)
    if index.scales is not None:
        v = v.to(torch.float32) * index.scales[rows][..., None]
    return v, real


def maxsim_padded(q: torch.Tensor, index, cand: torch.Tensor) -> torch.Tensor:
    """MaxSim as one batched matmul: gather and pad the candidates (per call: they change per query),
    ``[C, L, d] @ [d, m]``, padding masked to -inf, max over L, sum over m; empty documents score 0."""
    v, real = pad_candidates(index, cand)
    if v.shape[1] == 0:
        return torch.zeros(len(cand), dtype=torch.float32)
    s = torch.matmul(v, q.T)                                   # [C, L, m]
    s.masked_fill_(~real[:, :, None], float("-inf"))
    best = s.amax(dim=1)                                       # [C, m]
    return torch.where(real.any(dim=1), best.sum(dim=1), torch.zeros(()))
