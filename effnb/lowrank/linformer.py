"""Linformer self-attention for transformers' BERT, as a registered attention function.

Why: dense attention scores are ``n x n`` per head, so their time and memory grow as ``n^2``. Linformer
projects the keys and values along the sequence to a fixed length ``k`` (``K' = E K``, ``V' = F V`` with
``E, F [k, n]``), so the scores are ``n x k``: linear in ``n``. Registering it under the name
``"linformer"`` lets an unmodified ``BertModel`` run it: ``BertSelfAttention`` looks its attention function
up by ``config._attn_implementation`` on every call.

The mask, as it reaches the attention function in transformers 5.23: with ``"sdpa"`` it is a 4-D bool
``[B, 1, n, n]`` (True = attend) when the batch has padding and ``None`` when it has none. A custom name
gets ``None`` ALWAYS unless a mask builder is registered for it too (``masking_utils`` skips mask
creation for names it does not know), so padding would silently be attended to; we register sdpa's
builder under ``"linformer"`` as well. A 4-D float (additive, 0 / large negative) mask, e.g. one passed in
already built, is handled too.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

NAME = "linformer"


def key_keep(attention_mask: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """``[B, 1 or H, n]`` bool, True at key positions some query may attend to; None when all may.

    Linformer mixes all keys into each projected key, so a per-query mask cannot survive the projection:
    only the key (padding) pattern is kept, which is all a bidirectional encoder's mask says."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.ndim == 2:                       # [B, n] of 1/0 passed straight through
        return m[:, None, -n:].bool()
    if m.dtype != torch.bool:             # additive float: 0 where attended, very negative where not
        m = m > torch.finfo(m.dtype).min / 2
    return m[..., -n:].any(dim=-2)


def linformer_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None,
                        dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """Queries ``[B, H, n, d]`` attend over ``k`` projected keys and values; returns ``[B, n, H, d]`` (as
    transformers' ``sdpa_attention_forward`` does) and no weights. Padded keys and values are zeroed
    before the projection, so what sits at padded positions cannot leak into real ones."""
    E, Fv = getattr(module, "linformer_E", None), getattr(module, "linformer_F", None)
    if E is None or Fv is None:
        raise ValueError("this attention module has no Linformer projections: build the model with "
                         "effnb.lowrank.linformer_model(bert, k, n_max), which sets them per layer")
    n = key.shape[2]
    if n > E.shape[1]:
        raise ValueError(f"sequence of {n} tokens is longer than the projections' n_max={E.shape[1]}; "
                         f"rebuild with linformer_model(..., n_max>={n})")
    keep = key_keep(attention_mask, n)
    if keep is not None:
        keep = keep[..., None].to(key.dtype)
        key, value = key * keep, value * keep
    e, f = E[:, :n].to(key.dtype), Fv[:, :n].to(value.dtype)
    k_proj = torch.einsum("kn,bhnd->bhkd", e, key)     # one GEMM over all heads
    v_proj = torch.einsum("kn,bhnd->bhkd", f, value)
    out = F.scaled_dot_product_attention(query, k_proj, v_proj, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make ``"linformer"`` a valid ``config._attn_implementation``, with sdpa's mask builder (see module doc)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(NAME, linformer_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


register()


def random_projections(k: int, n_max: int, layers: int, seed: int = 0, dtype=torch.float32):
    """Per layer a pair ``E, F [k, n_max]`` of iid ``N(0, 1/k)`` entries: Johnson-Lindenstrauss scaling, so
    ``||E x|| ~ ||x||`` for a fixed vector ``x``. Seeded, the same for every run."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(k, n_max, generator=g, dtype=torch.float64).to(dtype) / math.sqrt(k),
             torch.randn(k, n_max, generator=g, dtype=torch.float64).to(dtype) / math.sqrt(k))
            for _ in range(layers)]


def set_projections(bert: nn.Module, pairs) -> nn.Module:
    """Store each layer's ``(E, F)`` as buffers ``linformer_E`` / ``linformer_F`` on its self-attention
    (non-persistent: the state dict stays a plain BERT's)."""
    for layer, (e, f) in zip(bert.encoder.layer, pairs, strict=True):
        att = layer.attention.self
        att.register_buffer("linformer_E", e, persistent=False)
        att.register_buffer("linformer_F", f, persistent=False)
    return bert


def linformer_model(bert: nn.Module, k: int, n_max: int, seed: int = 0) -> nn.Module:
    """A deep copy of ``bert`` running Linformer attention with projected length ``k`` for sequences up
    to ``n_max`` tokens.

    The projections are UNTRAINED random Gaussians (:func:`random_projections`): the chapter measures
    time and memory, and :func:`attention_error` states what skipping the training costs in accuracy. A
    trained Linformer learns ``E, F`` (the paper also shares them across heads and layers, as here
    across heads)."""
    for name, v in (("k", k), ("n_max", n_max)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    model = copy.deepcopy(bert)
    dtype = next(model.parameters()).dtype
    set_projections(model, random_projections(k, n_max, len(model.encoder.layer), seed, dtype))
    model.config._attn_implementation = NAME
    return model


def attention_error(bert: nn.Module, linformer_bert: nn.Module, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> float:
    """Relative error ``||h - h'|| / ||h||`` of ``last_hidden_state`` over the real (unpadded) positions:
    what the (untrained) projection costs on these inputs."""
    with torch.inference_mode():
        a = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        b = linformer_bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if attention_mask is not None:
        real = attention_mask.bool()
        a, b = a[real], b[real]
    a, b = a.double(), b.double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(a))
