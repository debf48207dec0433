"""One Llama-style decoder for every language model in the book, with a key/value cache.

Why one module: SmolLM2-135M (loaded from its GGUF file) and the tiny byte
models (trained here) share it, so a technique written against it (a quantized
Linear, a sparse attention, an early exit) works on both. It is the Llama
recipe and nothing more: RMSNorm before each sub-layer, rotary positions
(RoPE, configurable base) on queries and keys, grouped-query attention (fewer
key/value heads than query heads), a gated feed-forward layer (SwiGLU by
default), and embeddings tied to the output layer when the config says so.

Every projection is a plain ``nn.Linear`` (q, k, v, o, gate, up, down, head),
so module surgery elsewhere (:func:`linears` lists them) can swap in any
quantized or sparse layer. The :class:`KVCache` holds keys and values of every
layer; ``rewind``/``truncate`` take tokens back out (speculative decoding,
benchmarks that re-decode the same prompt).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}   # silu = SwiGLU, gelu = GeGLU, relu = ReGLU


@dataclass(frozen=True)
class Config:
    """The shape of a model; ``head_dim`` defaults to ``dim // n_heads``."""
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    max_seq: int = 2048            # the RoPE table's first size (it grows on demand)
    rope_base: float = 10_000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    activation: str = "silu"
    head_dim: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Config.{name} must be a positive whole number, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                             f"(each key/value head serves a group of query heads)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if not self.head_dim:
            if self.dim % self.n_heads:
                raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}; pass head_dim")
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary positions")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(**d)


class KVCache:
    """Keys and values of every layer for ``batch`` sequences, ``(batch, n_kv_heads, capacity, head_dim)``.

    ``length`` tokens are held; a forward pass writes its keys/values at
    ``length`` and then advances it. The buffers double when full, so a long
    generation pays for few copies.
    """

    def __init__(self, cfg: Config, batch: int = 1, capacity: int = 256, dtype=torch.float32, device="cpu"):
        self.cfg, self.batch, self.dtype, self.device = cfg, batch, dtype, torch.device(device)
        self.length = 0
        shape = (batch, cfg.n_kv_heads, max(1, capacity), cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, n: int) -> None:
        """Make room for ``n`` tokens in all (copying what is held into larger buffers if needed)."""
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity)
        for buf in (self.k, self.v):
            for i, old in enumerate(buf):
                new = old.new_zeros(old.shape[:2] + (cap,) + old.shape[3:])
                new[:, :, :self.length] = old[:, :, :self.length]
                buf[i] = new

    def store(self, layer: int, k, v, start: int):
        """Write a chunk's keys/values at ``start``; return views of everything up to its end."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` tokens."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def rewind(self, n: int) -> None:
        """Drop the last ``n`` tokens (for example rejected draft tokens)."""
        self.truncate(self.length - n)

    def reset(self) -> None:
        self.length = 0

    def nbytes(self) -> int:
        """Bytes the held tokens occupy (keys and values of every layer)."""
        per = self.batch * self.cfg.n_kv_heads * self.cfg.head_dim * self.k[0].element_size()
        return 2 * self.cfg.n_layers * self.length * per


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in float32 whatever the input's type."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_table(head_dim: int, n: int, base: float, device="cpu"):
    """cos and sin, ``(n, head_dim)``, of position x frequency; the two halves repeat the frequencies
    (the "rotate half" layout that HF checkpoints use)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(n, device=device).float(), inv_freq)
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    """Rotate each pair (i, i + head_dim/2) of ``x`` (..., t, head_dim) by the angle of its position."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query attention: ``n_heads`` query heads share ``n_kv_heads`` key/value heads."""

    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        hd = cfg.head_dim
        self.q = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=False)
        self.o = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)

    def project(self, x, cos, sin):
        """Queries ``(b, n_heads, t, head_dim)``, keys and values ``(b, n_kv_heads, t, head_dim)`` of
        ``x``, queries and keys rotated: what any replacement of the attention itself starts from."""
        b, t, _ = x.shape
        c = self.cfg
        q = self.q(x).view(b, t, c.n_heads, c.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, cache: KVCache | None = None, start: int = 0):
        b, t, _ = x.shape
        c = self.cfg
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.store(self.layer, k, v, start)
        group = c.n_heads // c.n_kv_heads
        if t == 1:
            # one new token: fold each group's query heads into rows of its key/value head (no copy of K/V)
            qg = q.reshape(b, c.n_kv_heads, group, c.head_dim)
            a = F.scaled_dot_product_attention(qg, k, v).reshape(b, c.n_heads, 1, c.head_dim)
        else:
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            if start == 0:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:   # a chunk after cached tokens: row i sees keys 0 .. start + i
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(a.transpose(1, 2).reshape(b, t, c.n_heads * c.head_dim))


class FeedForward(nn.Module):
    """Gated feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.act = ACTIVATIONS[cfg.activation]
        self.gate = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: Config, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)

    def forward(self, x, cos, sin, cache=None, start=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start)
        return x + self.ffn(self.ffn_norm(x))


class LM(nn.Module):
    """Token ids ``(batch, t)`` -> logits ``(batch, t, vocab)`` (or only the last position's)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        cos, sin = rope_table(cfg.head_dim, cfg.max_seq, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def new_cache(self, batch: int = 1, capacity: int = 256) -> KVCache:
        p = self.embed.weight
        return KVCache(self.cfg, batch, capacity, dtype=p.dtype, device=p.device)

    def reset_rope(self, n: int | None = None) -> None:
        """(Re)compute the rotary table for ``n`` positions (after building on the meta device, say)."""
        n = n or self.cfg.max_seq
        self.rope_cos, self.rope_sin = rope_table(self.cfg.head_dim, n, self.cfg.rope_base,
                                                  self.embed.weight.device)

    def _rope(self, start: int, end: int):
        if end > self.rope_cos.shape[0]:
            self.reset_rope(max(end, 2 * self.rope_cos.shape[0]))
        dtype = self.embed.weight.dtype
        return self.rope_cos[start:end].to(dtype), self.rope_sin[start:end].to(dtype)

    def forward(self, ids, cache: KVCache | None = None, last_only: bool = False):
        """With a cache, ``ids`` continue the cached tokens and their keys/values join it."""
        x = self.hidden(ids, cache)
        return self.logits(x[:, -1:] if last_only else x)

    def transpose_head(self) -> "LM":
        """Keep a (dim, vocab) copy of the output layer for inference. At one token, BLAS reads the
        (vocab, dim) matrix of ``F.linear`` about half as fast as its transpose here (49152 x 576: the
        largest matrix of SmolLM2-135M), so decoding uses the copy. It costs the matrix's memory once
        more and is dropped as soon as the head's weight is replaced or changed in place."""
        w = self.head.weight
        self._head_t = (w.detach().t().contiguous(), w, w._version)
        return self

    def logits(self, x):
        """``head(x)``, through the transposed copy of :meth:`transpose_head` when it is still valid."""
        ht = getattr(self, "_head_t", None)
        if ht is not None:
            w = getattr(self.head, "weight", None)
            if isinstance(self.head, nn.Linear) and w is ht[1] and w._version == ht[2] and self.head.bias is None:
                if not (torch.is_grad_enabled() and w.requires_grad):
                    return x @ ht[0]
            else:
                self._head_t = None
        return self.head(x)

    def hidden(self, ids, cache: KVCache | None = None):
        """The final normalized hidden states ``(batch, t, dim)``: ``head`` of them gives the logits
        (call it on the positions you need: a long window's full logits are large)."""
        if ids.dim() == 1:
            ids = ids[None]
        b, t = ids.shape
        start = 0
        if cache is not None:
            if cache.batch != b:
                raise ValueError(f"cache holds {cache.batch} sequences, ids have {b}")
            start = cache.length
            cache.reserve(start + t)
        cos, sin = self._rope(start, start + t)
        x = self.embed(ids)
        for block in self.layers:
            x = block(x, cos, sin, cache, start)
        if cache is not None:
            cache.length = start + t
        return self.norm(x)

    def init_weights(self, seed: int = 0) -> "LM":
        """Fresh weights for training: normal(0, 0.02), the residual outputs scaled by 1/sqrt(2 n_layers)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o.weight", "down.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        return self


def linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` by its dotted name: what a quantization or sparsity pass replaces."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the sub-module ``name`` (dotted) is."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def num_params(model: nn.Module) -> int:
    """Parameters counted once (tied embeddings are one matrix)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def weight_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads: every weight once (a tied embedding as the output layer), and the
    packed weights of modules that say how many bytes they hold (``weight_nbytes``, e.g. quantized
    Linear layers). An embedding that is not also the output layer is not counted: decoding reads
    one row of it per token."""
    params = {id(p): p for p in model.parameters()}
    embed, head = getattr(model, "embed", None), getattr(model, "head", None)
    if isinstance(embed, nn.Embedding) and not (isinstance(head, nn.Linear) and head.weight is embed.weight):
        params.pop(id(embed.weight), None)
    packed = sum(int(getattr(m, "weight_nbytes", 0)) for m in model.modules())
    return packed + sum(p.numel() * p.element_size() for p in params.values())
