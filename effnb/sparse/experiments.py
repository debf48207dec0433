"""Two papers' accuracy claims as paired experiments on digits MLPs.

Sparse-IFT: a Sparse-Wide MLP (every hidden width times k, sparsity set so the
nonzeros, hence the FLOPs, stay the dense MLP's) with SET-style prune-and-regrow.
Random Search: the best of several random node masks, judged on a validation
split, against one random mask from the same initialisation. :func:`paired_test`
judges both over seeds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .training import accuracy, train

CONFIDENCE = 0.95   # two-sided level of paired_test's interval
CONVERGED = 0.95    # "converged": reached this fraction of the final accuracy (epochs_to_reach)


class MaskedMLP(nn.Module):
    """An MLP whose hidden Linear layers carry fixed-size sparse masks (dense when sparsity is 0)."""

    def __init__(self, sizes: list, sparsities: list, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.masks = []
        for lin, s in zip(self.layers, sparsities):
            m = torch.ones(lin.weight.numel(), dtype=torch.bool)
            if s > 0:  # exactly round((1 - s) * size) connections, placed at random
                m[torch.randperm(m.numel(), generator=g)[:int(round(s * m.numel()))]] = False
            m = m.view_as(lin.weight)
            self.masks.append(m)
            if s > 0:  # keep the signal's scale: He-style init over the inputs a unit actually has
                with torch.no_grad():
                    lin.weight.mul_(m / max(1e-6, math.sqrt(1 - s)))

    def forward(self, x):
        x = x.flatten(1)
        for i, lin in enumerate(self.layers):
            x = F.linear(x, lin.weight * self.masks[i], lin.bias)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def nnz(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))


def iso_flop_sparsities(sizes: list, k: int) -> tuple[list, list]:
    """Sparse-Wide: every hidden width times ``k``, each layer's sparsity set so its nonzeros equal
    the dense layer's."""
    wide = [sizes[0]] + [h * k for h in sizes[1:-1]] + [sizes[-1]]
    sp = [1.0 - (a * b) / (wa * wb) for a, b, wa, wb in zip(sizes[:-1], sizes[1:], wide[:-1], wide[1:])]
    return wide, sp


def prune_regrow(model: MaskedMLP, fraction: float, gen: torch.Generator) -> None:
    """SET-style dynamic sparsity: drop the smallest ``fraction`` of live weights, regrow as many at random."""
    with torch.no_grad():
        for lin, m in zip(model.layers, model.masks):
            live = int(m.sum())
            if live == m.numel() or live == 0:
                continue
            n = int(fraction * live)
            if n == 0:
                continue
            mag = torch.where(m, lin.weight.abs(), torch.full_like(lin.weight, math.inf)).flatten()
            drop = torch.argsort(mag)[:n]
            dead = (~m).flatten().nonzero().flatten()
            grow = dead[torch.randperm(len(dead), generator=gen)[:n]]
            flat = m.view(-1)
            flat[drop] = False
            flat[grow] = True
            lin.weight.view(-1)[grow] = 0.0   # new connections start at zero (RigL/SET convention)


def sparse_ift_trial(data, *, hidden: list, k: int, epochs: int, seed: int, regrow_every: int = 20,
                     regrow_fraction: float = 0.2) -> dict:
    """Dense MLP vs its Sparse-Wide version (same nonzeros, so the same FLOPs), trained identically."""
    xtr, ytr, xte, yte = data
    sizes = [xtr[0].numel(), *hidden, 10]
    dense = MaskedMLP(sizes, [0.0] * (len(sizes) - 1), seed=seed)
    train(dense, xtr, ytr, epochs=epochs, seed=seed)
    wide_sizes, sp = iso_flop_sparsities(sizes, k)
    wide = MaskedMLP(wide_sizes, sp, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def on_step(step, total):
        if step % regrow_every == 0 and step < 0.8 * total:
            prune_regrow(wide, regrow_fraction * (1 - step / total), gen)
    train(wide, xtr, ytr, epochs=epochs, seed=seed, on_step=on_step)
    return {"seed": seed, "dense_acc": accuracy(dense, xte, yte), "wide_acc": accuracy(wide, xte, yte),
            "dense_nnz": dense.nnz(), "wide_nnz": wide.nnz()}


# ---------------------------------------------------------------- Random Search over node masks

def node_mask_mlp(sizes: list, keep: list, seed: int) -> MaskedMLP:
    """An MLP whose hidden units outside ``keep`` (bool vectors per hidden layer) are removed."""
    m = MaskedMLP(sizes, [0.0] * (len(sizes) - 1), seed=seed)
    ins = [torch.ones(sizes[0], dtype=torch.bool), *keep]
    outs = [*keep, torch.ones(sizes[-1], dtype=torch.bool)]
    m.masks = [o.unsqueeze(1) & i.unsqueeze(0) for i, o in zip(ins, outs)]
    with torch.no_grad():
        for lin, mk in zip(m.layers, m.masks):
            lin.weight.mul_(mk)
    return m


def _random_nodes(hidden: list, sparsity: float, gen) -> list:
    out = []
    for h in hidden:
        k = max(1, int(round((1 - sparsity) * h)))
        v = torch.zeros(h, dtype=torch.bool)
        v[torch.randperm(h, generator=gen)[:k]] = True
        out.append(v)
    return out


def epochs_to_reach(curve, fraction: float = CONVERGED) -> int:
    """First epoch (1-based) whose accuracy reaches ``fraction`` of the curve's final accuracy."""
    c = np.asarray(curve, float)
    if c.size == 0:
        raise ValueError("the learning curve is empty")
    return int(np.argmax(c >= fraction * c[-1] - 1e-12)) + 1


def random_search_trial(data, *, hidden: list, sparsity: float, candidates: int, search_epochs: int,
                        epochs: int, seed: int) -> dict:
    """Random Search (best of ``candidates`` node masks after a short training, judged on a validation split)
    vs one random node mask, both then trained for ``epochs`` from the same initialisation.

    Both final trainings record test accuracy after every epoch (never used to choose anything): ``*_curve``,
    its mean over epochs ``*_auc`` (area under the learning curve / epochs) and ``*_t95``, the epochs
    to reach ``CONVERGED`` of the final accuracy, measure how fast each converges."""
    xtr, ytr, xte, yte = data
    nval = len(xtr) // 5
    xfit, yfit, xval, yval = xtr[nval:], ytr[nval:], xtr[:nval], ytr[:nval]
    sizes = [xtr[0].numel(), *hidden, 10]
    gen = torch.Generator().manual_seed(1000 + seed)
    best, best_acc = None, -1.0
    for _ in range(candidates):
        keep = _random_nodes(hidden, sparsity, gen)
        m = train(node_mask_mlp(sizes, keep, seed), xfit, yfit, epochs=search_epochs, seed=seed)
        a = accuracy(m, xval, yval)
        if a > best_acc:
            best, best_acc = keep, a
    rand_keep = _random_nodes(hidden, sparsity, gen)
    curves = {"search": [], "random": []}

    def recorder(key):
        return lambda epoch, model: curves[key].append(accuracy(model, xte, yte))
    searched = train(node_mask_mlp(sizes, best, seed), xtr, ytr, epochs=epochs, seed=seed,
                     on_epoch=recorder("search"))
    rand = train(node_mask_mlp(sizes, rand_keep, seed), xtr, ytr, epochs=epochs, seed=seed,
                 on_epoch=recorder("random"))
    out = {"seed": seed, "sparsity": sparsity, "search_acc": accuracy(searched, xte, yte),
           "random_acc": accuracy(rand, xte, yte)}
    for key, c in curves.items():
        out[f"{key}_auc"] = float(np.mean(c))
        out[f"{key}_t95"] = epochs_to_reach(c)
        out[f"{key}_curve"] = c
    return out


def paired_test(a, b) -> dict:
    """Mean of a - b, its ``CONFIDENCE`` interval and the paired t-test and Wilcoxon p-values (scipy.stats)."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = len(d)
    if n < 2:
        raise ValueError("a paired test needs at least 2 pairs (seeds)")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)) if sd > 0 else 0.0
    t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    try:
        w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    except ValueError:
        w_p = float("nan")
    return {"n": n, "mean_diff": mean, "ci_lo": mean - half, "ci_hi": mean + half, "t_p": t_p, "wilcoxon_p": w_p}


def superiority_power(differences, effect: float, alpha: float = 0.05) -> float:
    """Power of the one-sided paired t-test at level ``alpha`` to detect a true mean gain of ``effect``,
    at the spread the ``differences`` showed (noncentral t): how much a non-significant result says."""
    from scipy import stats
    d = np.asarray(differences, float)
    n, sd = d.size, float(d.std(ddof=1)) if d.size > 1 else 0.0
    if n < 2:
        raise ValueError("power needs at least 2 paired differences (seeds)")
    if sd == 0:
        return 1.0
    t = stats.t.ppf(1 - alpha, n - 1)
    return float(stats.nct.sf(t, n - 1, effect / (sd / math.sqrt(n))))


def one_sided_p(a, b) -> float:
    """p-value of the one-sided paired t-test that ``a`` exceeds ``b`` (1.0 when the pairs never differ)."""
    from scipy import stats
    if paired_test(a, b)["t_p"] >= 1:
        return 1.0
    return float(stats.ttest_rel(np.asarray(a, float), np.asarray(b, float), alternative="greater").pvalue)
