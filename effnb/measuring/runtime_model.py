"""The idealized-runtime model of Narayanan et al. (2023), measured and fitted.

latency = fixed + per-prompt-token x prompt + per-output-token x outputs. We
time greedy generation of :mod:`effnb.models.tiny_decoder` on a grid of
lengths, fit the three coefficients by least squares on a training grid and
judge them by the error on lengths the fit never saw (held-out MAPE).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..models.tiny_decoder import generate
from .counts import positive_ints


def length_grid(prompts: Sequence[int], outputs: Sequence[int]) -> list[tuple[int, int]]:
    """Every (prompt length, output tokens) pair of two lists."""
    for v in (*prompts, *outputs):
        positive_ints(length=v)
    return [(int(p), int(o)) for p in prompts for o in outputs]


def measure_generation(model, train: Sequence[tuple[int, int]], held_out: Sequence[tuple[int, int]], *,
                       rounds: int = 5, seed: int = 0):
    """Greedy-generation latency at each (prompt, outputs) pair, training and held-out.

    ``rounds`` rounds; each round times every pair once, in a fresh random
    order, so a burst of load from other processes or a slow drift of the
    machine hits different pairs in different rounds instead of one pair's
    every sample. Returns a DataFrame: prompt, outputs, split, best_s,
    median_s, q25_s, q75_s, spread. ``best_s`` (the fastest round) estimates
    the *idealized* runtime, which by definition excludes contention: on a
    shared machine other processes only ever add time.
    """
    import time

    import pandas as pd
    import torch

    positive_ints(rounds=rounds)
    if not train or not held_out:
        raise ValueError("need at least one training and one held-out (prompt, outputs) pair")
    pairs = [(int(p), int(o), "train") for p, o in train] + [(int(p), int(o), "held-out") for p, o in held_out]
    for p, o, _ in pairs:
        positive_ints(prompt=p, outputs=o)
    longest = max(p + o for p, o, _ in pairs)
    if longest > model.max_len:
        raise ValueError(f"a pair needs {longest} positions but the model has max_len={model.max_len}; "
                         f"build the model with a larger max_len or shorten the grid")
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, model.vocab, (1, p), generator=g) for p, _, _ in pairs]
    cache = model.new_cache(1)
    for k, (p, o, _) in enumerate(pairs):  # untimed first call: lazy init, first touch of the cache
        generate(model, prompts[k], o, cache)
    times = np.empty((rounds, len(pairs)))
    for r in range(rounds):
        for k in rng.permutation(len(pairs)):
            t0 = time.perf_counter()
            generate(model, prompts[k], pairs[k][1], cache)
            times[r, k] = time.perf_counter() - t0
    rows = []
    for k, (p, o, split) in enumerate(pairs):
        t = times[:, k]
        q25, med, q75 = np.quantile(t, [0.25, 0.5, 0.75])
        rows.append({"prompt": p, "outputs": o, "split": split, "best_s": float(t.min()), "median_s": float(med),
                     "q25_s": float(q25), "q75_s": float(q75), "spread": float((q75 - q25) / med)})
    return pd.DataFrame(rows).sort_values(["split", "prompt", "outputs"], ascending=[False, True, True],
                                          ignore_index=True)


@dataclass(frozen=True)
class RuntimeModel:
    """latency = fixed_s + per_prompt_s * prompt + per_output_s * outputs."""
    fixed_s: float
    per_prompt_s: float
    per_output_s: float

    def predict(self, prompt, outputs) -> np.ndarray:
        return self.fixed_s + self.per_prompt_s * np.asarray(prompt, float) + \
            self.per_output_s * np.asarray(outputs, float)


def fit_runtime(prompt, outputs, seconds, *, relative: bool = True) -> RuntimeModel:
    """Least-squares fit of the idealized-runtime model to measured latencies.

    With ``relative=True`` each row is divided by its measured time, so the
    fit minimises squared *relative* error: the quantity MAPE judges. A plain
    fit lets the longest runs dominate and can leave short runs tens of
    percent off. Needs at least three points with two distinct prompt lengths
    and two distinct output counts; otherwise the coefficients are not identified.
    """
    p, o, s = (np.asarray(v, float).ravel() for v in (prompt, outputs, seconds))
    if not (len(p) == len(o) == len(s)):
        raise ValueError(f"prompt, outputs and seconds differ in length ({len(p)}, {len(o)}, {len(s)})")
    if len(s) < 3:
        raise ValueError(f"need at least 3 measurements to fit 3 coefficients, got {len(s)}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("seconds must be finite and positive")
    X = np.column_stack([np.ones_like(p), p, o])
    if np.linalg.matrix_rank(X) < 3:
        raise ValueError("the fit needs at least two distinct prompt lengths and two distinct output counts")
    wt = 1.0 / s if relative else np.ones_like(s)
    coef, *_ = np.linalg.lstsq(X * wt[:, None], s * wt, rcond=None)
    return RuntimeModel(*(float(c) for c in coef))


def mape(predicted, measured) -> float:
    """Mean absolute percentage error, in percent."""
    pr, me = np.asarray(predicted, float), np.asarray(measured, float)
    if pr.shape != me.shape or pr.size == 0:
        raise ValueError(f"predicted {pr.shape} and measured {me.shape} must be non-empty and the same shape")
    if np.any(me <= 0):
        raise ValueError("measured values must be positive for a percentage error")
    return float(100.0 * np.mean(np.abs(pr - me) / me))


def fit_finding(mape_heldout: float, prompt_per_output: float, target_pct: float = 10.0) -> str:
    """The fit in one sentence: held-out MAPE against the target, and what a decode token costs."""
    side = "within" if mape_heldout <= target_pct else "outside"
    return (f"predicts the latency of held-out lengths with a MAPE of {mape_heldout:.1f}%, {side} the "
            f"{target_pct:g}% target, with a decode token costing as much as {prompt_per_output:.0f} prompt tokens")


__all__ = ["length_grid", "measure_generation", "RuntimeModel", "fit_runtime", "mape", "fit_finding"]
