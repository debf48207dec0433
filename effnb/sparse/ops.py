"""The ``sparse`` kernel family as torch ops: schemas, fake kernels, and the one call that picks a kernel.

The schemas live here, not in ``kernels/sparse/sparse.cpp``, so the ops exist
(with fake kernels for tracing and ``opcheck``) even where the library is not
built; the C++ file only registers the CPU implementations. :func:`matmul`
calls the C++ kernel when the family is loaded and the plain reference of
:mod:`effnb.sparse.reference` otherwise; :func:`backend` says which ran.
"""
from __future__ import annotations

import torch

from .. import ext
from ..family import KernelOps
from . import reference
from .formats import check_weight

FAMILY = "sparse"

# C = W @ B for a dense B (K x P), or y = W @ x for a vector x (K); N is W's row count.
SCHEMAS = {
    "sparse_spmm": "(Tensor rowptr, Tensor colidx, Tensor values, Tensor B, int N) -> Tensor",
    "sparse_spmv": "(Tensor rowptr, Tensor colidx, Tensor values, Tensor x, int N) -> Tensor",
    # the SpMV of an unstructured weight in column blocks (formats.ColumnBlocks): fewer bytes than CSR
    "blocked_spmv": "(Tensor bptr, Tensor base, Tensor offset, Tensor values, Tensor x, int N) -> Tensor",
    "group4_spmm": "(Tensor gptr, Tensor colidx, Tensor values, Tensor B, int N) -> Tensor",
    "group4_spmv": "(Tensor gptr, Tensor colidx, Tensor values, Tensor x, int N) -> Tensor",
    "dense4_spmm": "(Tensor W4, Tensor B, int N) -> Tensor",
    "dense4_spmv": "(Tensor W4, Tensor x, int N) -> Tensor",
}
OPS = tuple(SCHEMAS)

# Which op runs each layout: (matrix operand, vector operand).
_KERNELS = {"unstructured": ("sparse_spmm", "sparse_spmv"), "1x4": ("group4_spmm", "group4_spmv"),
            "dense": ("dense4_spmm", "dense4_spmv")}


def _fake_matrix(*args):
    """Every ``*_spmm`` ends with (B, N) and returns a fresh (N x P) tensor like B."""
    b, n = args[-2:]
    torch._check(b.dim() == 2, lambda: f"B must be 2-D (K x P), got {b.dim()}-D")
    return b.new_empty((n, b.shape[1]))


def _fake_vector(*args):
    """Every ``*_spmv`` ends with (x, N) and returns a fresh vector of N like x."""
    x, n = args[-2:]
    torch._check(x.dim() == 1, lambda: f"x must be 1-D (K), got {x.dim()}-D")
    return x.new_empty((n,))


_OPS = KernelOps(FAMILY, SCHEMAS, lambda name: _fake_matrix if name.endswith("spmm") else _fake_vector)
declare, available = _OPS.declare, _OPS.available


def backend() -> str:
    """What :func:`matmul` runs: ``cpp-<isa path>`` (``cpp-avx2``, ``cpp-scalar``) or ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force the fallback


def matmul(sparse, b: torch.Tensor) -> torch.Tensor:
    """C = W @ B for B (K x P) or a vector (K): the kernel every layer calls."""
    sw = check_weight(sparse)
    n, k = sw.shape
    if b.dtype != torch.float32:
        raise TypeError(f"activations must be float32, got {b.dtype}; pass x.float()")
    if b.shape[0] != k:
        raise ValueError(f"the weight has {k} inputs but the operand has {b.shape[0]} rows")
    b = b.contiguous()
    if not available():
        return reference.matmul(sw, b)
    if b.dim() == 1 and sw.blocks is not None:   # chosen per matrix by sparsify: fewer bytes than CSR
        bl = sw.blocks
        return torch.ops.effnb.blocked_spmv(bl.ptr, bl.base, bl.offset, bl.values, b, n)
    op = getattr(torch.ops.effnb, _KERNELS[sw.pattern][b.dim() == 1])
    if sw.pattern == "dense":
        return op(sw.values, b, n)
    return op(sw.ptr, sw.col, sw.values, b, n)
