"""Surrogate autotuning in the spirit of ArchGym: search a kernel's configurations with a learned model.

The space is the fused block's real knobs: tile height x channel block x
threads (:func:`tuning_space`). We measure every configuration (the exhaustive
answer, in shuffled interleaved rounds, fastest round kept), then replay
searches against that table, as ArchGym replays its simulators: each search may
"measure" a budget of configurations and keeps the fastest it saw. Bayesian
optimisation (a Gaussian-process surrogate of log time, expected improvement)
is judged against the exhaustive best and against random search with the same
budget, over many seeds.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .. import bench
from .. import threads as _threads
from . import ops
from .block import make_block, parse
from .counts import positive_ints
from .guards import combine

TILES = (1, 2, 3, 4, 5, 7, 10, 14, 20, 28, 40, 56)
CHANNEL_BLOCKS = (16, 32, 64, 96, 128)


@dataclass(frozen=True)
class Config:
    tile_rows: int
    channel_block: int      # expanded channels per pass; 0 = all of them
    threads: int


def tuning_space(spec: str, max_threads: int, expansion: int = 6, include_tile: int | None = None) -> list[Config]:
    """Every (tile rows, channel block, threads) the fused kernel takes for one block: tiles up to the
    image height (plus ``include_tile``, e.g. the race's default), channel blocks below the expanded
    width plus "all", 1..max_threads threads."""
    c, hw = parse(spec)
    positive_ints(max_threads=max_threads, expansion=expansion)
    tiles = sorted({t for t in TILES if t <= hw} | {hw} | ({min(include_tile, hw)} if include_tile else set()))
    blocks = [b for b in CHANNEL_BLOCKS if b < c * expansion] + [0]
    return [Config(t, b, n) for n in range(1, max_threads + 1) for t in tiles for b in blocks]


def measure_space(spec: str, batch: int, space: list[Config], *, expansion: int = 6, rounds: int = 2,
                  repeats: int = 3, seed: int = 0):
    """Time the fused block at every configuration: ``rounds`` rounds, each in a fresh random order.

    Returns one row per configuration: its knobs, ``s_round<k>`` per round,
    ``best_s`` (the fastest round) and ``repeat_pct``, how far the second-fastest
    round was from the fastest (what a 5% claim has to beat). The thread count
    in force before the call is restored.
    """
    import pandas as pd
    import torch

    positive_ints(batch=batch, rounds=rounds)
    if rounds < 2:
        raise ValueError(f"rounds={rounds}: pass rounds >= 2, so that the timings' repeatability is known")
    if not space:
        raise ValueError("the space is empty: pass tuning_space(...)")
    c, hw = parse(spec)
    blk = make_block(c, expansion, seed=seed)
    x = torch.randn(batch, hw, hw, c, generator=torch.Generator().manual_seed(seed + 1))
    mats, res = blk.mats(), blk.residual
    rng = np.random.default_rng(seed)
    times = np.full((rounds, len(space)), np.nan)
    before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bench.SpreadWarning)
            for r in range(rounds):
                for i in rng.permutation(len(space)):
                    cfg = space[i]
                    _threads.set_threads(cfg.threads)
                    times[r, i] = bench.measure(lambda cfg=cfg: ops.fused(x, mats, res, cfg.tile_rows,
                                                                          cfg.channel_block),
                                                warmup=1, repeats=repeats).median
    finally:
        _threads.set_threads(before)
    df = pd.DataFrame([asdict(cfg) for cfg in space])
    for r in range(rounds):
        df[f"s_round{r}"] = times[r]
    ordered = np.sort(times, axis=0)
    df["best_s"] = ordered[0]
    df["repeat_pct"] = 100 * (ordered[1] / ordered[0] - 1)
    return df


def lookup(space, config: Config) -> float:
    """The measured best time of one configuration."""
    row = space[(space["tile_rows"] == config.tile_rows) & (space["channel_block"] == config.channel_block) &
                (space["threads"] == config.threads)]
    if row.empty:
        raise KeyError(f"{config} is not in the measured space")
    return float(row["best_s"].iloc[0])


def validity(space, target_pct: float, same_call: tuple[float, Config] | None = None, factor: float = 2.0,
             busy=None) -> tuple[bool, str]:
    """A claim at ``target_pct`` needs timings that repeat to better than that: the median configuration's two
    fastest rounds must agree within it. ``same_call=(seconds, config)``, the same call timed elsewhere in
    the run (the race), must agree with the table within ``factor``; ``busy`` (a
    :class:`.guards.Contention`) must show no other process took the cores."""
    bad = []
    rep = float(space["repeat_pct"].median())
    if not rep <= target_pct:
        bad.append(f"invalid measurement: the two fastest rounds of the median configuration differ by {rep:.1f}%, "
                   f"more than the {target_pct:g}% the claim resolves")
    if same_call is not None:
        ok, why = bench.agrees_with(1.0 / lookup(space, same_call[1]), 1.0 / same_call[0],
                                    "the fused block's calls per second", factor)
        if not ok:
            bad.append(why)
    shared = busy.validity("the exhaustive measurement") if busy is not None else (True, "")
    return combine((not bad, "; ".join(bad)), shared)


def describe(config: Config | dict) -> str:
    c = {k: int(v) for k, v in (config if isinstance(config, dict) else asdict(config)).items()
         if k in ("tile_rows", "channel_block", "threads")}
    cb = "all channels" if c["channel_block"] == 0 else f"channel block {c['channel_block']}"
    return f"{c['tile_rows']}-row tiles, {cb}, {c['threads']} thread{'s' if c['threads'] > 1 else ''}"


def space_phrase(space) -> str:
    """How much the knobs matter: the slowest configuration against the fastest, and which that is."""
    spread = float(space["best_s"].max() / space["best_s"].min())
    best = describe(space.loc[space["best_s"].idxmin()].to_dict())
    verdict = "the knobs matter" if spread >= 1.2 else "the knobs barely matter for this block"
    return f"its slowest takes {spread:.1f} times as long as its fastest ({best}): {verdict}"


def search_finding(summary, n_configs: int, budget: int, target_pct: float = 5.0) -> str:
    """The searches in one sentence: the surrogate's median gap against the target and against random search."""
    bo = float(summary.loc["Bayesian optimisation", "median_gap_pct"])
    side = "within" if bo <= target_pct else "outside"
    return (f"Measuring {budget} of {n_configs} configurations ({100 * budget / n_configs:.0f}%), Bayesian "
            f"optimisation lands a median {bo:.1f}% from the exhaustive best, {side} the {target_pct:g}% target; "
            f"{compare_methods(summary)}")


def compare_methods(summary) -> str:
    """Whether the surrogate beat random search with the same budget: first by the share of searches that
    reached the target, then (when those are within ten points) by the median gap."""
    bo, rnd = (summary.loc[m] for m in ("Bayesian optimisation", "random search"))
    share = float(bo["within_target"]) - float(rnd["within_target"])
    gap = float(rnd["median_gap_pct"]) - float(bo["median_gap_pct"])
    shares = (f"{float(bo['within_target']):.0%} of its searches within the target, against "
              f"{float(rnd['within_target']):.0%}")
    if share >= 0.1 or (abs(share) < 0.1 and gap >= 0.5):
        return f"the surrogate beat random search with the same budget ({shares})"
    if share <= -0.1 or (abs(share) < 0.1 and gap <= -0.5):
        return f"random search with the same budget did better than the surrogate on this space ({shares})"
    return f"random search with the same budget did as well ({shares}), so on this space the model bought nothing"


def features(space) -> np.ndarray:
    """Knobs as model inputs: log2 tile rows, log2 channel block ("all" as the widest), threads; scaled to [0, 1]."""
    cb = space["channel_block"].to_numpy(float)
    cb = np.where(cb == 0, max(2 * cb.max(), 1.0), cb)
    x = np.column_stack([np.log2(space["tile_rows"].to_numpy(float)), np.log2(cb),
                         space["threads"].to_numpy(float)])
    span = x.max(0) - x.min(0)
    return (x - x.min(0)) / np.where(span > 0, span, 1.0)


def _matern52(a: np.ndarray, b: np.ndarray, length: float) -> np.ndarray:
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)) * (math.sqrt(5) / length)
    return (1 + d + d * d / 3) * np.exp(-d)


class Surrogate:
    """Gaussian-process regression of log time (Matern 5/2 kernel) on the scaled knobs.

    Length scale and noise come from a small grid, by marginal likelihood: with
    a few dozen points, that is as good as a gradient fit and a thousand times
    cheaper, so a whole search takes milliseconds.
    """
    GRID = tuple((ls, noise) for ls in (0.15, 0.3, 0.6, 1.2, 2.4) for noise in (1e-4, 1e-2, 1e-1))

    def fit(self, x: np.ndarray, y: np.ndarray) -> "Surrogate":
        from scipy.linalg import cho_solve, cholesky
        self.mean, self.scale = float(y.mean()), float(y.std()) or 1.0
        z = (y - self.mean) / self.scale
        best = -np.inf
        for ls, noise in self.GRID:
            chol = cholesky(_matern52(x, x, ls) + noise * np.eye(len(x)), lower=True)
            alpha = cho_solve((chol, True), z)
            lml = -0.5 * z @ alpha - np.log(np.diag(chol)).sum()
            if lml > best:
                best, self.length, self.chol, self.alpha = lml, ls, chol, alpha
        self.x = x
        return self

    def predict(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of log time at ``xs``."""
        from scipy.linalg import solve_triangular
        k = _matern52(xs, self.x, self.length)
        v = solve_triangular(self.chol, k.T, lower=True)
        var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
        return self.mean + self.scale * (k @ self.alpha), self.scale * np.sqrt(var)


def bayes_search(x: np.ndarray, y: np.ndarray, budget: int, seed: int, init: int = 3) -> list[int]:
    """Indices measured, in order: ``init`` random ones, then each next one by expected improvement."""
    from scipy.stats import norm
    rng = np.random.default_rng(seed)
    picked = list(rng.choice(len(y), size=min(init, budget), replace=False))
    while len(picked) < budget:
        gp = Surrogate().fit(x[picked], y[picked])
        rest = np.setdiff1d(np.arange(len(y)), picked)
        mu, sd = gp.predict(x[rest])
        gain = y[picked].min() - mu - 0.01
        z = gain / sd
        picked.append(int(rest[np.argmax(gain * norm.cdf(z) + sd * norm.pdf(z))]))
    return [int(i) for i in picked]


def _one_blas_thread():
    """Tiny matrices: BLAS threads only wait for each other (seconds per search on a busy machine)."""
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=1)


def random_search(n: int, budget: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).choice(n, size=budget, replace=False)]


def budget_for(n: int, share: float = 0.2) -> int:
    """The most measurements a search may take: ``share`` of the space, rounded down (at least 2)."""
    return max(2, math.floor(share * n))


def search_trials(space, budget: int, seeds: int):
    """Replay both searches for ``seeds`` seeds against the measured space; one row per (method, seed, step)
    with the best time seen so far and its gap (%) to the exhaustive best."""
    import pandas as pd
    positive_ints(budget=budget, seeds=seeds)
    y_s = space["best_s"].to_numpy(float)
    if budget > len(y_s):
        raise ValueError(f"budget {budget} exceeds the {len(y_s)} configurations")
    x, y, best = features(space), np.log(y_s), y_s.min()
    rows = []
    with _one_blas_thread():
        orders = [(seed, method, order) for seed in range(seeds)
                  for method, order in (("Bayesian optimisation", bayes_search(x, y, budget, seed)),
                                        ("random search", random_search(len(y), budget, seed)))]
    for seed, method, order in orders:
        seen = np.minimum.accumulate(y_s[order])
        for step, (i, s) in enumerate(zip(order, seen), start=1):
            rows.append({"method": method, "seed": seed, "step": step, "index": i, "best_s": float(s),
                         "gap_pct": float(100 * (s / best - 1))})
    return pd.DataFrame(rows)


def search_summary(trials, target_pct: float = 5.0):
    """Per method at the full budget: median and worst gap, and the share of seeds within ``target_pct``."""
    last = trials[trials["step"] == trials["step"].max()]
    g = last.groupby("method", sort=False)["gap_pct"]
    out = g.agg(median_gap_pct="median", worst_gap_pct="max")
    out["within_target"] = g.apply(lambda s: float((s <= target_pct).mean()))
    return out


def surrogate_error(space, budget: int, seed: int = 0) -> float:
    """RMSE (% of time) of the GP trained on the first search's measurements, on the configurations it never saw."""
    x, y = features(space), np.log(space["best_s"].to_numpy(float))
    with _one_blas_thread():
        picked = bayes_search(x, y, budget, seed)
        rest = np.setdiff1d(np.arange(len(y)), picked)
        predicted, _ = Surrogate().fit(x[picked], y[picked]).predict(x[rest])
    return float(100 * np.sqrt(np.mean(np.expm1(predicted - y[rest]) ** 2)))


__all__ = ["Config", "tuning_space", "measure_space", "lookup", "validity", "describe", "space_phrase",
           "search_finding", "compare_methods", "features", "Surrogate", "bayes_search", "random_search", "budget_for",
           "search_trials", "search_summary", "surrogate_error"]
