"""The ``attention`` kernel family as torch ops: schemas, fake kernels, and the calls that pick a kernel.

The schemas live here, not in ``kernels/attention/``, so the ops exist (with fake kernels for tracing
and ``opcheck``) even where the library is not built; the C++ files only register CPU implementations.
:func:`topk_decode` and :func:`cluster_attention` check their inputs, then call the C++ kernel when the
family is loaded and the plain reference of :mod:`effnb.attention.reference` otherwise;
:func:`backend` says which ran.
"""
from __future__ import annotations

import torch

from .. import ext
from ..family import KernelOps, check_cache_heads, check_int, check_tensor
from . import reference

FAMILY = "attention"

SCHEMAS = {
    # one new token's query heads q (Hq, d) against a KV cache k, v (Hkv, cap, d), first `length` rows valid
    "attention_topk_decode": "(Tensor q, Tensor k, Tensor v, Tensor summary, int length, int block, "
                             "int topk, int sink=0) -> Tensor",
    # q, k, v (H, n, d); orders (H, n) and offsets (H, C+1) as a stable counting sort by cluster gives them
    "attention_cluster": "(Tensor q, Tensor k, Tensor v, Tensor q_order, Tensor q_offsets, Tensor k_order, "
                         "Tensor k_offsets, bool causal) -> Tensor",
}


def _topk_decode_fake(q, k, v, summary, length, block, topk, sink=0):
    """One output row per query head: (Hq, d)."""
    torch._check(q.dim() == 2, lambda: f"q must be 2-D (Hq, d), got {q.dim()}-D")
    return q.new_empty(q.shape)


def _cluster_fake(q, k, v, q_order, q_offsets, k_order, k_offsets, causal):
    """One output row per query: (H, n, d)."""
    torch._check(q.dim() == 3, lambda: f"q must be 3-D (H, n, d), got {q.dim()}-D")
    return q.new_empty(q.shape)


_FAKES = {"attention_topk_decode": _topk_decode_fake, "attention_cluster": _cluster_fake}
_OPS = KernelOps(FAMILY, SCHEMAS, _FAKES.__getitem__)
declare, available = _OPS.declare, _OPS.available
declare()  # the ops exist (with their fake kernels) whether or not the library loads


def backend() -> str:
    """What the ops run: ``cpp-<isa path>`` (``cpp-avx512``, ``cpp-avx2``, ``cpp-scalar``) or ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force it


# ---------------------------------------------------------------- checks (they run on the fallback too)

def _check_decode(q, k, v, summary, length, block, topk, sink=0) -> None:
    """Raise a ValueError that says what to pass; the kernel then never sees a bad input."""
    check_tensor(q, "q", torch.float32, 2, "the new token's query heads as (Hq, d)")
    check_tensor(k, "k", torch.float32, 3, "the key cache as (Hkv, cap, d)")
    check_tensor(v, "v", torch.float32, 3, "the value cache as (Hkv, cap, d)")
    check_tensor(summary, "summary", torch.float32, 3, "(Hkv, nsum, d) block mean keys")
    hq, d = q.shape
    hkv, cap, dk = k.shape
    if v.shape != k.shape:
        raise ValueError(f"v has shape {tuple(v.shape)}; pass the value cache with k's shape {tuple(k.shape)}")
    if dk != d:
        raise ValueError(f"k has head size {dk} but q has {d}; pass q and k with one d")
    length = check_cache_heads(hq, hkv, length, cap)
    block = check_int(block, "block", 1, "a block size >= 1")
    check_int(topk, "topk", 0, "topk >= 0 (0: the tail only)")
    check_int(sink, "sink", 0, "sink >= 0 leading blocks always attended (0: none)")
    nfull = length // block
    if summary.shape[0] != hkv or summary.shape[2] != d or summary.shape[1] < nfull:
        raise ValueError(f"summary has shape {tuple(summary.shape)}; pass (Hkv, nsum, d) = ({hkv}, >= {nfull}, {d}): "
                         "the mean key of each of the length // block full blocks (reference.block_summaries)")


def _check_clusters(order, offsets, oname: str, fname: str, heads: int, n: int, c1: int, contents: bool) -> None:
    check_tensor(order, oname, torch.int64, 2, f"(H, n) = ({heads}, {n}): each head's token indices, cluster by cluster")
    check_tensor(offsets, fname, torch.int64, 2, "(H, C+1) cluster offsets")
    if tuple(order.shape) != (heads, n):
        raise ValueError(f"{oname} has shape {tuple(order.shape)}; pass (H, n) = ({heads}, {n})")
    if tuple(offsets.shape) != (heads, c1):
        raise ValueError(f"{fname} has shape {tuple(offsets.shape)}; pass (H, C+1) = ({heads}, {c1}), as q_offsets")
    if c1 < 1 or bool((offsets[:, 0] != 0).any()) or bool((offsets[:, -1] != n).any()):
        raise ValueError(f"{fname} must run from 0 to n = {n} in each head; pass the cumulative cluster sizes "
                         "with a leading 0")
    if bool((offsets[:, 1:] < offsets[:, :-1]).any()):
        raise ValueError(f"{fname} decreases; pass non-decreasing offsets (a cumulative count)")
    if n == 0 or not contents:
        return
    if bool((order < 0).any()) or bool((order >= n).any()):
        raise ValueError(f"{oname} holds an index outside 0 .. {n - 1}; pass a permutation of 0 .. n-1")
    seen = torch.zeros(heads, n, dtype=torch.int64).scatter_add_(1, order, torch.ones_like(order))
    if bool((seen != 1).any()):
        raise ValueError(f"{oname} repeats a token; pass a permutation of 0 .. n-1")
    starts = torch.zeros(heads, n + 1, dtype=torch.bool).scatter_(1, offsets, True)[:, 1:n]
    if bool(((order[:, 1:] <= order[:, :-1]) & ~starts).any()):
        raise ValueError(f"{oname} is not ascending within a cluster; pass each cluster's tokens in position order "
                         "(a stable sort by cluster)")


def _check_cluster(q, k, v, q_order, q_offsets, k_order, k_offsets, causal, contents: bool = True) -> None:
    """Shapes, dtypes and offsets always; the orders' contents (a permutation, ascending per cluster) only
    when ``contents``: the C++ kernel checks those itself in one pass, cheaper than these torch ops."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name, torch.float32, 3, "(H, n, d)")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v have shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}; "
                         "pass three (H, n, d) tensors of one shape")
    heads, n, _ = q.shape
    if not isinstance(q_offsets, torch.Tensor) or q_offsets.dim() != 2:
        raise ValueError("q_offsets must be an (H, C+1) int64 tensor of cluster offsets")
    c1 = q_offsets.shape[1]
    _check_clusters(q_order, q_offsets, "q_order", "q_offsets", heads, n, c1, contents)
    _check_clusters(k_order, k_offsets, "k_order", "k_offsets", heads, n, c1, contents)
    if not isinstance(causal, bool):
        raise ValueError(f"causal is {causal!r}; pass True or False")


# ---------------------------------------------------------------- the ops

def topk_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, summary: torch.Tensor, length: int,
                block: int, topk: int, sink: int = 0) -> torch.Tensor:
    """One new token's attention over the ``topk`` best full blocks of the cache, the first ``sink`` blocks
    (where a trained model parks attention it does not need: its "attention sinks") and the partial tail block.

    q (Hq, d): the token's query heads, already rotated; k, v (Hkv, cap, d): the cache, first ``length`` rows
    valid; summary (Hkv, nsum >= length // block, d): each full block's mean key. A block's score is the max
    over the kv head's query group of ``q_j . summary[b]``. ``topk >= length // block``: dense attention."""
    _check_decode(q, k, v, summary, length, block, topk, sink)
    if not available():
        return reference.topk_decode_ref(q, k, v, summary, length, block, topk, sink)
    return torch.ops.effnb.attention_topk_decode(q, k, v, summary, int(length), int(block), int(topk), int(sink))


def cluster_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_order: torch.Tensor,
                      q_offsets: torch.Tensor, k_order: torch.Tensor, k_offsets: torch.Tensor,
                      causal: bool = True) -> torch.Tensor:
    """Each query attends only the keys of its own cluster (causal: those at positions <= its own).

    q, k, v (H, n, d); cluster c of head h holds queries ``q_order[h, q_offsets[h,c]:q_offsets[h,c+1]]`` and
    keys likewise, each ascending (:func:`reference.clusters_from_labels` makes them). A query with no
    allowed key gets a zero row. Bad inputs raise ValueError here, or RuntimeError from the C++ kernel
    for orders that are not a permutation ascending within each cluster."""
    cpp = available()
    _check_cluster(q, k, v, q_order, q_offsets, k_order, k_offsets, causal, contents=not cpp)
    if not cpp:
        return reference.cluster_attention_ref(q, k, v, q_order, q_offsets, k_order, k_offsets, causal)
    return torch.ops.effnb.attention_cluster(q, k, v, q_order, q_offsets, k_order, k_offsets, causal)
