"""Sirius: decode with the contextually sparse model, let the full model correct it now and then.

Why: contextual sparsity alone drifts on reasoning-like text (one wrong token
and the rest follows it); Sirius runs the sparse model for ``period - 1``
tokens, then the full model reads the whole block in ONE forward (the weights
once for ``period`` tokens: about the price of one decode step when decode is
memory-bound), keeps the block up to the first token it disagrees with, puts
its own token there and rewinds the key/value cache to that point. The full
model's pass also rewrites the block's keys and values, so the cache the
sparse model continues from is the full model's.

``tolerance`` sets what "disagrees" means: a drafted token is kept when the
full model gives it at least ``tolerance`` times the probability of its own
top token. At 1.0 the output is exactly the full model's greedy output (this is
then self-speculative decoding); lower values accept more and correct less,
which is Sirius's relaxed check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .contextual import prime, set_mode


@dataclass
class Generation:
    tokens: list[int]          # the new tokens only
    seconds: float             # prefill + decode
    full_passes: int           # forwards of the full model (prefill included)
    sparse_steps: int          # one-token forwards of the sparse model
    corrections: int           # blocks where the full model replaced a drafted token

    @property
    def ms_per_token(self) -> float:
        return 1e3 * self.seconds / max(1, len(self.tokens))


def prefill(model, x, sparse: str, cache):
    """The prompt through the full model; in Griffin mode the same pass chooses the neurons."""
    if sparse == "griffin":
        set_mode(model, "griffin")
        prime(model)
    else:
        set_mode(model, "dense")
    return model(x, cache, last_only=True)[0, -1]


def _check(max_new_tokens, period, tolerance):
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if isinstance(period, bool) or not isinstance(period, int) or period < 2:
        raise ValueError(f"period (tokens per corrected block) must be a whole number >= 2, got {period!r}")
    if not 0.0 < tolerance <= 1.0:
        raise ValueError(f"tolerance must be in (0, 1] (1 = keep only the full model's greedy tokens), "
                         f"got {tolerance!r}")


@torch.inference_mode()
def sirius_generate(model, ids, max_new_tokens: int, sparse: str = "griffin", period: int = 8,
                    tolerance: float = 1.0) -> Generation:
    """Greedy decode of ``max_new_tokens`` after ``ids`` (a list of token ids), sparse with correction."""
    _check(max_new_tokens, period, tolerance)
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    t0 = time.perf_counter()
    cache = model.new_cache(1, x.shape[1] + max_new_tokens + period + 1)
    nxt = int(prefill(model, x, sparse, cache).argmax())
    out, passes, steps, corrections = [], 1, 0, 0
    while len(out) < max_new_tokens:
        start = cache.length                      # where block[0] goes
        block = [nxt]                             # block[0] came from the full model
        set_mode(model, sparse)
        while len(block) < period and len(out) + len(block) < max_new_tokens:
            logits = model(torch.tensor([[block[-1]]]), cache)[0, -1]
            block.append(int(logits.argmax()))
            steps += 1
        if len(block) == 1 and len(out) + 1 >= max_new_tokens:
            out.append(nxt)
            break
        cache.truncate(start)
        set_mode(model, "dense")
        probs = torch.softmax(model(torch.tensor([block]), cache)[0].float(), -1)   # probs[i]: after block[i]
        passes += 1
        keep = 1
        while keep < len(block) and probs[keep - 1, block[keep]] >= tolerance * probs[keep - 1].max():
            keep += 1
        corrections += keep < len(block)
        out.extend(block[:keep])
        cache.truncate(start + keep)
        nxt = int(probs[keep - 1].argmax())
    return Generation(out[:max_new_tokens], time.perf_counter() - t0, passes, steps, corrections)


@torch.inference_mode()
def plain_generate(model, ids, max_new_tokens: int, mode: str = "dense") -> Generation:
    """The same greedy loop without correction: the full model (``"dense"``) or a sparse mode alone."""
    _check(max_new_tokens, 2, 1.0)
    x = torch.as_tensor(ids, dtype=torch.long)[None]
    t0 = time.perf_counter()
    cache = model.new_cache(1, x.shape[1] + max_new_tokens + 1)
    nxt = int(prefill(model, x, mode, cache).argmax())
    set_mode(model, mode)
    out = [nxt]
    while len(out) < max_new_tokens:
        out.append(int(model(torch.tensor([[out[-1]]]), cache)[0, -1].argmax()))
    dense = mode in ("dense", "dense-kernel")            # the prefill is the full model's in every mode
    return Generation(out, time.perf_counter() - t0, len(out) if dense else 1, 0 if dense else len(out) - 1, 0)


@torch.inference_mode()
def teacher_forced_agreement(model, ids, continuation, mode: str) -> float:
    """Share of ``continuation``'s tokens that ``mode`` predicts as its top token when fed the true
    history (the prompt ``ids`` chooses Griffin's neurons first): a per-token view of drift."""
    x = torch.as_tensor(list(ids), dtype=torch.long)[None]
    cache = model.new_cache(1, x.shape[1] + len(continuation) + 1)
    first = int(prefill(model, x, mode, cache).argmax())
    return agreement_after_prefill(model, cache, first, continuation, mode)


@torch.inference_mode()
def agreement_after_prefill(model, cache, first: int, continuation, mode: str) -> float:
    """:func:`teacher_forced_agreement` from a prompt already in ``cache`` (``first``: the full model's
    next token after it). The prefill is the full model's in every mode, so one serves them all; the
    cache is left holding the prompt only."""
    n = cache.length
    set_mode(model, mode)
    rest = model(torch.tensor([list(continuation[:-1])]), cache)[0].argmax(-1).tolist() if len(continuation) > 1 else []
    cache.truncate(n)
    pred = [first] + rest
    return sum(int(p == c) for p, c in zip(pred, continuation)) / len(continuation)
