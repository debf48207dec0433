"""Ranking metrics for retrieval: MRR@k, nDCG@k and recall@k with binary relevance.

Why here: every retriever in the book (dense, late interaction, pruned) is
scored the same way, from either a full ``[queries, docs]`` score matrix or the
top-k document lists an index returns.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def topk(scores, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices of the ``k`` best documents per query (best first), ``[Q, min(k, D)]`` on the CPU.
    Works a chunk of queries at a time so the sort's workspace stays small for large corpora;
    ``k`` larger than the corpus returns every document."""
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [queries, docs], got shape {tuple(scores.shape)}")
    k = min(k, scores.shape[1])
    if scores.shape[0] == 0:
        return torch.empty(0, k, dtype=torch.long)
    return torch.cat([torch.topk(scores[i:i + chunk], k, dim=1).indices.cpu()
                      for i in range(0, scores.shape[0], chunk)])


def evaluate(scores_or_ranked, relevant: Sequence[set[int]], ks: Sequence[int] = (10, 100),
             per_query: bool = False) -> dict:
    """Mean MRR@k, nDCG@k and recall@k for each k in ``ks`` (so the defaults give "MRR@10", "nDCG@10" and
    "recall@100" among others). ``scores_or_ranked`` is a ``[Q, D]`` torch/numpy score matrix (higher is
    better) or, as a list, the ranked document indices of each query. nDCG discounts rank r by log2(r + 1)
    and divides by the best DCG possible with min(|relevant|, k) hits. A query with no relevant document
    is an error: it would score 0 and quietly pull the mean down. ``per_query=True`` returns each metric's
    value for every query (numpy arrays in the queries' order) instead of the means: what a paired test
    between two retrievers on the same queries needs."""
    if isinstance(scores_or_ranked, (torch.Tensor, np.ndarray)):
        ranked = topk(scores_or_ranked, max(ks)).tolist()
    else:
        ranked = [list(r) for r in scores_or_ranked]
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")
    if not ranked:
        raise ValueError("no queries to evaluate")
    out = {f"{name}@{k}": np.zeros(len(ranked)) for k in ks for name in ("MRR", "nDCG", "recall")}
    for i, (docs, rel) in enumerate(zip(ranked, relevant)):
        if not rel:
            raise ValueError(f"query {i} has no relevant document")
        hits = [r for r, d in enumerate(docs, start=1) if d in rel]   # 1-based ranks of relevant docs
        for k in ks:
            top = [r for r in hits if r <= k]
            ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
            out[f"MRR@{k}"][i] = 1 / top[0] if top else 0.0
            out[f"nDCG@{k}"][i] = sum(1 / math.log2(r + 1) for r in top) / ideal
            out[f"recall@{k}"][i] = len(top) / len(rel)
    return out if per_query else {name: float(v.mean()) for name, v in out.items()}
