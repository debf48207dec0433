"""Selective hard attention (AxFormer): each query attends only to its k highest-scoring keys.

Why: AxFormer argues that in some layers most of a softmax's mass spreads over
irrelevant words, and that cutting all but the top-k scores makes the model
both more accurate and cheaper. Here it is a transformers attention function
(``AttentionInterface``) that a layer uses when its attention module carries
``hard_topk``; other layers run ordinary attention. On a CPU the scores are
still computed densely (top-k needs them all), so any saving is in the
softmax-times-values product only; the chapter measures the time.
"""
from __future__ import annotations

import copy

import torch

NAME = "effnb_topk"


def _additive(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """transformers hands a boolean (True = attend) or an additive float mask; make it additive."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=like.dtype).masked_fill(~mask, torch.finfo(like.dtype).min)


def topk_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax over each query's ``module.hard_topk`` best keys (all keys when unset); returns
    [B, n, H, d] like transformers' other attention functions."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    mask = _additive(attention_mask, scores)
    if mask is not None:
        scores = scores + mask
    k = getattr(module, "hard_topk", None)
    if k is not None and k < scores.size(-1):
        cut = scores.topk(k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < cut, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register():
    """The attention function, and its mask builder: an unknown name gets no padding mask at all."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, topk_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def hard_attention_model(bert, k: int, layers: list[int] | None = None):
    """A copy of ``bert`` whose ``layers`` (default: all) attend to their top-``k`` keys only."""
    if k < 1:
        raise ValueError(f"k is the number of keys each query keeps; pass k >= 1, got {k}")
    n = len(bert.encoder.layer)
    chosen = list(range(n)) if layers is None else list(layers)
    if any(not 0 <= i < n for i in chosen):
        raise ValueError(f"layers must be in 0..{n - 1}, got {chosen}")
    _register()
    out = copy.deepcopy(bert)
    out.config._attn_implementation = NAME
    out.set_attn_implementation(NAME) if hasattr(out, "set_attn_implementation") else None
    for i in chosen:
        out.encoder.layer[i].attention.self.hard_topk = k
    return out.eval()
