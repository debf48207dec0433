"""Low-rank factorization of linear layers (the LRT half of Greenformers) and of BERT's word embeddings.

Why: a linear layer ``W [out, in]`` costs ``out * in`` weights and ``2 * out * in`` FLOPs per token; the
product ``U [out, r] @ V [r, in]`` costs ``r * (out + in)`` of each, less only when
``r < out * in / (out + in)``. The truncated SVD is the best rank-r approximation in the Frobenius norm
(Eckart-Young), so its error is the norm of the singular values it drops; ``torch.svd_lowrank`` is the
randomized peer a reader could use instead, and the tests hold it to the optimum.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("svd", "svd_lowrank")
# MiniLM's linears per encoder layer, by the name the report uses and their path inside ``BertLayer``.
MODULES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
           "attention.output": "attention.output.dense", "intermediate": "intermediate.dense",
           "output": "output.dense"}


def _check_rank(rank, out_features: int, in_features: int) -> int:
    top = min(out_features, in_features)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= top:
        raise ValueError(f"rank must be a whole number from 1 to min(out, in) = {top} for a "
                         f"{out_features}x{in_features} weight, got {rank!r}; pass rank=1..{top}")
    return rank


def _truncated_svd(w: torch.Tensor, rank: int, method: str = "svd", niter: int = 2, seed: int = 0):
    """``U [out, r], S [r], Vh [r, in]`` of ``w`` in float64 (so full rank reproduces ``w`` to fp32 precision)."""
    w64 = w.detach().to(torch.float64)
    if method == "svd":
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    if method == "svd_lowrank":
        with torch.random.fork_rng(devices=[]):   # seeded without touching the caller's RNG
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(w64, q=rank, niter=niter)
        return u, s, v.mT
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


class FactorizedLinear(nn.Module):
    """``y = (x @ V^T) @ U^T + b``: two thin matmuls in place of one ``[out, in]`` weight."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
            raise ValueError(f"need U [out, r] and V [r, in] with the same r, got {tuple(u.shape)} and {tuple(v.shape)}")
        self.U = nn.Parameter(u.contiguous())
        self.V = nn.Parameter(v.contiguous())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.out_features, self.in_features = u.shape[0], v.shape[1]

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, method: str = "svd", niter: int = 2,
                    seed: int = 0) -> "FactorizedLinear":
        """Rank-``rank`` factors of ``linear.weight``; the singular values split evenly, ``U sqrt(S)`` and
        ``sqrt(S) V``, so neither factor carries all the scale (better conditioned for fine-tuning)."""
        out_f, in_f = linear.weight.shape
        _check_rank(rank, out_f, in_f)
        u, s, vh = _truncated_svd(linear.weight, rank, method, niter, seed)
        root = s.sqrt()
        dtype = linear.weight.dtype
        return cls((u * root).to(dtype), (root[:, None] * vh).to(dtype), linear.bias)

    @property
    def rank(self) -> int:
        return self.V.shape[0]

    @property
    def params(self) -> int:
        """Stored elements: both factors and the bias."""
        return self.U.numel() + self.V.numel() + (0 if self.bias is None else self.bias.numel())

    def weight_product(self) -> torch.Tensor:
        """The dense ``[out, in]`` matrix the factors stand for (for error checks, not for the forward)."""
        return self.U @ self.V

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class FactorizedEmbedding(nn.Module):
    """ALBERT's factorized embedding: a ``[vocab, r]`` table looked up, then a ``[r, hidden]`` projection.

    Drop-in for ``BertEmbeddings.word_embeddings``, which is only ever called as ``word_embeddings(input_ids)``."""

    def __init__(self, table: torch.Tensor, proj: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        self.table = nn.Parameter(table.contiguous())
        self.proj = nn.Parameter(proj.contiguous())
        self.padding_idx = padding_idx
        self.num_embeddings, self.embedding_dim = table.shape[0], proj.shape[1]

    @property
    def rank(self) -> int:
        return self.proj.shape[0]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.table, self.padding_idx) @ self.proj

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}"


def rank_for_energy(S: torch.Tensor, energy: float) -> int:
    """The smallest r whose top singular values keep ``energy`` of ``sum(S^2)`` (S sorted descending)."""
    if not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy is a fraction of sum(S^2): pass 0 < energy <= 1, got {energy!r}")
    e = S.detach().to(torch.float64).pow(2)
    kept = torch.cumsum(e, 0) / e.sum()
    r = int(torch.searchsorted(kept, torch.tensor(float(energy) - 1e-12, dtype=torch.float64)).item()) + 1
    return min(r, S.numel())


def worth_factorizing(out_features: int, in_features: int, rank: int) -> bool:
    """True when the factors hold fewer weights (and do fewer FLOPs) than the dense matrix."""
    return rank * (out_features + in_features) < out_features * in_features


def _get(root: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, name, module)


def factorize_model(bert: nn.Module, rank: int | None = None, energy: float | None = None,
                    which: Sequence[str] = tuple(MODULES), method: str = "svd", niter: int = 2,
                    seed: int = 0, only_if_smaller: bool = True):
    """A deep copy of ``bert`` (a transformers ``BertModel``) with the ``which`` linears of every encoder
    layer factorized at ``rank``, or at the per-matrix rank keeping ``energy`` of ``sum(S^2)``.

    A linear whose factors would not be smaller (``rank >= out*in/(out+in)``: 192 for MiniLM's 384x384
    attention projections, 307 for its FFN) stays dense and its report row says so;
    ``only_if_smaller=False`` factorizes it anyway (full rank reproduces the model: the tests use it).
    Returns ``(model, report)``: one report row per linear with its shape, rank, parameters before and
    after and the relative Frobenius error ``||W - UV|| / ||W||`` of the weight."""
    import pandas as pd
    if (rank is None) == (energy is None):
        raise ValueError("pass exactly one of rank= (a whole number) or energy= (a fraction of sum(S^2))")
    unknown = sorted(set(which) - set(MODULES))
    if unknown:
        raise ValueError(f"which= names {unknown}; choose from {list(MODULES)}")
    model = copy.deepcopy(bert)
    rows = []
    for i, layer in enumerate(model.encoder.layer):
        for name in which:
            lin = _get(layer, MODULES[name])
            out_f, in_f = lin.weight.shape
            top = min(out_f, in_f)
            if energy is not None:
                r = rank_for_energy(torch.linalg.svdvals(lin.weight.detach().to(torch.float64)), energy)
            else:
                big = isinstance(rank, int) and not isinstance(rank, bool) and rank > top
                r = rank if big else _check_rank(rank, out_f, in_f)   # above min(out, in): kept dense below
            before = param_count(lin)
            row = {"layer": i, "module": name, "shape": f"{out_f}x{in_f}", "rank": r, "params before": before,
                   "params after": before, "rel error": 0.0, "factorized": False, "note": ""}
            if r > top or (only_if_smaller and not worth_factorizing(out_f, in_f, r)):
                row["note"] = f"kept dense: rank {r} >= {out_f * in_f / (out_f + in_f):.0f} does not shrink it"
            else:
                fac = FactorizedLinear.from_linear(lin, r, method, niter, seed)
                with torch.no_grad():
                    err = torch.linalg.norm(lin.weight - fac.weight_product()) / torch.linalg.norm(lin.weight)
                _set(layer, MODULES[name], fac)
                row.update({"params after": fac.params, "rel error": float(err), "factorized": True})
            rows.append(row)
    return model, pd.DataFrame(rows)


def factorize_embeddings(bert: nn.Module, rank: int) -> nn.Module:
    """A deep copy of ``bert`` whose ``[vocab, hidden]`` word embeddings are a ``[vocab, rank]`` table times
    a ``[rank, hidden]`` projection (ALBERT), from the truncated SVD of the original table: at MiniLM's
    30522x384 the table is 53% of the model's weights, so this is where a small model's bytes are."""
    model = copy.deepcopy(bert)
    emb = model.embeddings.word_embeddings
    vocab, hidden = emb.weight.shape
    _check_rank(rank, vocab, hidden)
    u, s, vh = _truncated_svd(emb.weight, rank)
    dtype = emb.weight.dtype
    model.embeddings.word_embeddings = FactorizedEmbedding((u * s).to(dtype), vh.to(dtype), emb.padding_idx)
    return model


def _unique_tensors(module: nn.Module, buffers: bool):
    seen, out = set(), []
    tensors = list(module.parameters()) + (list(module.buffers()) if buffers else [])
    for t in tensors:
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:   # tied or shared tensors are stored once
            seen.add(key)
            out.append(t)
    return out


def param_count(module: nn.Module, buffers: bool = False) -> int:
    """Elements of the distinct parameters (tied weights once); ``buffers=True`` adds the buffers
    (Linformer's projections are buffers)."""
    return sum(t.numel() for t in _unique_tensors(module, buffers))


def param_bytes(module: nn.Module, buffers: bool = True) -> int:
    """Bytes actually stored: distinct parameters and (by default) buffers, each at its own element size."""
    return sum(t.numel() * t.element_size() for t in _unique_tensors(module, buffers))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||a||`` in the Frobenius norm."""
    a, b = a.detach().double(), b.detach().double()
    den = torch.linalg.norm(a)
    return float(torch.linalg.norm(a - b) / den) if den > 0 else math.nan
