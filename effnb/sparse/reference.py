"""Plain torch references: what every layout stands for and what every kernel must compute.

They run where the C++ family is not built (the fallback) and are what the
tests compare the kernels with; nothing here is tuned.
"""
from __future__ import annotations

import torch


def to_dense(sw) -> torch.Tensor:
    """The (N x K) fp32 weight a :class:`~effnb.sparse.formats.SparseWeight` stands for."""
    n, k = sw.shape
    if sw.pattern == "dense":
        g = sw.values.shape[0]
        return sw.values.permute(0, 2, 1).reshape(4 * g, k)[:n].clone()
    col = sw.col.long() & 0xFFFF if sw.col.dtype == torch.int16 else sw.col.long()
    counts = (sw.ptr[1:] - sw.ptr[:-1]).long()
    if sw.pattern == "unstructured":
        rows = torch.repeat_interleave(torch.arange(n), counts)
        w = torch.zeros(n, k)
        w[rows, col] = sw.values
        return w
    g = len(counts)
    groups = torch.repeat_interleave(torch.arange(g), counts)
    w = torch.zeros(g, 4, k)
    w[groups, :, col] = sw.values.view(-1, 4)
    return w.reshape(4 * g, k)[:n].clone()


def matmul(sw, b: torch.Tensor) -> torch.Tensor:
    """W @ B (or W @ x) through the dense weight, in ``b``'s dtype (pass float64 for a tight reference)."""
    return to_dense(sw).to(b.dtype) @ b
