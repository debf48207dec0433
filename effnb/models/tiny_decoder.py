"""A tiny decoder-only transformer with a key/value cache, and greedy decoding with and without it.

Random weights: chapters use it for what generation costs (latency, cache
traffic, early exit), never for what it says. The torch modules are defined on
first use, so importing this module stays cheap. ``generate_nocache``
recomputes the whole sequence every step: the plain reference the cached
decoder is asserted against.
"""
from __future__ import annotations

import numpy as np


def _positive_ints(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive whole number, got {v!r}")


def _build_decoder_classes():
    """Define the torch modules lazily so importing effnb.models stays cheap."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """Pre-norm attention + MLP; writes its keys/values into the cache slice it is given."""

        def __init__(self, d_model: int, n_heads: int, d_ff: int):
            super().__init__()
            self.n_heads = n_heads
            self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

        def forward(self, x, cache_k=None, cache_v=None, start: int = 0):
            b, t, d = x.shape
            h = self.n_heads
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            if cache_k is not None:  # append this chunk, attend over everything so far
                cache_k[:, :, start:start + t] = k
                cache_v[:, :, start:start + t] = v
                k, v = cache_k[:, :, :start + t], cache_v[:, :, :start + t]
            if t == 1:  # one new token sees the whole past: no mask
                a = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # a chunk after a prefix: row i sees keys 0..start+i
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class TinyDecoder(nn.Module):
        """Decoder-only transformer with random weights: the cost of generation, not its quality."""

        def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, d_ff: int, max_len: int,
                     seed: int):
            super().__init__()
            self.vocab, self.d_model, self.n_layers, self.n_heads, self.max_len = \
                vocab, d_model, n_layers, n_heads, max_len
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Embedding(max_len, d_model)
            self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab, bias=False)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # unit embeddings, small matrices: activations stay well scaled
                for name, p in self.named_parameters():
                    if p.dim() >= 2:
                        std = 1.0 if name in ("embed.weight", "pos.weight") else 0.02
                        p.copy_(torch.randn(p.shape, generator=g) * std)
            self.eval()

        def new_cache(self, batch: int = 1):
            """Key/value buffers for ``max_len`` positions, allocated once and reused across calls."""
            shape = (self.n_layers, batch, self.n_heads, self.max_len, self.d_model // self.n_heads)
            return torch.empty(shape), torch.empty(shape)

        def forward(self, tokens, cache=None, start: int = 0):
            """Logits for ``tokens`` [batch, t] placed at positions start..start+t-1."""
            t = tokens.shape[1]
            if start + t > self.max_len:
                raise ValueError(f"positions up to {start + t} exceed max_len={self.max_len}; "
                                 f"build the model with a larger max_len")
            pos = torch.arange(start, start + t, device=tokens.device)
            x = self.embed(tokens) + self.pos(pos)
            for i, blk in enumerate(self.blocks):
                ck, cv = (cache[0][i], cache[1][i]) if cache is not None else (None, None)
                x = blk(x, ck, cv, start)
            return self.head(self.norm(x))

    return Block, TinyDecoder


_CLASSES = None


def tiny_decoder(*, vocab: int = 512, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int | None = None, max_len: int = 1024, seed: int = 0):
    """Build the small decoder-only transformer (random weights from ``seed``, eval mode)."""
    global _CLASSES
    d_ff = 4 * d_model if d_ff is None else d_ff
    _positive_ints(vocab=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, max_len=max_len)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if _CLASSES is None:
        _CLASSES = _build_decoder_classes()
    return _CLASSES[1](vocab, d_model, n_layers, n_heads, d_ff, max_len, seed)


def flops_per_token(model) -> float:
    """Matrix FLOPs one token costs in a forward pass: 2 per weight of every linear layer.

    The same for a prompt token in prefill and for a generated token in
    decode; attention scores (which grow with context) are left out, as they
    are small next to the projections at these lengths.
    """
    from torch import nn
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _check_generate(model, prompt, new_tokens: int):
    _positive_ints(new_tokens=new_tokens)
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be a [batch, length>=1] tensor of token ids, got shape {tuple(prompt.shape)}")
    total = prompt.shape[1] + new_tokens
    if total > model.max_len:
        raise ValueError(f"prompt ({prompt.shape[1]}) + new_tokens ({new_tokens}) = {total} exceeds "
                         f"max_len={model.max_len}; shorten them or build the model with a larger max_len")


def generate(model, prompt, new_tokens: int, cache=None):
    """Greedy decoding with the KV cache: one prefill pass, then one step per new token.

    Returns the ``new_tokens`` generated ids [batch, new_tokens]. Pass a
    ``cache`` from ``model.new_cache()`` to reuse its buffers across calls.
    """
    import torch
    _check_generate(model, prompt, new_tokens)
    cache = model.new_cache(prompt.shape[0]) if cache is None else cache
    out = []
    with torch.inference_mode():
        logits = model(prompt, cache, 0)                       # prefill: all prompt tokens at once
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        pos = prompt.shape[1]
        for _ in range(new_tokens - 1):                        # decode: one token per step
            logits = model(nxt, cache, pos)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            pos += 1
    return torch.cat(out, dim=1)


def generate_nocache(model, prompt, new_tokens: int):
    """Greedy decoding that recomputes the whole sequence every step: the reference for the cache."""
    import torch
    _check_generate(model, prompt, new_tokens)
    seq = prompt
    with torch.inference_mode():
        for _ in range(new_tokens):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1]:]


__all__ = ["tiny_decoder", "flops_per_token", "generate", "generate_nocache"]
