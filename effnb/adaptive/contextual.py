"""Contextual sparsity in a gated feed-forward layer: read only the neurons this context needs.

Why: at batch-1 decode a language model reads every weight once per token, and
the feed-forward layers hold most of them (59% of SmolLM2-135M's bytes). If a
context uses only some neurons, reading only their rows of ``gate``/``up`` and
columns of ``down`` cuts the bytes, and the time, of a memory-bound step.
Three ways to choose them, all in one module (:class:`ContextualFFN`) that
also keeps the dense layer, so one model serves as the sparse drafter and as
the full model that corrects it (:mod:`.sirius`):

* ``"griffin"``: the top-k neurons by the norm of their activations over the
  prompt (Griffin), chosen at prefill and then read as a dense, smaller FFN;
* ``"cats"``: per token, the neurons whose ``|silu(gate x)|`` passes a
  per-layer threshold calibrated for a target sparsity (CATS); ``gate`` is read
  whole, ``up``/``down`` only where active (the C++ kernel of :mod:`.ops`);
* ``"static"``: the top-k neurons by weight magnitude, the same for every
  context: the static pruning peer at the same bytes as ``griffin``.

``"dense-kernel"`` is the dense layer through the same kernel with every neuron
active: at one token it is faster than torch's three ``F.linear`` calls, so the
full model a sparse mode is timed against is the fastest one available.
"""
from __future__ import annotations

import torch
from torch import nn

from ..lm.model import FeedForward
from . import ops

MODES = ("dense", "dense-kernel", "griffin", "cats", "static")


class ContextualFFN(nn.Module):
    """A gated FFN that runs dense or with ``keep`` of its neurons, chosen by ``mode``."""

    def __init__(self, ffn: FeedForward, keep: float):
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep is the share of neurons kept, in (0, 1], got {keep!r}")
        if ffn.act is not torch.nn.functional.silu:
            raise ValueError("ContextualFFN (and the CATS kernel) is written for SwiGLU (silu) FFNs")
        self.full, self.keep, self.mode = ffn, keep, "dense"
        n = ffn.gate.out_features
        self.k = max(1, round(keep * n))
        self.down_t = ffn.down.weight.detach().t().contiguous()        # a row per neuron, for the kernel
        g, u, d = (m.weight.detach() for m in (ffn.gate, ffn.up, ffn.down))
        magnitude = g.norm(dim=1) * u.norm(dim=1) * d.norm(dim=0)
        self.static = self._slice(magnitude.topk(self.k).indices.sort().values)
        self.griffin = None               # chosen by the next multi-token forward after prime()
        self.select_next = False
        self.threshold = None             # CATS: set by calibrate_cats
        self.active = []                  # CATS: active neurons per call, when recording

    def _slice(self, idx):
        f = self.full
        return (f.gate.weight.detach()[idx].contiguous(), f.up.weight.detach()[idx].contiguous(),
                f.down.weight.detach()[:, idx].contiguous(), idx)

    @staticmethod
    def _run(x, w):
        gate, up, down, _ = w
        return nn.functional.linear(nn.functional.silu(nn.functional.linear(x, gate))
                                    * nn.functional.linear(x, up), down)

    def forward(self, x):
        if self.mode == "dense":
            return self.full(x)
        if self.mode == "dense-kernel":
            return self._cats(x, -1.0)
        if self.mode == "static":
            return self._run(x, self.static)
        if self.mode == "griffin":
            if self.select_next:
                return self._select(x)
            if self.griffin is None:
                raise RuntimeError("griffin mode needs a prompt first: call prime(model) before the prefill")
            return self._run(x, self.griffin)
        if self.threshold is None:
            raise RuntimeError("cats mode needs thresholds: call calibrate_cats(model, ...) first")
        return self._cats(x, self.threshold)

    def _cats(self, x, threshold: float):
        flat = x.reshape(-1, x.shape[-1]).contiguous()
        f = self.full
        if flat.shape[0] > 4:     # many tokens (teacher forcing): the same arithmetic as dense matrix products
            a = nn.functional.silu(f.gate(flat))
            y = f.down(torch.where(a.abs() > threshold, a, 0.0) * f.up(flat))
        else:                     # decode: the kernel reads each weight row once per token, active rows only
            y = ops.cats_ffn(flat, f.gate.weight.detach(), f.up.weight.detach(), self.down_t, threshold)
        return y.reshape(x.shape)

    def _select(self, x):
        """Dense output for the prompt, and the k neurons with the largest activation norm over it."""
        f = self.full
        h = f.act(f.gate(x)) * f.up(x)
        self.prompt_score = h.reshape(-1, h.shape[-1]).norm(dim=0)
        self.choose(self.prompt_score)
        return f.down(h)

    def choose(self, score) -> None:
        """Griffin's neurons: the k with the largest ``score`` (a prompt's activation norms, kept as
        ``prompt_score`` by the prefill that chose them, so another k can reuse them)."""
        self.griffin = self._slice(score.topk(self.k).indices.sort().values)
        self.select_next = False

    def bytes_per_token(self, active: float | None = None) -> int:
        """FFN weight bytes one token reads in this mode (``active``: the CATS share measured)."""
        f = self.full
        one = f.gate.weight.shape[1] * f.gate.weight.element_size()      # a neuron's row in one matrix
        n = f.gate.out_features
        if self.mode in ("dense", "dense-kernel"):
            return 3 * n * one
        if self.mode in ("griffin", "static"):
            return 3 * self.k * one
        share = self.keep if active is None else active
        return n * one + 2 * round(share * n) * one


def contextualize(model, keep: float) -> list[ContextualFFN]:
    """Wrap every block's FFN of ``model`` (an effnb.lm LM) in a :class:`ContextualFFN`, in place."""
    layers = []
    for block in model.layers:
        ffn = block.ffn.full if isinstance(block.ffn, ContextualFFN) else block.ffn
        block.ffn = ContextualFFN(ffn, keep)
        layers.append(block.ffn)
    return layers


def ffns(model) -> list[ContextualFFN]:
    found = [b.ffn for b in model.layers if isinstance(b.ffn, ContextualFFN)]
    if not found:
        raise ValueError("the model has no ContextualFFN layers: call contextualize(model, keep) first")
    return found


def set_mode(model, mode: str) -> None:
    """Run every contextual FFN of ``model`` as ``mode`` (one of :data:`MODES`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for f in ffns(model):
        f.mode = mode


def prime(model) -> None:
    """Let the next multi-token forward (the prefill) choose each layer's Griffin neurons."""
    for f in ffns(model):
        f.select_next = True


@torch.inference_mode()
def calibrate_cats(model, texts_ids, keep: float | None = None) -> list[float]:
    """Per-layer thresholds on ``|silu(gate x)|`` so that ``1 - keep`` of the neurons fall below them
    on calibration text (a list of token-id lists), run through the dense model."""
    layers = ffns(model)
    keep = layers[0].keep if keep is None else keep
    seen = [[] for _ in layers]
    hooks = [f.full.gate.register_forward_hook(
        lambda m, i, out, s=s: s.append(nn.functional.silu(out).abs().reshape(-1).float()))
        for f, s in zip(layers, seen)]
    before = [f.mode for f in layers]
    try:
        set_mode(model, "dense")
        for ids in texts_ids:
            model.hidden(torch.as_tensor(ids)[None])
    finally:
        for h, f, m in zip(hooks, layers, before):
            h.remove()
            f.mode = m
    out = []
    for f, s in zip(layers, seen):
        a = torch.cat(s)
        f.threshold = float(torch.quantile(a[torch.randperm(a.numel(), generator=torch.Generator().manual_seed(0))[:1 << 20]],
                                           1.0 - keep)) if keep < 1 else -1.0
        out.append(f.threshold)
    return out


def ffn_bytes(model, mode: str, active: float | None = None) -> int:
    """Bytes of FFN weights one decode step reads across all layers in ``mode``."""
    total = 0
    for f in ffns(model):
        before, f.mode = f.mode, mode
        total += f.bytes_per_token(active)
        f.mode = before
    return total
