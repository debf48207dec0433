"""Generating text with the key/value cache, and scoring text: perplexity and bits per character.

Why here and not in each chapter: a chapter that changes the model (quantized
Linears, a sparse attention, an early exit) asks the same two questions, "does
it still say the same thing?" (:func:`generate`) and "how much worse does it
predict real text?" (:func:`bits_per_char`), and the answers are comparable
only when both are asked the same way.

Scoring uses sliding windows: ``context`` tokens per window, moving by
``stride``; each window scores only tokens no earlier window scored, so every
token after the first window is predicted from at least ``context - stride``
tokens of history. Bits per character divide the total negative log-likelihood
(in bits) by the characters of the scored tokens (the first token has no
prediction, so its characters are left out), which makes byte models and BPE
models comparable.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _as_batch(ids) -> torch.Tensor:
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] == 0:
        raise ValueError(f"ids must be a non-empty list of token ids or a (batch, t) tensor, got shape "
                         f"{tuple(t.shape)}")
    return t


def _next_token(logits, temperature: float, top_k: int | None, gen: torch.Generator | None):
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[..., 0]


@torch.inference_mode()
def generate(model, ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             seed: int = 0, eos_id: int | None = None, cache=None, progress: bool = False) -> torch.Tensor:
    """The prompt ``ids`` followed by up to ``max_new_tokens`` tokens, ``(batch, t + new)``.

    ``temperature=0`` is greedy; otherwise tokens are sampled from the softmax
    at ``temperature`` (over the ``top_k`` most likely when given) with a
    generator seeded by ``seed``, so a sampled run repeats exactly. The
    prompt is processed in one pass (prefill), then one token per pass with the
    key/value cache (decode). Generation stops early once every sequence has
    produced ``eos_id``. Pass ``cache`` to continue from tokens already in it.
    """
    from ..plots import quiet_tqdm
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive whole number or None, got {top_k!r}")
    x = _as_batch(ids).to(model.embed.weight.device)
    if cache is None:
        cache = model.new_cache(batch=x.shape[0], capacity=x.shape[1] + max_new_tokens)
    gen = torch.Generator(device=x.device).manual_seed(seed) if temperature > 0 else None
    out = [x]
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    logits = model(x, cache, last_only=True)[:, -1]
    for _ in quiet_tqdm()(range(max_new_tokens), desc="generate", disable=not progress, leave=False):
        nxt = _next_token(logits, temperature, top_k, gen)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            done |= nxt == eos_id
        out.append(nxt[:, None])
        if eos_id is not None and bool(done.all()) or len(out) - 1 == max_new_tokens:
            break
        logits = model(nxt[:, None], cache)[:, -1]
    return torch.cat(out, dim=1)


def _check_window(context: int, stride: int | None) -> int:
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ValueError(f"context must be a whole number >= 2 tokens, got {context!r}")
    stride = context // 2 if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context - 1:
        raise ValueError(f"stride must be a whole number in 1..context-1 ({context - 1}), got {stride!r}")
    return stride


@torch.inference_mode()
def score(model, ids, context: int, stride: int | None = None, progress: bool = False) -> dict:
    """Negative log-likelihood (nats) of every token of ``ids`` after the first, by sliding windows of
    ``context`` tokens moved by ``stride`` (default ``context // 2``)."""
    stride = _check_window(context, stride)
    ids = torch.as_tensor(ids, dtype=torch.long).flatten().to(model.embed.weight.device)
    n = ids.numel()
    if n < 2:
        raise ValueError("score needs at least two tokens (the first one is only context)")
    from ..plots import quiet_tqdm
    starts = list(range(0, max(n - context, 0) + stride, stride))
    nll, scored, done = 0.0, 0, 1          # done: tokens before this index are scored (or are the first)
    for begin in quiet_tqdm()(starts, desc="score", disable=not progress, leave=False):
        end = min(begin + context, n)
        if end <= done:
            continue
        h = model.hidden(ids[None, begin:end])[0]
        logits = model.logits(h[done - 1 - begin:end - 1 - begin])   # position p predicts token p + 1
        nll += float(F.cross_entropy(logits.float(), ids[done:end], reduction="sum"))
        scored += end - done
        done = end
    return {"nll": nll, "tokens": scored, "context": context, "stride": stride}


def _encode(tokenizer, text: str) -> list[int]:
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:        # a plain tokenizer without that switch
        return list(tokenizer.encode(text))


def bits_per_char(model, tokenizer, text: str, context: int = 512, stride: int | None = None,
                  progress: bool = False) -> dict:
    """How well ``model`` predicts ``text``: bits per character and per token and the perplexity (per
    token), over windows of ``context`` tokens moved by ``stride`` (see :func:`score`)."""
    ids = _encode(tokenizer, text)
    s = score(model, ids, context, stride, progress)
    chars = len(text) - len(tokenizer.decode(ids[:1]))
    bits = s["nll"] / math.log(2)
    return {**s, "chars": chars, "bits_per_char": bits / chars, "bits_per_token": bits / s["tokens"],
            "perplexity": math.exp(s["nll"] / s["tokens"])}


def perplexity(model, tokenizer, text: str, context: int = 512, stride: int | None = None,
               progress: bool = False) -> float:
    """Per-token perplexity of ``text`` (see :func:`bits_per_char` for the full record)."""
    return bits_per_char(model, tokenizer, text, context, stride, progress)["perplexity"]
