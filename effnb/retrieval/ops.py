"""The ``retrieval`` kernel family as torch ops: schemas, fake kernels, and the call that picks a kernel.

The schemas live here, not in ``kernels/retrieval/retrieval.cpp``, so the ops
exist (with fake kernels for tracing and ``opcheck``) even where the library is
not built; the C++ file only registers the CPU implementations. :func:`maxsim`
calls the C++ kernel when the family is loaded and :mod:`effnb.retrieval.reference`
otherwise; :func:`backend` says which ran.
"""
from __future__ import annotations

import torch

from .. import ext
from ..family import KernelOps
from . import reference
from .index import PackedIndex, quantize_rows

FAMILY = "retrieval"

# scores[c] = sum_i max_{j in document cand[c]} q_i . v_j  (0 for an empty document)
SCHEMAS = {
    "maxsim_f32": "(Tensor q, Tensor vectors, Tensor offsets, Tensor cand) -> Tensor",
    "maxsim_i8": "(Tensor q8, Tensor qscale, Tensor codes, Tensor vscale, Tensor offsets, Tensor cand) -> Tensor",
}
OPS = tuple(SCHEMAS)


def _fake_scores(*args):
    """Both ops end with (offsets, cand) and return one fp32 score per candidate."""
    cand = args[-1]
    torch._check(cand.dim() == 1, lambda: f"cand must be 1-D [C], got {cand.dim()}-D")
    return cand.new_empty(cand.shape, dtype=torch.float32)


_OPS = KernelOps(FAMILY, SCHEMAS, lambda name: _fake_scores)
declare, available = _OPS.declare, _OPS.available


def backend() -> str:
    """What :func:`maxsim` runs: ``cpp-<isa path>`` (``cpp-avx512-vnni``, ``cpp-avx512``, ``cpp-avx2``,
    ``cpp-scalar``) or ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force the fallback


def candidates(index: PackedIndex, cand=None) -> torch.Tensor:
    """``cand`` as a 1-D int64 tensor of document numbers (default: every document), range checked here
    so that a bad one is a ValueError naming it rather than a kernel error."""
    if cand is None:
        return torch.arange(index.num_docs, dtype=torch.int64)
    c = torch.as_tensor(cand)
    if c.numel() == 0 and not isinstance(cand, torch.Tensor):
        c = c.to(torch.int64)                     # torch reads [] as float32
    if c.dim() != 1 or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(f"cand must be a 1-D list or tensor of document numbers, got {c.dtype} of shape "
                         f"{tuple(c.shape)}; pass e.g. torch.tensor([3, 0, 7])")
    c = c.to(torch.int64).contiguous()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= index.num_docs):
        bad = int(c[(c < 0) | (c >= index.num_docs)][0])
        raise ValueError(f"cand holds {bad}, not a document of this index; pass numbers in 0..{index.num_docs - 1}")
    return c


def query(q, index: PackedIndex) -> torch.Tensor:
    """``q`` as a contiguous fp32 [m, d] tensor matching the index, or a ValueError saying what to pass."""
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or not q.is_floating_point():
        shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"the query must be a 2-D float tensor [m, d] (one row per query token), got {shape}")
    if q.shape[1] != index.dim:
        raise ValueError(f"the query has d={q.shape[1]} but the index holds d={index.dim} vectors; "
                         f"encode the query with the index's model")
    return q.detach().to(torch.float32).contiguous()


def maxsim(q: torch.Tensor, index: PackedIndex, cand=None) -> torch.Tensor:
    """Late-interaction score of each candidate document: ``sum_i max_j q_i . v_j`` (fp32 [C]).

    An int8 index is scored with integer dot products against the query quantized per row
    (symmetric absmax, as the index); the C++ kernel runs when the family is loaded, the
    plain reference otherwise (:func:`backend` says which).
    """
    if not isinstance(index, PackedIndex):
        raise TypeError("index must come from effnb.retrieval.PackedIndex.from_list(documents)")
    q, cand = query(q, index), candidates(index, cand)
    if index.dtype == "fp32":
        args = (q, index.vectors, index.offsets, cand)
        return torch.ops.effnb.maxsim_f32(*args) if available() else reference.maxsim_f32(*args)
    q8, qscale = quantize_rows(q)
    args = (q8, qscale, index.vectors, index.scales, index.offsets, cand)
    return torch.ops.effnb.maxsim_i8(*args) if available() else reference.maxsim_i8(*args)
