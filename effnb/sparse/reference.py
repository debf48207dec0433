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


def block_entries(bptr, base, offset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every entry of :class:`~effnb.sparse.formats.ColumnBlocks` (padding included)."""
    per_row = (bptr[1:] - bptr[:-1]).long()
    rows = torch.repeat_interleave(torch.arange(n), per_row, output_size=len(base)).repeat_interleave(8)
    cols = ((base.long() & 0xFFFF)[:, None] + offset.view(-1, 8).long()).view(-1)
    return rows, cols


def blocks_to_dense(blocks, shape) -> torch.Tensor:
    """The (N x K) fp32 weight :class:`~effnb.sparse.formats.ColumnBlocks` stand for (padding adds zeros)."""
    n, k = shape
    rows, cols = block_entries(blocks.ptr, blocks.base, blocks.offset, n)
    return torch.zeros(n, k).index_put_((rows, cols), blocks.values, accumulate=True)


def blocked_spmv(bptr, base, offset, values, x: torch.Tensor, n: int) -> torch.Tensor:
    """What the ``blocked_spmv`` op computes: y[r] = sum over row r's blocks of values * x[base + offset]."""
    rows, cols = block_entries(bptr, base, offset, n)
    return torch.zeros(n, dtype=x.dtype).index_add_(0, rows, values.to(x.dtype) * x[cols])


def matmul(sw, b: torch.Tensor) -> torch.Tensor:
    """W @ B (or W @ x) through the dense weight, in ``b``'s dtype (pass float64 for a tight reference)."""
    return to_dense(sw).to(b.dtype) @ b
