"""Chapter 14's studies on language models: contextual sparsity with correction, and its decode race.

Why here: the notebook asks "how much of the full model does each way of
skipping neurons keep?" and "what does each decode loop cost per token?"; both
answers need the same prompts, the same full-model continuations and the same
bookkeeping of bytes, so they live in one place and the notebook only calls.
"""
from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from ..lm.model import weight_bytes
from . import contextual as C
from . import sirius as S
from .entropy import agreement


def docstring_prompts(tokenizer, n: int, seed: int = 0, max_tokens: int = 96) -> list[list[int]]:
    """``n`` standard-library docstrings as token-id prompts (cut at ``max_tokens``): real text that
    installs with Python."""
    from ..data.stdlib_text import stdlib_docstrings
    if n < 1:
        raise ValueError(f"n must be >= 1 prompt, got {n}")
    return [tokenizer.encode(d, add_special_tokens=False)[:max_tokens] for d in stdlib_docstrings(n, seed=seed)]


def full_continuations(model, prompts, new_tokens: int) -> list[list[int]]:
    """The full (dense) model's greedy continuation of every prompt: what agreement is measured against."""
    C.set_mode(model, "dense")
    return [S.plain_generate(model, p, new_tokens).tokens for p in prompts]


def byte_split(model) -> pd.DataFrame:
    """MB each part of ``model`` reads per decode step and its share: what sparsity in one part can save."""
    from ..lm.model import linears
    parts = {"attention": 0, "feed-forward": 0, "output layer (tied embedding)": 0, "norms": 0}
    for name, m in linears(model).items():
        key = "feed-forward" if ".ffn." in name else "attention" if ".attn." in name else "output layer (tied embedding)"
        parts[key] += m.weight.numel() * m.weight.element_size()
    parts["norms"] = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "norm" in n)
    total = weight_bytes(model)
    return pd.DataFrame([{"part": k, "MB per token": v / 1e6, "% of bytes": 100 * v / total} for k, v in parts.items()])


def _sparse_names(keep: float) -> dict[str, str]:
    k = f"{100 * keep:.0f}%"
    return {"griffin": f"Griffin top-k from the prompt, keep {k}", "cats": f"CATS threshold, keep {k}",
            "static": f"static magnitude pruning, keep {k}"}


def sparsity_quality(model, prompts, continuations, keeps, calibration, modes=("griffin", "cats", "static")):
    """Per mode and share of neurons kept: teacher-forced agreement with the full model's greedy tokens
    (mean over prompts), FFN bytes read per token and the whole model's bytes per token, both as a % of
    dense. CATS thresholds are calibrated on ``calibration`` prompts (never the test prompts)."""
    total = weight_bytes(model)
    C.contextualize(model, 1.0)
    prefilled = []                  # one full-model prefill per prompt serves every mode and keep
    with torch.inference_mode():
        for p, c in zip(prompts, continuations):
            cache = model.new_cache(1, len(p) + len(c) + 1)
            first = int(S.prefill(model, torch.tensor([list(p)]), "griffin", cache).argmax())
            prefilled.append((cache, first, [f.prompt_score for f in C.ffns(model)]))
    rows = []
    for keep in keeps:
        C.contextualize(model, keep)
        if "cats" in modes:
            C.calibrate_cats(model, calibration)
        dense_ffn = C.ffn_bytes(model, "dense")
        for mode in modes:
            agree = []
            for (cache, first, scores), c in zip(prefilled, continuations):
                if mode == "griffin":
                    for f, score in zip(C.ffns(model), scores):
                        f.choose(score)
                agree.append(S.agreement_after_prefill(model, cache, first, c, mode))
            ffn = C.ffn_bytes(model, mode)
            rows.append({"method": _sparse_names(keep)[mode], "mode": mode, "keep": keep,
                         "agreement": statistics.fmean(agree), "worst prompt": min(agree),
                         "FFN bytes %": 100 * ffn / dense_ffn, "model bytes %": 100 * (total - dense_ffn + ffn) / total})
    C.contextualize(model, 1.0)
    return pd.DataFrame(rows)


def decode_race(model, prompts, continuations, new_tokens: int, keep: float, calibration, mode: str = "cats",
                periods=(4, 8), tolerances=(1.0, 0.1), repeats: int = 3, progress: bool = True):
    """Batch-1 greedy decode of ``new_tokens`` after each prompt, ms per token (median of ``repeats``,
    prompts summed): the full model (torch's FFN, and the FFN through the effnb kernel with every neuron
    active), the sparse ``mode`` alone, and Sirius on it for every period and tolerance; with agreement
    against the full model's tokens (positional share, common prefix), full passes per token and
    corrections per block. Times include the prefill, the same for every loop. ``vs full`` divides the
    faster full model's time by each loop's."""
    from ..plots import quiet_tqdm
    C.contextualize(model, keep)
    if mode == "cats":
        C.calibrate_cats(model, calibration)
    loops = {"full model": lambda p: S.plain_generate(model, p, new_tokens, "dense"),
             "full model, effnb FFN kernel": lambda p: S.plain_generate(model, p, new_tokens, "dense-kernel"),
             _sparse_names(keep)[mode]: lambda p: S.plain_generate(model, p, new_tokens, mode)}
    for period in periods:
        for tol in tolerances:
            loops[f"Sirius on {mode}, period {period}, tolerance {tol:g}"] = \
                lambda p, period=period, tol=tol: S.sirius_generate(model, p, new_tokens, mode, period, tol)
    rows = []
    for name, run in quiet_tqdm()(loops.items(), desc="decode loops", disable=not progress, leave=False):
        secs, agree, prefix, passes, blocks, corrections = 0.0, [], [], 0, 0, 0
        for p, ref in zip(prompts, continuations):
            if not agree:
                run(p)                                               # warm-up, once per loop
            runs = [run(p) for _ in range(repeats)]
            secs += statistics.median(r.seconds for r in runs)
            a, c = agreement(runs[0].tokens, ref)
            agree.append(a)
            prefix.append(c)
            passes += runs[0].full_passes
            blocks += max(0, runs[0].full_passes - 1)
            corrections += runs[0].corrections
        n = new_tokens * len(prompts)
        rows.append({"decode loop": name, "ms/token": 1e3 * secs / n, "agreement": statistics.fmean(agree),
                     "common prefix": statistics.fmean(prefix), "full passes/token": passes / n,
                     "corrected blocks %": 100 * corrections / blocks if name.startswith("Sirius") and blocks else float("nan")})
    C.contextualize(model, 1.0)
    df = pd.DataFrame(rows)
    df["vs full"] = df["ms/token"].iloc[:2].min() / df["ms/token"]
    return df


@torch.inference_mode()
def block_cost(model, sizes=(1, 4, 8), context: int = 48, repeats: int = 5, mode: str = "dense") -> pd.DataFrame:
    """ms of one forward of the full model over ``m`` new tokens after ``context`` cached ones, for each
    ``m`` in ``sizes``: Sirius's premise is that checking a block costs about one decode step."""
    C.set_mode(model, mode)
    ids = torch.randint(0, model.cfg.vocab_size, (1, context + max(sizes)), generator=torch.Generator().manual_seed(0))
    rows = []
    for m in sizes:
        times = []
        for _ in range(repeats + 1):
            cache = model.new_cache(1, context + m)
            model(ids[:, :context], cache, last_only=True)
            t0 = time.perf_counter()
            model(ids[:, context:context + m], cache)
            times.append(time.perf_counter() - t0)
        rows.append({"tokens in the forward": m, "ms": 1e3 * statistics.median(times[1:])})
    df = pd.DataFrame(rows)
    df["vs one token"] = df["ms"] / df["ms"].iloc[0]
    return df


def ead_split(small, large, ids, calib_tokens: int, test_tokens: int, context: int = 256):
    """Teacher-forced statistics of a small/large pair on two disjoint pieces of ``ids`` (token ids of one
    text): the threshold is chosen on the first and judged on the second."""
    from .entropy import teacher_forced
    ids = list(ids)
    if calib_tokens + test_tokens > len(ids):
        raise ValueError(f"the text has {len(ids)} tokens; calib + test = {calib_tokens + test_tokens}: "
                         f"pass smaller pieces")
    return (teacher_forced(small, large, ids[:calib_tokens], context, context // 2),
            teacher_forced(small, large, ids[calib_tokens:calib_tokens + test_tokens], context, context // 2))


def threshold_for_share(stats, window: int, share: float, thresholds) -> float:
    """The lowest threshold (of ``thresholds``) at which the large model takes at most ``share`` of the
    positions of ``stats``: the most large-model help the budget allows."""
    from .entropy import rolling_entropy
    roll = rolling_entropy(stats.entropy, window)
    ok = [t for t in sorted(thresholds) if float((roll > t).float().mean()) <= share]
    if not ok:
        raise ValueError(f"no threshold in {min(thresholds)}..{max(thresholds)} keeps the large model at "
                         f"<= {share:.0%} of tokens: pass larger thresholds")
    return ok[0]


def entropy_by_outcome(stats) -> pd.DataFrame:
    """The small model's entropy where it was right and where it was wrong: why switching on it works."""
    right = stats.small_argmax == stats.target
    return pd.DataFrame([{"small model": k, "positions": int(m.sum()), "mean entropy (nats)": float(stats.entropy[m].mean()),
                          "large model right %": 100 * float((stats.large_argmax[m] == stats.target[m]).float().mean())}
                         for k, m in (("right", right), ("wrong", ~right))])
