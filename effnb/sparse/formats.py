"""The sparse layouts the kernels read, and the magnitude masks that decide what they keep.

A pruned weight only saves time if the kernel reads fewer bytes than the dense
one, so each layout is built for the bytes: CSR with 16-bit column indices when
the layer has at most 65536 inputs (and, for the vector kernel, column blocks:
8-bit offsets from a 16-bit base column shared by 8 nonzeros), 1x4 groups with
one index per four weights, and the dense packing that runs the 1x4 kernel's
own loops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import reference

PATTERNS = ("unstructured", "1x4", "dense")


BLOCK = 8          # entries per column block (one base column, 8 uint8 offsets)
MAX_OFFSET = 255   # the farthest a block's column may lie past its base


@dataclass
class ColumnBlocks:
    """The SpMV layout of a CSR weight with K <= 65536: each row's nonzeros in blocks of :data:`BLOCK`
    that share one base column (uint16, held in int16), each entry a uint8 offset from it.

    A block closes early when the next column lies more than :data:`MAX_OFFSET` past its base, and
    every row ends on a whole block; unused entries hold value 0 and offset 0. ``ptr`` counts blocks:
    row n owns blocks ``ptr[n]:ptr[n+1]``, block b entries ``8b:8b+8``. 4 + 1 + 2/8 = 5.25 bytes per
    entry against CSR's 4 + 2.
    """
    ptr: torch.Tensor        # int32 [N + 1], in blocks
    base: torch.Tensor       # int16 (read as uint16) [blocks]
    offset: torch.Tensor     # uint8 [8 * blocks]
    values: torch.Tensor     # fp32 [8 * blocks], zeros where a block is padded

    @property
    def nbytes(self) -> int:
        """Bytes the blocked SpMV kernel reads: values, offsets, bases and the block row pointer."""
        return int(sum(t.numel() * t.element_size() for t in (self.ptr, self.base, self.offset, self.values)))

    def clone(self) -> "ColumnBlocks":
        return ColumnBlocks(self.ptr.clone(), self.base.clone(), self.offset.clone(), self.values.clone())


@dataclass
class SparseWeight:
    """A pruned (N x K) weight in one of :data:`PATTERNS`' layouts, ready for the kernels."""
    shape: tuple
    pattern: str
    ptr: torch.Tensor        # int32 row (or group) pointer; empty for "dense"
    col: torch.Tensor        # int16 (read as uint16) or int32 column indices; empty for "dense"
    values: torch.Tensor     # fp32: [nnz] / [stored columns * 4] / [G, K, 4]
    blocks: ColumnBlocks | None = None  # "unstructured" only: the SpMV layout, where it reads fewer bytes

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
        """Bytes the matrix kernel (``*_spmm``) must read for the weight: values, indices and pointers."""
        return int(sum(t.numel() * t.element_size() for t in (self.ptr, self.col, self.values)))

    def read_bytes(self, m: int = 1) -> int:
        """Bytes the kernel reads for the weight when it multiplies ``m`` activation rows: at ``m = 1``
        the vector kernel, which reads :attr:`blocks` where the weight has them."""
        return self.blocks.nbytes if m == 1 and self.blocks is not None else self.nbytes

    def to_dense(self) -> torch.Tensor:
        """The (N x K) fp32 weight this layout stands for (the reference)."""
        return reference.to_dense(self)

    def clone(self) -> "SparseWeight":
        """A copy in fresh memory (cold-cache benchmarks rotate through copies)."""
        return SparseWeight(self.shape, self.pattern, self.ptr.clone(), self.col.clone(), self.values.clone(),
                            None if self.blocks is None else self.blocks.clone())


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


def column_blocks(ptr: torch.Tensor, col: torch.Tensor, values: torch.Tensor, k: int) -> ColumnBlocks:
    """CSR (``ptr``, ``col`` sorted within each row, ``values``) of a weight with ``k`` <= 65536 inputs
    packed as :class:`ColumnBlocks`. Greedy and deterministic: a block takes the next nonzeros of its row
    while it has fewer than 8 and they lie at most 255 past its first column. Vectorised over rows: one
    round per block of the longest row, each round closing one block of every row not yet done."""
    if k > 65536:
        raise ValueError(f"column blocks hold uint16 base columns: at most 65536 inputs, the weight has {k}")
    ptr = ptr.numpy().astype(np.int64)
    col = col.numpy().astype(np.int64) & 0xFFFF
    n = len(ptr) - 1
    steps = np.arange(BLOCK)
    pad = np.concatenate([col, np.full(BLOCK, np.iinfo(np.int64).max)])   # reads past the end close the block
    cur, end = ptr[:-1].copy(), ptr[1:]
    rows = np.flatnonzero(cur < end)
    found = []                              # per round: (row, first nonzero, length) of one block of each live row
    while len(rows):
        c, e = cur[rows], end[rows]
        j = c[:, None] + steps
        # columns rise within a row, so both tests fail from some slot on and the block is their count
        length = ((j < e[:, None]) & (pad[j] - col[c][:, None] <= MAX_OFFSET)).sum(1)
        found.append((rows, c, length))
        cur[rows] = c + length
        rows = rows[cur[rows] < end[rows]]
    if found:
        r, first, length = (np.concatenate(t) for t in zip(*found))
    else:
        r = first = length = np.zeros(0, np.int64)
    order = np.argsort(first, kind="stable")       # nonzeros are stored row by row: by first nonzero is by row
    r, first, length = r[order], first[order], length[order]
    nb = len(first)
    bptr = np.zeros(n + 1, np.int64)
    bptr[1:] = np.cumsum(np.bincount(r, minlength=n))
    used = steps[None, :] < length[:, None]                    # [blocks, 8]: which slots hold a nonzero
    src = (first[:, None] + steps)[used]                       # the nonzero each used slot holds
    base = col[first]
    offset = np.zeros((nb, BLOCK), np.uint8)
    offset[used] = col[src] - np.repeat(base, length)
    vals = np.zeros((nb, BLOCK), np.float32)
    vals[used] = values.numpy()[src]
    return ColumnBlocks(torch.from_numpy(bptr.astype(np.int32)), _narrow(torch.from_numpy(base), torch.int16),
                        torch.from_numpy(offset.reshape(-1)), torch.from_numpy(vals.reshape(-1)))


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
    # the n_drop-th lowest score is the threshold: all above it stay, and of the scores equal to it the last
    # ones by position make up the count (what a stable ascending sort dropping its first n_drop would keep;
    # such a sort of a 45 M-weight layer took seconds, float32 magnitudes tie there). numpy's partition finds
    # the threshold about ten times faster than torch.kthvalue
    thr = torch.tensor(np.partition(flat.numpy(), n_drop - 1)[n_drop - 1])
    keep = flat > thr
    more = flat.numel() - n_drop - int(keep.sum())
    if more > 0:
        tied = (flat == thr).nonzero(as_tuple=True)[0]
        keep[tied[tied.numel() - more:]] = True
    return keep.view_as(score)


SPMV_LAYOUTS = ("auto", "blocks", "csr")


def _spmv_layout(ptr, col, values, k: int, spmv: str) -> ColumnBlocks | None:
    """The column blocks for an unstructured weight's SpMV, or None where it runs on the CSR arrays."""
    if spmv == "csr" or (spmv == "auto" and k > 65536):
        return None
    blocks = column_blocks(ptr, col, values, k)
    csr_bytes = sum(t.numel() * t.element_size() for t in (ptr, col, values))
    return blocks if spmv == "blocks" or blocks.nbytes < csr_bytes else None


def sparsify(weight, sparsity: float | None, pattern: str = "unstructured", *,
             index_dtype: str = "auto", spmv: str = "auto") -> SparseWeight:
    """Prune ``weight`` by magnitude to ``sparsity`` and store it in ``pattern``'s layout.

    ``sparsity=None`` keeps the weight's existing zeros (a model pruned during
    training). Rows with no weight left and an all-zero weight are fine.
    ``spmv`` (``"unstructured"`` only) picks the layout the vector kernel reads:
    ``"auto"`` adds :class:`ColumnBlocks` where they read fewer bytes than the
    CSR arrays (needs K <= 65536), ``"blocks"`` always adds them (an error past
    65536 inputs), ``"csr"`` never.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if spmv not in SPMV_LAYOUTS:
        raise ValueError(f"spmv must be one of {SPMV_LAYOUTS}, got {spmv!r}")
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
        ptr, col, vals = ptr.to(torch.int32), _narrow(cols, idt), w[rows, cols].contiguous()
        return SparseWeight((n, k), pattern, ptr, col, vals, _spmv_layout(ptr, col, vals, k, spmv))
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
