"""The sparse layouts the kernels read, and the magnitude masks that decide what they keep.

A pruned weight only saves time if the kernel reads fewer bytes than the dense
one, so each layout is built for the bytes: CSR with 16-bit column indices when
the layer has at most 65536 inputs, 1x4 groups with one index per four
weights, and the dense packing that runs the 1x4 kernel's own loops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import reference

PATTERNS = ("unstructured", "1x4", "dense")


@dataclass
class SparseWeight:
    """A pruned (N x K) weight in one of :data:`PATTERNS`' layouts, ready for the kernels."""
    shape: tuple
    pattern: str
    ptr: torch.Tensor        # int32 row (or group) pointer; empty for "dense"
    col: torch.Tensor        # int16 (read as uint16) or int32 column indices; empty for "dense"
    values: torch.Tensor     # fp32: [nnz] / [stored columns * 4] / [G, K, 4]

    @property
    def nnz(self) -> int:
        """Stored weights (for 1x4, four per stored column, zeros inside a group included)."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of the N*K weights not stored."""
        n, k = self.shape
        return 1.0 - self.nnz / max(1, n * k) if self.pattern != "dense" else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes the kernel must read for the weight: values, indices and pointers."""
        return int(sum(t.numel() * t.element_size() for t in (self.ptr, self.col, self.values)))

    def to_dense(self) -> torch.Tensor:
        """The (N x K) fp32 weight this layout stands for (the reference)."""
        return reference.to_dense(self)

    def clone(self) -> "SparseWeight":
        """A copy in fresh memory (cold-cache benchmarks rotate through copies)."""
        return SparseWeight(self.shape, self.pattern, self.ptr.clone(), self.col.clone(), self.values.clone())


def check_sparsity(sparsity) -> float:
    """The sparsity as a float in [0, 1), or a ValueError that says what is allowed."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)) \
            or not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of weights removed), got {sparsity!r}")
    return float(sparsity)


def as_matrix(weight) -> torch.Tensor:
    """A 2-D fp32 view of a Linear weight (N, K) or a 1x1 Conv weight (N, K, 1, 1)."""
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch tensor or numpy array, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}; pass weight.float()")
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError("only 1x1 convolution weights can be sparsified here, "
                             f"got kernel {tuple(weight.shape[2:])}")
        weight = weight.reshape(weight.shape[0], weight.shape[1])
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out x in) or a 1x1 conv weight, got shape {tuple(weight.shape)}")
    return weight.detach().to("cpu", torch.float32).contiguous()


def index_bytes(k: int) -> int:
    """Bytes per column index the default (``"auto"``) layout uses for ``k`` inputs."""
    return 2 if k <= 65536 else 4


def _index_dtype(k: int, index_dtype: str) -> torch.dtype:
    if index_dtype == "auto":
        return torch.int16 if index_bytes(k) == 2 else torch.int32
    if index_dtype == "int32":
        return torch.int32
    if index_dtype == "uint16":
        if k > 65536:
            raise ValueError(f"uint16 column indices need at most 65536 inputs, the weight has {k}")
        return torch.int16
    raise ValueError(f"index_dtype must be 'auto', 'uint16' or 'int32', got {index_dtype!r}")


def _narrow(col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Column indices in the kernel's dtype (uint16 values are stored in an int16 tensor)."""
    if dtype == torch.int16:
        return col.to(torch.int32).to(torch.int16).contiguous()  # wraps 32768..65535 like uint16
    return col.to(torch.int32).contiguous()


def kept(numel: int, sparsity: float) -> int:
    """How many of ``numel`` scores a magnitude mask at ``sparsity`` keeps (ties aside)."""
    return numel - int(round(sparsity * numel))


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
    """Keep mask (True = keep) removing the ``sparsity`` fraction of smallest-magnitude weights.

    For ``"1x4"`` the unit is a group of 4 consecutive output rows in one column,
    scored by its L2 norm, so the mask is constant within every group.
    """
    sparsity = check_sparsity(sparsity)
    w = weight.detach().abs().float()
    if pattern == "1x4":
        n, k = w.shape
        pad = (-n) % 4
        wp = F.pad(w, (0, 0, 0, pad)).view(-1, 4, k)
        score = wp.pow(2).sum(1)                       # [G, K]
        keep = top_mask(score, sparsity)
        return keep.unsqueeze(1).expand(-1, 4, -1).reshape(-1, k)[:n].clone()
    if pattern != "unstructured":
        raise ValueError(f"pattern must be 'unstructured' or '1x4' for a mask, got {pattern!r}")
    return top_mask(w, sparsity)


def top_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the ``sparsity`` fraction of lowest scores; ties broken by position, so deterministic."""
    n_drop = score.numel() - kept(score.numel(), sparsity)
    if n_drop == 0:
        return torch.ones_like(score, dtype=torch.bool)
    flat = score.flatten()
    if n_drop < flat.numel():  # fast path: a threshold (exact when there are no ties at it)
        thr = torch.kthvalue(flat, n_drop).values
        keep = flat > thr
        if int(keep.sum()) == flat.numel() - n_drop:
            return keep.view_as(score)
    order = torch.argsort(flat, stable=True)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:n_drop]] = False
    return keep.view_as(score)


def sparsify(weight, sparsity: float | None, pattern: str = "unstructured", *,
             index_dtype: str = "auto") -> SparseWeight:
    """Prune ``weight`` by magnitude to ``sparsity`` and store it in ``pattern``'s layout.

    ``sparsity=None`` keeps the weight's existing zeros (a model pruned during
    training). Rows with no weight left and an all-zero weight are fine.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    w = as_matrix(weight)
    n, k = w.shape
    if sparsity is not None:
        sparsity = check_sparsity(sparsity)
    if pattern == "dense":
        g = (n + 3) // 4
        w4 = F.pad(w, (0, 0, 0, 4 * g - n)).view(g, 4, k).permute(0, 2, 1).contiguous()
        return SparseWeight((n, k), "dense", torch.zeros(0, dtype=torch.int32),
                            torch.zeros(0, dtype=torch.int32), w4)
    idt = _index_dtype(k, index_dtype)
    if pattern == "unstructured":
        keep = magnitude_mask(w, sparsity) if sparsity is not None else w != 0
        rows, cols = keep.nonzero(as_tuple=True)
        ptr = torch.zeros(n + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        return SparseWeight((n, k), pattern, ptr.to(torch.int32), _narrow(cols, idt), w[rows, cols].contiguous())
    # 1x4: a (group, column) is stored when any of its four weights is kept
    keep = magnitude_mask(w, sparsity, "1x4") if sparsity is not None else w != 0
    g = (n + 3) // 4
    wk = F.pad(w * keep, (0, 0, 0, 4 * g - n)).view(g, 4, k)
    used = F.pad(keep, (0, 0, 0, 4 * g - n)).view(g, 4, k).any(1)   # [G, K]
    gi, cols = used.nonzero(as_tuple=True)
    ptr = torch.zeros(g + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(torch.bincount(gi, minlength=g), 0)
    vals = wk[gi, :, cols].contiguous().view(-1)                   # [stored, 4] -> flat
    return SparseWeight((n, k), "1x4", ptr.to(torch.int32), _narrow(cols, idt), vals)


def check_weight(sparse) -> SparseWeight:
    """``sparse`` itself, or a TypeError saying where a SparseWeight comes from."""
    if not isinstance(sparse, SparseWeight):
        raise TypeError(f"expected a SparseWeight from effnb.sparse.sparsify, got {type(sparse).__name__}")
    return sparse
