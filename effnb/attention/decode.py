"""Attention inside a real model (SmolLM2 through :mod:`effnb.lm`): where decode time goes, and
what block top-k decoding and routing prefill do to its predictions.

Why: one decode step reads every weight once and every cached key and value
once, so past some context ``n*`` the cache, not the parameters, is the cost
(Kinetics' point about test-time scaling). :func:`crossover_by_bytes` is that
``n*`` from the byte counts; :func:`decode_split` measures it. Block top-k
(:class:`BlockTopK`) reads only the cache blocks whose mean key scores highest
for the new query; :func:`teacher_forced` says how often it still picks the
full model's next token.
"""
from __future__ import annotations

import contextlib
import math
import warnings
import weakref

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import bench
from ..lm import model as lm_model
from . import ops, routing
from . import reference


def kv_bytes_per_token(cfg, element_size: int = 4) -> int:
    """Bytes of keys and values one token adds to the cache, over all layers."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * element_size


def crossover_by_bytes(model) -> float:
    """The context at which a decode step reads as many cache bytes as weight bytes."""
    size = model.embed.weight.element_size()
    return lm_model.weight_bytes(model) / kv_bytes_per_token(model.cfg, size)


def filled_cache(model, n: int, seed: int = 0) -> lm_model.KVCache:
    """A cache holding ``n`` tokens of random keys and values: for timing only (the cost of
    attention does not depend on the values; block selection barely does)."""
    if n < 1:
        raise ValueError(f"a filled cache needs at least one token, got n={n}")
    cache = model.new_cache(1, n + 1)
    g = torch.Generator().manual_seed(seed)
    for buf in (cache.k, cache.v):
        for t in buf:
            t[:, :, :n] = torch.randn(t[:, :, :n].shape, generator=g)
    cache.length = n
    return cache


class AttentionPatch(nn.Module):
    """One block's attention with its one-token (``decode``) or whole-prompt (``prefill``) step
    swapped; everything else, and any step left as ``None``, runs the original module."""

    def __init__(self, attn, decode=None, prefill=None):
        super().__init__()
        self.attn, self.decode, self.prefill = attn, decode, prefill

    def forward(self, x, cos, sin, cache=None, start=0):
        b, t, _ = x.shape
        one = t == 1 and cache is not None and self.decode is not None
        whole = t > 1 and start == 0 and self.prefill is not None
        if b != 1 or not (one or whole):
            return self.attn(x, cos, sin, cache, start)
        a, c = self.attn, self.attn.cfg
        q, k, v = a.project(x, cos, sin)
        if cache is not None:
            k, v = cache.store(a.layer, k, v, start)
        if one:
            out = self.decode(a.layer, q[0, :, 0], cache, start + 1)[None, :, None]
        else:
            group = c.n_heads // c.n_kv_heads
            out = self.prefill(q[0], k[0].repeat_interleave(group, 0), v[0].repeat_interleave(group, 0))[None]
        return a.o(out.transpose(1, 2).reshape(1, t, c.n_heads * c.head_dim))


@contextlib.contextmanager
def patched(model, decode=None, prefill=None):
    """Run ``model`` with every block's attention patched (restored on exit, even after an error)."""
    originals = [blk.attn for blk in model.layers]
    try:
        for blk in model.layers:
            blk.attn = AttentionPatch(blk.attn, decode, prefill)
        yield model
    finally:
        for blk, attn in zip(model.layers, originals):
            blk.attn = attn


class BlockTopK:
    """Decode attention over the ``keep`` share of full cache blocks: the first ``sink`` blocks (a
    trained model parks unneeded attention on its first tokens) and those whose mean key scores
    highest, plus the unfinished last block. Block means are kept per layer and extended as
    blocks fill, so a step scores ``n / block`` summaries instead of ``n`` keys."""

    def __init__(self, block: int = 64, keep: float = 0.125, sink: int = 1):
        if block < 1 or not 0 < keep <= 1 or sink < 0:
            raise ValueError(f"block={block} must be >= 1, keep={keep} in (0, 1] and sink={sink} >= 0: "
                             f"e.g. block=64, keep=1/8, sink=1")
        self.block, self.keep, self.sink = block, keep, sink
        self.summaries: dict[int, tuple[torch.Tensor, int]] = {}
        self._cache = lambda: None      # a weak reference: summaries must not keep a long cache alive

    def topk(self, length: int) -> int:
        """Scored blocks to pick: the budget of ``keep`` of the full blocks, less the sink blocks."""
        return max(0, math.ceil(self.keep * (length // self.block)) - self.sink)

    def summary(self, layer: int, k: torch.Tensor, length: int) -> torch.Tensor:
        """Means of the full blocks of ``k`` (H, cap, d) up to ``length``, computing only new ones."""
        full = length // self.block
        held, done = self.summaries.get(layer, (None, 0))
        if held is None or held.shape[1] < full:
            grown = k.new_empty(k.shape[0], max(full, 2 * done, 1), k.shape[2])
            if done:
                grown[:, :done] = held[:, :done]
            held = grown
        done = min(done, full)
        if full > done:
            part = k[:, done * self.block:full * self.block]
            held[:, done:full] = reference.block_summaries(part, part.shape[1], self.block)
        self.summaries[layer] = (held, full)
        return held

    def __call__(self, layer: int, q: torch.Tensor, cache, length: int) -> torch.Tensor:
        if cache is not self._cache():          # another cache: its blocks are not the ones summarised
            self.summaries.clear()
            self._cache = weakref.ref(cache)
        k, v = cache.k[layer][0], cache.v[layer][0]
        return ops.topk_decode(q.contiguous(), k, v, self.summary(layer, k, length), length,
                               self.block, self.topk(length), self.sink)


def full_decode(layer: int, q: torch.Tensor, cache, length: int) -> torch.Tensor:
    """Exact decode attention with SDPA (grouped heads folded into rows, as the model does)."""
    k, v = cache.k[layer][0, :, :length], cache.v[layer][0, :, :length]
    hk = k.shape[0]
    return F.scaled_dot_product_attention(q.view(hk, -1, q.shape[-1]), k, v).reshape(q.shape)


def routed_prefill(clusters: int | None = None, iters: int = 2, sink: bool = False):
    """A prefill step that uses routing attention (per head clusters fitted on the prompt). With
    ``sink`` every query also sees the first token, as a masked SDPA (for quality, not speed)."""
    def run(q, k, v):
        if not sink:
            return routing.routing_attention(q, k, v, clusters, iters, causal=True)
        lab = routing.plan(q, k, clusters, iters).labels()
        mask = (lab[:, :, None] == lab[:, None, :]) & _causal(q.shape[1])
        mask[:, :, 0] = True
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return run


def _causal(n: int) -> torch.Tensor:
    i = torch.arange(n)
    return i[None, :] <= i[:, None]


def local_prefill(window: int, sink: bool = False):
    """The content-blind baseline: each query sees its last ``window`` keys (and the first token
    with ``sink``)."""
    def run(q, k, v):
        i = torch.arange(q.shape[1])
        mask = _causal(q.shape[1]) & (i[:, None] - i[None, :] < window)
        if sink:
            mask[:, 0] = True
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return run


@torch.inference_mode()
def decode_split(model, lengths, repeats: int = 5, seed: int = 0, decode=full_decode) -> list[dict]:
    """Per context length: one decode step's time, the time of its attention alone (the same
    ``decode`` calls over every layer's cache: SDPA by default) and the bytes each reads."""
    rows, tok = [], torch.tensor([[1]])
    wbytes, per_tok = lm_model.weight_bytes(model), kv_bytes_per_token(model.cfg)
    for n in lengths:
        cache = filled_cache(model, n, seed)
        q = torch.randn(model.cfg.n_heads, model.cfg.head_dim)

        def step():
            with patched(model, decode=decode):
                model(tok, cache, last_only=True)
            cache.truncate(n)

        def attend():
            for layer in range(model.cfg.n_layers):
                decode(layer, q, cache, n + 1)

        with warnings.catch_warnings():  # the spread goes into the row, not onto stderr
            warnings.simplefilter("ignore", bench.SpreadWarning)
            t_step = bench.measure(step, warmup=1, repeats=repeats)
            t_attn = bench.measure(attend, warmup=1, repeats=repeats)
        rows.append({"context": n, "step_s": t_step.median, "attention_s": t_attn.median,
                     "rest_s": t_step.median - t_attn.median, "weight_bytes": wbytes, "kv_bytes": per_tok * n,
                     "step_spread": t_step.spread, "attention_spread": t_attn.spread})
        del cache
    return rows


def measured_crossover(rows: list[dict]) -> float:
    """The context where attention's time equals the rest of the step's: a straight line through
    attention time vs context, set equal to the median of the rest."""
    n = np.array([r["context"] for r in rows], float)
    a = np.array([r["attention_s"] for r in rows])
    rest = float(np.median([r["rest_s"] for r in rows]))
    slope, icpt = np.polyfit(n, a, 1)
    return float((rest - icpt) / slope) if slope > 1e-12 else float("inf")   # flat: attention never catches up


@torch.inference_mode()
def teacher_forced(model, ids, prompt: int, steps: int, decode=None) -> dict:
    """Prefill ``prompt`` tokens of ``ids``, then feed the next ``steps`` true tokens one at a time;
    the argmax and the log-likelihood of the true next token at every step."""
    ids = torch.as_tensor(ids).flatten()
    if prompt < 1 or steps < 1 or prompt + steps + 1 > ids.numel():
        raise ValueError(f"prompt={prompt} + steps={steps} + 1 must fit in the {ids.numel()} tokens given")
    cache = model.new_cache(1, prompt + steps + 1)
    ctx = patched(model, decode=decode) if decode is not None else contextlib.nullcontext()
    picks, nll = [], []
    with ctx:
        logits = model(ids[None, :prompt], cache, last_only=True)[0, -1]
        for s in range(steps):
            picks.append(int(logits.argmax()))
            nll.append(float(-F.log_softmax(logits.float(), -1)[ids[prompt + s]]))
            logits = model(ids[None, prompt + s:prompt + s + 1], cache, last_only=True)[0, -1]
    return {"argmax": picks, "nll": nll}


@torch.inference_mode()
def token_nll(model, ids, prefill=None, chunk: int = 512) -> torch.Tensor:
    """Negative log-likelihood (nats) of tokens 1.. of ``ids`` in one forward pass over all of
    them, with the prefill attention swapped for ``prefill`` if given (logits made in chunks)."""
    ids = torch.as_tensor(ids).flatten()
    if ids.numel() < 2:
        raise ValueError("token_nll needs at least two tokens")
    ctx = patched(model, prefill=prefill) if prefill is not None else contextlib.nullcontext()
    with ctx:
        h = model.hidden(ids[None])[0, :-1]
    return torch.cat([F.cross_entropy(model.logits(h[i:i + chunk]).float(), ids[i + 1:i + 1 + chunk],
                                      reduction="none") for i in range(0, h.shape[0], chunk)])
