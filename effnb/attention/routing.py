"""Routing attention (Roy et al., Routing Transformer): tokens meet only inside their k-means cluster.

Why it is cheaper: with ``C ~ sqrt(n)`` balanced clusters each query sees about
``n / C`` keys, so attention costs ``n * (n / C) * d = n^1.5 d`` instead of
``n^2 d``; the routing itself (assigning ``n`` tokens to ``C`` centroids) costs
the same order. Routing is per head, on unit-length queries and keys
(spherical k-means), as in the paper.

Our reading for a model that was not trained with routing: the centroids are
fitted on each sequence by a few Lloyd steps on a sample of its tokens (the paper instead updates them
by an exponential moving average during training, :func:`update_centroids`).
``shared=True`` routes a token's query and key together (by ``q^ + k^``), so a
causal query always has at least itself to attend to; ``shared=False`` routes
them apart, as the paper does, and a query whose cluster holds no earlier key
gets a zero row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops


@dataclass
class Plan:
    """Which tokens meet: per head, token indices sorted by cluster and each cluster's slice."""
    q_order: torch.Tensor     # (H, n) int64
    q_offsets: torch.Tensor   # (H, C + 1) int64
    k_order: torch.Tensor
    k_offsets: torch.Tensor

    @property
    def clusters(self) -> int:
        return self.q_offsets.shape[1] - 1

    def labels(self) -> torch.Tensor:
        """(H, n): each token's query cluster (for a shared plan, its key's too)."""
        h, n = self.q_order.shape
        sorted_labels = torch.repeat_interleave(torch.arange(self.clusters).repeat(h), self.q_offsets.diff(dim=1).flatten())
        return torch.empty_like(self.q_order).scatter_(1, self.q_order, sorted_labels.view(h, n))

    def pairs(self, causal: bool = True) -> int:
        """Query-key pairs the plan scores, summed over heads (what the kernel's time is made of);
        causal with separate routing, half of each cluster's pairs (positions decide the rest)."""
        nq = self.q_offsets.diff(dim=1).double()
        nk = self.k_offsets.diff(dim=1).double()
        if not causal:
            return int((nq * nk).sum())
        if self.q_order is self.k_order:
            return int((nq * (nq + 1) / 2).sum())
        return int(round(float((nq * nk).sum()) / 2))


def default_clusters(n: int) -> int:
    """About ``sqrt(n)`` clusters, the choice that balances routing against attention."""
    return max(1, round(math.sqrt(n)))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


SAMPLE_PER_CLUSTER = 32   # k-means is fitted on at most this many tokens per cluster (mini-batch k-means)


def fit_centroids(x: torch.Tensor, clusters: int, iters: int = 2, seed: int = 0,
                  sample: int | None = None) -> torch.Tensor:
    """Spherical k-means per head: ``x`` (H, n, d) -> unit centroids (H, C, d).

    Fitted on ``sample`` tokens drawn with ``seed`` (all of them when ``None`` or ``n`` is
    smaller): routing then assigns all ``n`` once, so fitting does not dominate long
    sequences. Starts from ``C`` distinct tokens of that sample; each step assigns every
    token to its most similar centroid and moves the centroid to the normalised sum of its
    members (an empty cluster keeps its centroid)."""
    h, n, d = x.shape
    if not 1 <= clusters <= n:
        raise ValueError(f"clusters={clusters} must be between 1 and the {n} tokens; "
                         f"default_clusters(n) gives about sqrt(n)")
    g = torch.Generator().manual_seed(seed)
    m = n if sample is None else min(n, max(sample, clusters))
    pick = torch.stack([torch.randperm(n, generator=g)[:m] for _ in range(h)])
    xu = _unit(torch.gather(x, 1, pick[..., None].expand(-1, -1, d)) if m < n else x)
    c = xu[:, :clusters] if m < n else torch.gather(xu, 1, pick[:, :clusters, None].expand(-1, -1, d))
    for _ in range(iters):
        assign = (xu @ c.transpose(1, 2)).argmax(-1)
        sums = torch.stack([torch.zeros(clusters, d).index_add_(0, a, t) for a, t in zip(assign, xu)])
        moved = sums.norm(dim=-1, keepdim=True) > 0
        c = torch.where(moved, F.normalize(sums, dim=-1), c)
    return c


def update_centroids(centroids: torch.Tensor, x: torch.Tensor, decay: float = 0.999) -> torch.Tensor:
    """The paper's online k-means step: each centroid moves towards the mean of the tokens it won,
    by ``1 - decay``, and is renormalised (for routing trained along with a model)."""
    xu = _unit(x)
    assign = (xu @ centroids.transpose(1, 2)).argmax(-1)
    sums = torch.zeros_like(centroids).scatter_add_(1, assign[..., None].expand(-1, -1, x.shape[-1]), xu)
    counts = torch.zeros(centroids.shape[:2]).scatter_add_(1, assign, torch.ones(assign.shape))
    mean = sums / counts.clamp(min=1)[..., None]
    won = counts[..., None] > 0
    return F.normalize(torch.where(won, decay * centroids + (1 - decay) * mean, centroids), dim=-1)


def sort_by_cluster(assign: torch.Tensor, clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sort per head: ``assign`` (H, n) -> (order, offsets); positions stay ascending
    within a cluster (a stable sort), which the causal kernel relies on."""
    order = torch.sort(assign, dim=1, stable=True).indices
    counts = torch.zeros(assign.shape[0], clusters, dtype=torch.int64).scatter_add_(
        1, assign, torch.ones_like(assign))
    offsets = F.pad(counts.cumsum(1), (1, 0))
    return order, offsets


def plan(q: torch.Tensor, k: torch.Tensor, clusters: int | None = None, iters: int = 2,
         shared: bool = True, seed: int = 0) -> Plan:
    """Route queries and keys (H, n, d) to ``clusters`` centroids fitted on this sequence."""
    if q.shape != k.shape or q.dim() != 3:
        raise ValueError(f"q and k must both be (heads, tokens, head_dim), got {tuple(q.shape)} and "
                         f"{tuple(k.shape)}; repeat the key heads for grouped-query models first")
    c = clusters or default_clusters(q.shape[1])
    sample = SAMPLE_PER_CLUSTER * c
    if shared:
        both = _unit(q) + _unit(k)      # the argmax below needs no renormalising: the scale is per token
        cent = fit_centroids(both, c, iters, seed, sample)
        order, offsets = sort_by_cluster((both @ cent.transpose(1, 2)).argmax(-1), c)
        return Plan(order, offsets, order, offsets)
    cent = fit_centroids(torch.cat([q, k], dim=1), c, iters, seed, 2 * sample)
    qo, qf = sort_by_cluster((q.float() @ cent.transpose(1, 2)).argmax(-1), c)
    ko, kf = sort_by_cluster((k.float() @ cent.transpose(1, 2)).argmax(-1), c)
    return Plan(qo, qf, ko, kf)


def attend(q, k, v, p: Plan, causal: bool = True) -> torch.Tensor:
    """Attention of each query over the keys of its cluster (the effnb kernel, or its reference)."""
    return ops.cluster_attention(q.contiguous(), k.contiguous(), v.contiguous(),
                                 p.q_order, p.q_offsets, p.k_order, p.k_offsets, causal)


def routing_attention(q, k, v, clusters: int | None = None, iters: int = 2, causal: bool = True,
                      shared: bool = True, seed: int = 0) -> torch.Tensor:
    """:func:`plan` then :func:`attend`: the whole Routing Transformer attention for (H, n, d)."""
    return attend(q, k, v, plan(q, k, clusters, iters, shared, seed), causal)
