"""Entropy adaptive decoding (EAD): a small model writes, a large one steps in when the small one is unsure.

Why: the claim (96.7% of the large model's quality while running it on 43% of
tokens) is a claim about two things at once, how good the mixed predictor is
and what it costs. :func:`teacher_forced` + :func:`ead_curve` measure the
first on real text (every position scored once, the sliding-window
convention of :func:`effnb.lm.generate.score`); :func:`ead_generate` is the
real decode loop, where the large model's key/value cache lags and must
catch up on the tokens it skipped, and :func:`speculative_generate` is the
exact alternative (same output as the large model, by construction) that
puts both on one cost curve (:func:`decode_study`).

Everything is greedy and batch 1: "switching" is a per-sequence decision.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..lm.model import weight_bytes

LN2 = math.log(2)


# ---------------------------------------------------------------- checks

def _check_pair(small, large) -> None:
    vs, vl = small.cfg.vocab_size, large.cfg.vocab_size
    if vs != vl:
        raise ValueError(f"small and large models must share a vocabulary (same tokenizer); got vocab sizes "
                         f"{vs} and {vl}: pass two models of the same family (e.g. byte-xs and byte-s)")


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a real number of nats (float('inf') = never switch, "
                         f"float('-inf') = always), got {threshold!r}")
    return float(threshold)


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be a whole number >= {lo}, got {v!r}")
    return v


def _check_prompt(prompt_ids) -> list[int]:
    t = torch.as_tensor(prompt_ids, dtype=torch.long)
    if t.dim() > 2 or (t.dim() == 2 and t.shape[0] != 1):
        raise ValueError(f"prompt_ids must be one sequence (a list of token ids), got shape {tuple(t.shape)}")
    ids = t.flatten().tolist()
    if not ids:
        raise ValueError("prompt_ids is empty: pass at least one token id (the model needs something to continue)")
    return ids


def _check_vocab(ids: list[int], vocab: int) -> None:
    if min(ids) < 0 or max(ids) >= vocab:
        raise ValueError(f"token ids must lie in 0..{vocab - 1} (the models' vocabulary), got {min(ids)}..{max(ids)}")


def _checked_start(small, large, prompt_ids, max_new_tokens) -> list[int]:
    """The checks every two-model decode loop makes before any work; the prompt as a list to extend."""
    _check_pair(small, large)
    _check_int("max_new_tokens", max_new_tokens, 0)
    seq = _check_prompt(prompt_ids)
    _check_vocab(seq, small.cfg.vocab_size)
    return seq


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the softmax over the last axis."""
    logp = F.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- teacher forcing on real text

@dataclass
class TeacherForced:
    """Per position t (predicting token t+1): the small model's entropy (nats), each model's argmax and
    log-prob (nats) of the true next token; plus the models' weight bytes for the cost column."""
    target: torch.Tensor
    entropy: torch.Tensor
    small_argmax: torch.Tensor
    large_argmax: torch.Tensor
    small_logp: torch.Tensor
    large_logp: torch.Tensor
    small_bytes: int
    large_bytes: int
    context: int
    stride: int

    def __len__(self) -> int:
        return self.target.numel()


@torch.inference_mode()
def teacher_forced(small, large, ids, context: int = 256, stride: int = 128) -> TeacherForced:
    """Both models over ``ids`` by sliding windows of ``context`` tokens moved by ``stride``; each position
    is scored once, by the first window that reaches it (the convention of ``generate.score``)."""
    from ..lm.generate import _check_window
    _check_pair(small, large)
    stride = _check_window(context, stride)
    ids = torch.as_tensor(ids, dtype=torch.long).flatten()
    n = ids.numel()
    if n < 2:
        raise ValueError("teacher_forced needs at least two token ids (the first one is only context)")
    _check_vocab(ids.tolist(), small.cfg.vocab_size)
    parts = {k: [] for k in ("entropy", "small_argmax", "large_argmax", "small_logp", "large_logp")}
    done = 1
    for begin in range(0, max(n - context, 0) + stride, stride):
        end = min(begin + context, n)
        if end <= done:
            continue
        tgt = ids[done:end]
        for name, model in (("small", small), ("large", large)):
            dev = model.embed.weight.device
            h = model.hidden(ids[None, begin:end].to(dev))[0]
            logp = F.log_softmax(model.logits(h[done - 1 - begin:end - 1 - begin]).float(), -1).cpu()
            parts[f"{name}_argmax"].append(logp.argmax(-1))
            parts[f"{name}_logp"].append(logp.gather(-1, tgt[:, None])[:, 0])
            if name == "small":
                parts["entropy"].append(-(logp.exp() * logp).sum(-1))
        done = end
    return TeacherForced(target=ids[1:].clone(), **{k: torch.cat(v) for k, v in parts.items()},
                         small_bytes=weight_bytes(small), large_bytes=weight_bytes(large),
                         context=context, stride=stride)


def rolling_entropy(entropy, window: int) -> torch.Tensor:
    """Causal rolling mean: position t averages positions t-window+1..t (fewer at the start). It includes t
    because the small model's distribution for the token being chosen is known before choosing."""
    _check_int("window", window, 1)
    e = torch.as_tensor(entropy, dtype=torch.float64).flatten()
    c = torch.cat([e.new_zeros(1), e.cumsum(0)])
    idx = torch.arange(1, e.numel() + 1)
    lo = (idx - window).clamp(min=0)
    return ((c[idx] - c[lo]) / (idx - lo)).to(torch.float32)


def ead_curve(stats: TeacherForced, thresholds, window: int, speculative: "Decoded | float | None" = None):
    """Per threshold: the share of positions the large model predicts (rolling entropy > threshold), the
    mixed predictor's next-token accuracy and bits per token (per byte for the byte models; the log-prob
    of the model chosen), each also as a % of the large model alone (for bits,
    ``100 * large_bits / bits``: 100 = as good as large), and the cost
    in weight bytes read per token (small on every token + large on its share) and as a % of large alone.

    This cost is a lower bound for a real decode: there the large model must also catch up on the tokens
    it skipped (one batched forward, see :func:`ead_generate`); in a memory-bound decode that forward costs
    about one pass, so the bound holds when the switches come in runs. ``speculative``, a result of
    :func:`speculative_generate` (or the weight bytes per token it read, :func:`decode_study`'s column),
    adds its point: the large model's quality at that cost.
    """
    import pandas as pd
    window = _check_int("window", window, 1)
    thresholds = [_check_threshold(t) for t in thresholds]
    roll = rolling_entropy(stats.entropy, window)
    tgt = stats.target
    sb, lb = stats.small_bytes, stats.large_bytes

    def row(method, thr, use_large, bytes_per_token):
        correct = torch.where(use_large, stats.large_argmax, stats.small_argmax) == tgt
        bits = float(-torch.where(use_large, stats.large_logp, stats.small_logp).double().mean()) / LN2
        return {"method": method, "threshold": thr, "large_share": float(use_large.float().mean()),
                "accuracy": float(correct.float().mean()), "bits_per_token": bits,
                "weight_bytes_per_token": bytes_per_token}

    rows = [row("small only", math.inf, torch.zeros_like(tgt, dtype=torch.bool), sb),
            row("large only", -math.inf, torch.ones_like(tgt, dtype=torch.bool), lb)]
    for thr in thresholds:
        use = roll > thr
        rows.append(row("ead", thr, use, sb + float(use.float().mean()) * lb))
    if speculative is not None:
        cost = getattr(speculative, "weight_bytes_per_token", speculative)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not cost > 0:
            raise ValueError(f"speculative must be a speculative_generate result or its weight bytes per token "
                             f"(> 0), got {speculative!r}")
        r = row("speculative", math.nan, torch.ones_like(tgt, dtype=torch.bool), float(cost))
        r["large_share"] = 1.0
        rows.append(r)
    df = pd.DataFrame(rows)
    big = rows[1]
    df["acc_pct_of_large"] = 100 * df["accuracy"] / big["accuracy"]
    df["bits_pct_of_large"] = 100 * big["bits_per_token"] / df["bits_per_token"]
    df["cost_pct_of_large"] = 100 * df["weight_bytes_per_token"] / lb
    return df


# ---------------------------------------------------------------- decoding

@dataclass
class Decoded:
    """New tokens (the prompt left out) and what it took: forward passes and tokens each model processed,
    the share of new tokens the large model chose, drafts accepted (speculative) and wall seconds."""
    tokens: list
    large_share: float
    large_passes: int
    large_tokens: int
    small_passes: int
    small_tokens: int
    seconds: float
    small_bytes: int
    large_bytes: int
    acceptance: float = math.nan

    @property
    def weight_bytes_per_token(self) -> float:
        """Weight bytes read per new token when every forward pass reads each weight once (memory bound)."""
        return (self.small_passes * self.small_bytes + self.large_passes * self.large_bytes) / max(1, len(self.tokens))


def _forward(model, cache, ids: list[int], last: int = 1) -> torch.Tensor:
    """Feed ``ids`` after what ``cache`` holds; the logits of the last ``last`` positions, ``(last, vocab)``."""
    x = torch.tensor([ids], dtype=torch.long, device=model.embed.weight.device)
    return model.logits(model.hidden(x, cache)[0, -last:]).float()


def _catch_up(model, cache, seq: list[int]) -> torch.Tensor:
    """Bring a lagging ``cache`` up to ``seq`` in ONE forward over the tokens it lacks; the next-token logits."""
    return _forward(model, cache, seq[cache.length:])[-1]


def _plain(model, prompt_ids, max_new_tokens: int, role: str, other_bytes: int) -> Decoded:
    """One model, greedy: prefill the prompt, then one token per forward (the loop of :func:`ead_generate`)."""
    ids = _check_prompt(prompt_ids)
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_vocab(ids, model.cfg.vocab_size)
    t0 = time.perf_counter()
    with torch.inference_mode():
        cache = model.new_cache(1, len(ids) + max_new_tokens)
        logits = _forward(model, cache, ids)[-1]
        out, passes, fed = [], 1, len(ids)
        while len(out) < max_new_tokens:
            out.append(int(logits.argmax()))
            if len(out) < max_new_tokens:
                logits = _forward(model, cache, out[-1:])[-1]
                passes, fed = passes + 1, fed + 1
    secs = time.perf_counter() - t0
    wb = weight_bytes(model)
    if role == "large":
        return Decoded(out, 1.0, passes, fed, 0, 0, secs, other_bytes, wb)
    return Decoded(out, 0.0, 0, 0, passes, fed, secs, wb, other_bytes)


def large_only_generate(small, large, prompt_ids, max_new_tokens: int) -> Decoded:
    """The large model alone, greedy (``small`` only names the pair, for the cost bookkeeping)."""
    _check_pair(small, large)
    return _plain(large, prompt_ids, max_new_tokens, "large", weight_bytes(small))


def small_only_generate(small, large, prompt_ids, max_new_tokens: int) -> Decoded:
    """The small model alone, greedy."""
    _check_pair(small, large)
    return _plain(small, prompt_ids, max_new_tokens, "small", weight_bytes(large))


def ead_generate(small, large, prompt_ids, max_new_tokens: int, threshold: float, window: int) -> Decoded:
    """Greedy EAD. The small model runs on every token, so its cache is always current and its entropy
    known; the rolling mean over the last ``window`` of them (the prompt's included) above ``threshold``
    hands the next token to the large model, which first catches up in ONE forward over every token it has
    not seen (the prompt, the first time); so both caches always hold a prefix of the same sequence."""
    threshold = _check_threshold(threshold)
    window = _check_int("window", window, 1)
    seq = _checked_start(small, large, prompt_ids, max_new_tokens)
    n0 = len(seq)
    t0 = time.perf_counter()
    with torch.inference_mode():
        sc, lc = small.new_cache(1, n0 + max_new_tokens), large.new_cache(1, n0 + max_new_tokens)
        logits = _forward(small, sc, seq, last=min(window, n0))
        ent = _entropy(logits).tolist()
        logits = logits[-1]
        sp, st, lp, lt, chose = 1, n0, 0, 0, 0
        while len(seq) - n0 < max_new_tokens:
            if sum(ent[-window:]) / len(ent[-window:]) > threshold:
                lt += len(seq) - lc.length
                tok = int(_catch_up(large, lc, seq).argmax())
                lp, chose = lp + 1, chose + 1
            else:
                tok = int(logits.argmax())
            seq.append(tok)
            if len(seq) - n0 < max_new_tokens:
                logits = _forward(small, sc, [tok])[-1]
                ent.append(float(_entropy(logits)))
                sp, st = sp + 1, st + 1
    secs = time.perf_counter() - t0
    new = seq[n0:]
    return Decoded(new, chose / max(1, len(new)), lp, lt, sp, st, secs, weight_bytes(small), weight_bytes(large))


def speculative_generate(small, large, prompt_ids, max_new_tokens: int, draft: int = 4) -> Decoded:
    """Greedy, exact speculative decoding: the small model drafts up to ``draft`` tokens, the large model
    checks them in one forward, keeps the longest prefix that matches its own argmax plus its own next
    token, and both caches are truncated to the tokens kept; so the output is the large model's greedy
    output. ``acceptance`` = drafts kept / drafts proposed."""
    draft = _check_int("draft", draft, 1)
    seq = _checked_start(small, large, prompt_ids, max_new_tokens)
    n0 = len(seq)
    t0 = time.perf_counter()
    with torch.inference_mode():
        cap = n0 + max_new_tokens + draft + 1
        sc, lc = small.new_cache(1, cap), large.new_cache(1, cap)
        sp = st = lp = lt = proposed = kept = 0
        while len(seq) - n0 < max_new_tokens:
            k = min(draft, max_new_tokens - (len(seq) - n0) - 1)   # the large model adds one more
            drafts = []
            if k > 0:
                todo = seq[sc.length:]
                for _ in range(k):
                    drafts.append(int(_forward(small, sc, todo)[-1].argmax()))
                    sp, st = sp + 1, st + len(todo)
                    todo = drafts[-1:]
                # the small cache now holds seq + drafts[:-1]
            todo = seq[lc.length:] + drafts
            own = _forward(large, lc, todo, last=k + 1).argmax(-1).tolist()
            lp, lt = lp + 1, lt + len(todo)
            m = 0
            while m < k and drafts[m] == own[m]:
                m += 1
            proposed, kept = proposed + k, kept + m
            n = len(seq)
            seq += drafts[:m] + [own[m]]
            lc.truncate(n + m)                        # keeps seq up to the last accepted draft
            sc.truncate(min(sc.length, n + m))
    secs = time.perf_counter() - t0
    new = seq[n0:]
    return Decoded(new, 1.0, lp, lt, sp, st, secs, weight_bytes(small), weight_bytes(large),
                   acceptance=kept / proposed if proposed else math.nan)


def agreement(tokens: list, ref: list) -> tuple[float, int]:
    """Share of positions equal to ``ref`` and the length of the common prefix."""
    same = [a == b for a, b in zip(tokens, ref)]
    prefix = next((i for i, s in enumerate(same) if not s), len(same))
    return (sum(same) / len(ref) if ref else 1.0), prefix


def decode_study(small, large, prompts, max_new_tokens: int, thresholds, window: int, draft: int = 4,
                 repeats: int = 3):
    """Time per generated token (median of ``repeats`` after one warm-up) of large-only, small-only, EAD at
    each threshold and speculative decoding over ``prompts``, with the large share, the passes and weight
    bytes per token, and agreement with the large model's greedy continuation (positional share and mean
    common-prefix length); one row per method, a pandas DataFrame."""
    import pandas as pd
    _check_pair(small, large)
    thresholds = [_check_threshold(t) for t in thresholds]
    window = _check_int("window", window, 1)
    draft = _check_int("draft", draft, 1)
    repeats = _check_int("repeats", repeats, 1)
    _check_int("max_new_tokens", max_new_tokens, 1)
    prompts = [_check_prompt(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts is empty: pass a list of prompts (lists of token ids)")
    for p in prompts:
        _check_vocab(p, small.cfg.vocab_size)
    methods = [("large only", None, lambda p: large_only_generate(small, large, p, max_new_tokens)),
               ("small only", None, lambda p: small_only_generate(small, large, p, max_new_tokens))]
    methods += [("ead", t, lambda p, t=t: ead_generate(small, large, p, max_new_tokens, t, window))
                for t in thresholds]
    methods.append(("speculative", None, lambda p: speculative_generate(small, large, p, max_new_tokens, draft)))
    refs = [large_only_generate(small, large, p, max_new_tokens).tokens for p in prompts]
    rows = []
    for name, thr, fn in methods:
        secs, res = 0.0, []
        for p in prompts:
            fn(p)                                          # warm-up
            runs = [fn(p) for _ in range(repeats)]
            secs += statistics.median(r.seconds for r in runs)
            res.append(runs[0])
        new = sum(len(r.tokens) for r in res)
        agree = [agreement(r.tokens, ref) for r, ref in zip(res, refs)]
        rows.append({"method": name, "threshold": thr, "ms_per_token": 1e3 * secs / new,
                     "large_share": sum(r.large_share * len(r.tokens) for r in res) / new,
                     "large_passes_per_token": sum(r.large_passes for r in res) / new,
                     "large_tokens_per_token": sum(r.large_tokens for r in res) / new,
                     "weight_bytes_per_token": sum(r.weight_bytes_per_token * len(r.tokens) for r in res) / new,
                     "acceptance": (sum(r.acceptance for r in res) / len(res)) if name == "speculative" else math.nan,
                     "agree_with_large": sum(a for a, _ in agree) / len(agree),
                     "common_prefix": sum(c for _, c in agree) / len(agree)})
    df = pd.DataFrame(rows)
    large_ms = df.loc[df["method"] == "large only", "ms_per_token"].iloc[0]
    df["speedup_vs_large"] = large_ms / df["ms_per_token"]
    df["cost_pct_of_large"] = 100 * df["weight_bytes_per_token"] / weight_bytes(large)
    return df
