"""KV-cache policies for long-context inference on the book's Llama-style models.

Why one interface: a decode step reads every weight once and every cached key
and value once, so past a few thousand tokens the cache is the cost. The four
ways to shrink it that chapter 10 weighs (fewer bits per value, fewer tokens
by position, fewer tokens by attention received, fewer layers that keep the
whole context) differ only in what a cache keeps and how a query reads it. Each
policy here is a cache object with ``attend(layer, q, k, v, start)``: it
stores the new keys and values its way and returns the attention output, and
:func:`serving` swaps every block's attention for one that calls it. A policy
built :meth:`from_dense` holds what it would hold after a full-attention
prefill, so all of them can be scored on one prefill of a long document.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops as cache_ops
from . import kvquant


def attend(q, k, v, held: int) -> torch.Tensor:
    """``q`` (1, Hq, t, d) against ``k, v`` (1, Hkv, held + t, d): every held row is visible, the last
    ``t`` rows (the queries' own tokens) causally. Grouped heads are folded into rows for one token."""
    b, hq, t, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    if t == 1:
        return F.scaled_dot_product_attention(q.reshape(b, hkv, group, d), k, v).reshape(b, hq, 1, d)
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if held == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = torch.ones(t, held + t, dtype=torch.bool).tril(held)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def banded_attention(q, k, v, sink: int, window: int, block: int = 256) -> torch.Tensor:
    """Causal attention where query ``i`` sees the first ``sink`` tokens and the ``window`` tokens up
    to itself: LongGen's sparse layers. Computed in query blocks of ``block`` rows, each against the
    sinks and the ``window + block`` keys it can reach, so the cost grows as ``n * window``, not ``n^2``."""
    b, hq, n, d = q.shape
    group = hq // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    if n <= window + sink:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = torch.empty_like(q)
    pos = torch.arange(n)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        first = max(sink, lo - window + 1)
        keys = torch.cat([pos[:min(sink, first)], pos[first:hi]])
        qi = pos[lo:hi]
        mask = (keys[None] <= qi[:, None]) & ((qi[:, None] - keys[None] < window) | (keys[None] < sink))
        out[:, :, lo:hi] = F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, keys], v[:, :, keys],
                                                          attn_mask=mask)
    return out


class PolicyAttention(nn.Module):
    """A block's attention that hands its rotated queries, keys and values to the cache's policy."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, cos, sin, cache=None, start=0):
        if not hasattr(cache, "attend"):
            return self.attn(x, cos, sin, cache, start)
        a = self.attn
        q, k, v = a.project(x, cos, sin)
        out = cache.attend(a.layer, q, k, v, start)
        b, _, t, _ = out.shape
        return a.o(out.transpose(1, 2).reshape(b, t, -1))


@contextlib.contextmanager
def serving(model):
    """Run ``model`` with attention that defers to a policy cache (restored on exit, even after an
    error). Plain :class:`effnb.lm.model.KVCache` objects still work inside the block."""
    originals = [blk.attn for blk in model.layers]
    try:
        for blk in model.layers:
            blk.attn = PolicyAttention(blk.attn)
        yield model
    finally:
        for blk, attn in zip(model.layers, originals):
            blk.attn = attn


class Policy:
    """What every policy shares: one sequence, a token count, and the model's shape."""
    name = "policy"

    def __init__(self, cfg):
        self.cfg, self.batch, self.length = cfg, 1, 0

    def reserve(self, n: int) -> None:
        """Policies grow on store; the model calls this before every chunk."""

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        self.length = length

    def _check_batch(self, q) -> None:
        if q.shape[0] != 1:
            raise ValueError(f"cache policies hold one sequence; got a batch of {q.shape[0]}: run them one by one")


class DenseCache(Policy):
    """Every key and value in float32 (the baseline), optionally keeping the queries of chosen
    position ranges (``watch``) so an eviction policy can be scored from this prefill."""
    name = "full"

    def __init__(self, cfg, capacity: int = 256, watch: tuple = ()):
        super().__init__(cfg)
        shape = (1, cfg.n_kv_heads, capacity, cfg.head_dim)
        self.k = [torch.zeros(shape) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape) for _ in range(cfg.n_layers)]
        self.watch = [tuple(w) for w in watch]
        self.queries: dict[tuple, list] = {w: [None] * cfg.n_layers for w in self.watch}

    def reserve(self, n: int) -> None:
        cap = self.k[0].shape[2]
        if n > cap:
            for buf in (self.k, self.v):
                for i, old in enumerate(buf):
                    new = old.new_zeros(old.shape[:2] + (max(n, 2 * cap),) + old.shape[3:])
                    new[:, :, :self.length] = old[:, :, :self.length]
                    buf[i] = new

    def attend(self, layer, q, k, v, start):
        self._check_batch(q)
        t = q.shape[2]
        end = start + t
        self.reserve(end)
        self.k[layer][:, :, start:end], self.v[layer][:, :, start:end] = k, v
        for lo, hi in self.watch:
            if start < hi and end > lo:
                self.queries[(lo, hi)][layer] = q[:, :, max(lo, start) - start:min(hi, end) - start].clone()
        return attend(q, self.k[layer][:, :, :end], self.v[layer][:, :, :end], start)

    def nbytes(self) -> int:
        return 2 * self.cfg.n_layers * self.cfg.n_kv_heads * self.length * self.cfg.head_dim * 4

    def keys(self, layer: int, length: int):
        return self.k[layer][:, :, :length], self.v[layer][:, :, :length]


def smoothing_factors(cache: DenseCache, length: int, alpha: float = 0.5) -> list[torch.Tensor]:
    """SmoothAttention's per-channel key scales, one (Hkv, d) tensor per layer: ``max|K|^alpha`` over the
    first ``length`` cached tokens (a calibration prompt), tied across each rotary pair (i, i + d/2) so
    that, as in QServe, the scale could be folded into the key projection before the rotation."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha}: pass a migration strength in [0, 1] (QServe uses 0.5)")
    out = []
    for layer in range(cache.cfg.n_layers):
        peak = cache.k[layer][0, :, :length].abs().amax(1)          # (Hkv, d)
        half = peak.shape[-1] // 2
        tied = torch.maximum(peak[:, :half], peak[:, half:]).repeat(1, 2)
        out.append(tied.clamp_min(1e-4).pow(alpha))
    return out


class QuantizedCache(Policy):
    """Keys and values as ``bits``-bit codes with a scale and a minimum per ``group`` channels of each
    token (:mod:`effnb.longcontext.kvquant`). With ``smooth`` (from :func:`smoothing_factors`) keys are
    divided by the per-channel factor before quantizing and queries multiplied by it (SmoothAttention:
    the product is unchanged, the outlier channels shrink). A one-token step runs the fused kernel on
    the codes; a longer chunk attends dequantized history plus its own tokens in float32."""

    def __init__(self, cfg, bits: int = 4, group: int = 32, smooth: list | None = None):
        super().__init__(cfg)
        self.bits, self.group, self.smooth = bits, group, smooth
        self.name = f"int{bits}" + (" + SmoothAttention" if smooth is not None else "")
        self.k: list = [None] * cfg.n_layers     # (codes, scale, min) per layer
        self.v: list = [None] * cfg.n_layers

    @classmethod
    def from_dense(cls, dense: DenseCache, length: int, **kw) -> "QuantizedCache":
        new = cls(dense.cfg, **kw)
        for layer in range(dense.cfg.n_layers):
            k, v = dense.keys(layer, length)
            new._store(layer, k[0], v[0], 0)
        new.length = length
        return new

    def _store(self, layer, k, v, start):
        """k, v (Hkv, t, d) at ``start``: quantize (keys smoothed) into buffers that double when full."""
        if self.smooth is not None:
            k = k / self.smooth[layer][:, None, :]
        end = start + k.shape[1]
        for name, x in (("k", k), ("v", v)):
            parts = kvquant.quantize_kv(x.contiguous(), self.bits, self.group)
            held = getattr(self, name)[layer]
            if held is None or held[0].shape[1] < end:
                cap = max(end, 2 * (held[0].shape[1] if held is not None else 0))
                grown = tuple(p.new_zeros((p.shape[0], cap) + p.shape[2:]) for p in parts)
                if held is not None:
                    for g, h in zip(grown, held):
                        g[:, :start] = h[:, :start]
                held = grown
                getattr(self, name)[layer] = held
            for h, p in zip(held, parts):
                h[:, start:end] = p

    def _dequantized(self, layer, length):
        k = kvquant.dequantize_kv(*(p[:, :length] for p in self.k[layer]), self.bits, self.group)
        v = kvquant.dequantize_kv(*(p[:, :length] for p in self.v[layer]), self.bits, self.group)
        if self.smooth is not None:
            k = k * self.smooth[layer][:, None, :]
        return k[None], v[None]

    def attend(self, layer, q, k, v, start):
        self._check_batch(q)
        t = q.shape[2]
        if t > 1:   # history as stored, the chunk itself in float32
            hk, hv = self._dequantized(layer, start)
            self._store(layer, k[0], v[0], start)
            return attend(q, torch.cat([hk, k], 2), torch.cat([hv, v], 2), start)
        self._store(layer, k[0], v[0], start)
        qs = q[0, :, 0]
        if self.smooth is not None:
            qs = qs * self.smooth[layer].repeat_interleave(qs.shape[0] // self.smooth[layer].shape[0], 0)
        return cache_ops.kv_decode(qs.contiguous(), *self.k[layer], *self.v[layer], start + 1,
                                       self.bits)[None, :, None]

    def nbytes(self) -> int:
        c = self.cfg
        return c.n_layers * kvquant.kv_bytes(self.length, c.n_kv_heads, c.head_dim, self.bits, self.group)


class SinkWindowCache(Policy):
    """StreamingLLM's cache: the first ``sink`` tokens and a ring buffer of the last ``window``. Keys
    are stored rotated, so their order in the buffer does not matter to attention."""

    def __init__(self, cfg, sink: int = 4, window: int = 1024, layers=None):
        super().__init__(cfg)
        if sink < 0 or window < 1:
            raise ValueError(f"sink={sink} must be >= 0 and window={window} >= 1 (e.g. sink=4, window=1024)")
        self.sink, self.window = sink, window
        self.name = f"sink {sink} + window {window}"
        shape = (1, cfg.n_kv_heads, sink + window, cfg.head_dim)
        self.layers = set(range(cfg.n_layers)) if layers is None else set(layers)
        self.k = {i: torch.zeros(shape) for i in self.layers}
        self.v = {i: torch.zeros(shape) for i in self.layers}

    @classmethod
    def from_dense(cls, dense: DenseCache, length: int, **kw) -> "SinkWindowCache":
        new = cls(dense.cfg, **kw)
        for layer in new.layers:
            k, v = dense.keys(layer, length)
            new._store(layer, k, v, 0)
        new.length = length
        return new

    def slot(self, pos: torch.Tensor) -> torch.Tensor:
        """Buffer row of each absolute position (sinks fixed, the rest round the ring)."""
        return torch.where(pos < self.sink, pos, self.sink + (pos - self.sink) % self.window)

    def held(self, length: int) -> int:
        return min(length, self.sink + self.window)

    def _store(self, layer, k, v, start):
        t = k.shape[2]
        pos = torch.arange(start, start + t)
        keep = (pos < self.sink) | (pos >= start + t - self.window)
        rows = self.slot(pos[keep])
        self.k[layer][:, :, rows], self.v[layer][:, :, rows] = k[:, :, keep], v[:, :, keep]

    def attend(self, layer, q, k, v, start):
        self._check_batch(q)
        t = q.shape[2]
        held = self.held(start)
        if start == 0 and t > 1:
            out = banded_attention(q, k, v, self.sink, self.window)
        else:
            out = attend(q, torch.cat([self.k[layer][:, :, :held], k], 2),
                         torch.cat([self.v[layer][:, :, :held], v], 2), held)
        self._store(layer, k, v, start)
        return out

    def nbytes(self) -> int:
        c = self.cfg
        return 2 * len(self.layers) * c.n_kv_heads * self.held(self.length) * c.head_dim * 4


class HybridCache(Policy):
    """LongGen's hybrid: full attention (and a full cache) in ``full_layers``, sinks plus a sliding
    window (attention and cache) in every other layer."""

    def __init__(self, cfg, full_layers, sink: int = 4, window: int = 1024):
        super().__init__(cfg)
        self.full_layers = sorted(set(full_layers))
        if any(not 0 <= i < cfg.n_layers for i in self.full_layers):
            raise ValueError(f"full_layers={self.full_layers}: pass layer numbers in 0..{cfg.n_layers - 1}")
        self.dense = DenseCache(cfg)
        self.local = SinkWindowCache(cfg, sink, window, [i for i in range(cfg.n_layers) if i not in self.full_layers])
        self.name = f"hybrid: {len(self.full_layers)} full layers, others sink {sink} + window {window}"

    def attend(self, layer, q, k, v, start):
        part = self.dense if layer in self.full_layers else self.local
        part.length = self.length
        return part.attend(layer, q, k, v, start)

    def truncate(self, length: int) -> None:
        super().truncate(length)
        self.dense.length = self.local.length = length

    def nbytes(self) -> int:
        self.dense.length = self.local.length = self.length
        full = 2 * len(self.full_layers) * self.cfg.n_kv_heads * self.length * self.cfg.head_dim * 4
        return full + self.local.nbytes()


class HeavyHitterCache(Policy):
    """H2O's cache: per KV head, the ``recent`` last tokens plus the ``budget - recent`` earlier tokens
    that received the most attention from the queries watched in the prefill (summed over the query
    heads of the group), the first ``sink`` tokens always among them."""

    def __init__(self, cfg, budget: int, recent: int, sink: int = 4):
        super().__init__(cfg)
        if not 0 < recent <= budget:
            raise ValueError(f"recent={recent}, budget={budget}: pass 0 < recent <= budget")
        self.budget, self.recent, self.sink = budget, recent, sink
        self.name = f"H2O: {budget} tokens ({recent} recent)"
        self.k: list = [None] * cfg.n_layers
        self.v: list = [None] * cfg.n_layers

    @classmethod
    def from_dense(cls, dense: DenseCache, length: int, window: tuple, **kw) -> "HeavyHitterCache":
        """Keep what the queries of ``window`` (a range watched by ``dense``, ending at ``length``)
        attended most."""
        new = cls(dense.cfg, **kw)
        lo, hi = window
        if hi != length or window not in dense.queries:
            raise ValueError(f"window {window} must be watched by the dense cache and end at length={length}")
        for layer in range(dense.cfg.n_layers):
            k, v = dense.keys(layer, length)
            q = dense.queries[window][layer]                           # (1, Hq, w, d)
            group = q.shape[1] // k.shape[1]
            scores = q @ k.repeat_interleave(group, 1).transpose(-1, -2) / math.sqrt(q.shape[-1])
            causal = torch.arange(length)[None] <= torch.arange(lo, hi)[:, None]
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            received = probs.sum(2).view(k.shape[1], group, length).sum(1)   # (Hkv, length)
            received[:, :new.sink] = float("inf")
            received[:, max(0, length - new.recent):] = float("inf")
            n = min(new.budget, length)
            rows = received.topk(n, dim=-1).indices.sort(-1).values           # (Hkv, n)
            idx = rows[None, :, :, None].expand(1, -1, -1, k.shape[-1])
            new.k[layer], new.v[layer] = k.gather(2, idx), v.gather(2, idx)
        new.length = length
        return new

    def attend(self, layer, q, k, v, start):
        self._check_batch(q)
        held = self.k[layer].shape[2]
        out = attend(q, torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2), held)
        self.k[layer], self.v[layer] = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        return out

    def truncate(self, length: int) -> None:
        drop = self.length - length
        super().truncate(length)
        if drop:
            self.k = [k[:, :, :k.shape[2] - drop] for k in self.k]
            self.v = [v[:, :, :v.shape[2] - drop] for v in self.v]

    def nbytes(self) -> int:
        return sum(2 * k.numel() * 4 for k in self.k if k is not None)
