"""The plain references the attention kernels are tested against: explicit scores, masks and softmax,
float64 inside, fp32 out. Slow on purpose: a loop per head (and per cluster) that reads like the definition."""
from __future__ import annotations

import math

import torch


def block_summaries(k: torch.Tensor, length: int, block: int) -> torch.Tensor:
    """The mean key of each full block of the first ``length`` rows: (Hkv, length // block, d), fp32.

    What block top-k decoding scores a block by; a decoder keeps it up to date as blocks fill."""
    hkv, _, d = k.shape
    nfull = length // block
    return k[:, :nfull * block].reshape(hkv, nfull, block, d).mean(dim=2)


def selected_blocks(q: torch.Tensor, summary: torch.Tensor, length: int, block: int, topk: int,
                    sink: int = 0) -> list[torch.Tensor]:
    """Per kv head, the indices (ascending) of the first ``sink`` full blocks and the topk others by
    ``max_j q_j . summary[b]`` over the head's query group; ties go to the lower block (a stable sort)."""
    hq, d = q.shape
    hkv = summary.shape[0]
    nfull = length // block
    qg = q.double().reshape(hkv, hq // hkv, d)
    picked = []
    for h in range(hkv):
        scores = (qg[h] @ summary[h, :nfull].double().t()).amax(dim=0) if nfull else torch.zeros(0, dtype=torch.double)
        scores[:sink] = math.inf
        order = torch.sort(scores, descending=True, stable=True).indices
        picked.append(order[:min(topk + sink, nfull)].sort().values)
    return picked


def topk_decode_ref(q, k, v, summary, length: int, block: int, topk: int, sink: int = 0) -> torch.Tensor:
    """Exact softmax attention of each query head over its kv head's selected blocks plus the tail rows
    ``length // block * block .. length - 1``; a query head with no key at all gets a zero row."""
    hq, d = q.shape
    hkv = k.shape[0]
    group, nfull = hq // hkv, length // block
    out = torch.zeros(hq, d, dtype=torch.double)
    tail = torch.arange(nfull * block, length)
    for h, blocks in enumerate(selected_blocks(q, summary, length, block, topk, sink)):
        rows = torch.cat([(blocks[:, None] * block + torch.arange(block)).flatten(), tail])
        if rows.numel() == 0:
            continue
        qh = q[h * group:(h + 1) * group].double()
        att = torch.softmax(qh @ k[h, rows].double().t() / math.sqrt(d), dim=-1)
        out[h * group:(h + 1) * group] = att @ v[h, rows].double()
    return out.float()


def cluster_attention_ref(q, k, v, q_order, q_offsets, k_order, k_offsets, causal: bool = True) -> torch.Tensor:
    """Each query attends the keys of its own cluster (and, if causal, only those at positions <= its own);
    a query with no allowed key gets a zero row."""
    heads, n, d = q.shape
    out = torch.zeros(heads, n, d, dtype=torch.double)
    for h in range(heads):
        for c in range(q_offsets.shape[1] - 1):
            qi = q_order[h, q_offsets[h, c]:q_offsets[h, c + 1]]
            ki = k_order[h, k_offsets[h, c]:k_offsets[h, c + 1]]
            if qi.numel() == 0 or ki.numel() == 0:
                continue
            scores = q[h, qi].double() @ k[h, ki].double().t() / math.sqrt(d)
            allowed = ki[None, :] <= qi[:, None] if causal else torch.ones_like(scores, dtype=torch.bool)
            att = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1)
            att = torch.where(allowed.any(dim=1, keepdim=True), att, 0.0)  # all masked: a zero row, not NaN
            out[h, qi] = att @ v[h, ki].double()
    return out.float()


def clusters_from_labels(labels: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, offsets) from per-token cluster labels (H, n): a stable sort by label, so each cluster's
    tokens stay in position order, and the cumulative cluster sizes (H, C+1)."""
    order = torch.sort(labels, dim=1, stable=True).indices
    counts = torch.zeros(labels.shape[0], n_clusters, dtype=torch.int64).scatter_add_(
        1, labels, torch.ones_like(labels))
    offsets = torch.cat([torch.zeros(labels.shape[0], 1, dtype=torch.int64), counts.cumsum(dim=1)], dim=1)
    return order, offsets
