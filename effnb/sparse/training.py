"""The accuracy side of the chapter: real digits, a MobileNet-style CNN, training with gradual pruning.

scikit-learn's 8x8 digits are bundled with it (no download), so every run of the
chapter trains on the same real data.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .formats import check_sparsity
from .layers import prunable
from .pruning import apply_masks, gradual_sparsity, prune_masks

PRUNE_END = 0.7   # pruning reaches its final sparsity at this fraction of training; the rest fine-tunes


def digits(size: int = 8, seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's 8x8 digits (bundled, no download), optionally upsampled; a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def digits_cnn(width: int = 32, seed: int = 0) -> nn.Module:
    """A MobileNet-style CNN: 3x3 stem, two depthwise-separable blocks, linear head."""
    torch.manual_seed(seed)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    w = width
    return nn.Sequential(nn.Conv2d(1, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                         *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2), *block(4 * w, 4 * w, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def accuracy(model: nn.Module, x, y, batch: int = 512) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train(model, xtr, ytr, *, epochs: int, lr: float = 3e-3, batch: int = 64, seed: int = 0,
          on_step=None, on_epoch=None, decay: bool = False) -> nn.Module:
    """Adam on cross-entropy; ``on_step(step, total)`` runs after each update (pruning, regrowth),
    ``on_epoch(epoch, model)`` after each epoch (learning curves; it must not draw random numbers).

    ``decay=True`` lowers the learning rate to zero along a cosine: the final weights then do not
    depend on where the last large step happened to land, which cuts the spread over seeds that the
    paired accuracy tests must see through."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per = math.ceil(len(xtr) / batch)
    total, step = epochs * steps_per, 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)) if decay else 1.0)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model


def train_pruned(model, data, *, sparsity: float, pattern: str = "unstructured", epochs: int = 10,
                 seed: int = 0, scope: str = "layer", prune_every: int = 10, lr: float = 1e-2,
                 batch: int = 64) -> dict:
    """Train with gradual magnitude pruning of the Linear / 1x1 layers to ``sparsity`` (after ``PRUNE_END`` it fine-tunes),
    the learning rate decaying to zero (cosine), as Zhu and Gupta prune under a decaying rate."""
    xtr, ytr, xte, yte = data
    layers = [m for _, m in prunable(model)]
    state = {"masks": None}

    def on_step(step, total):
        end = max(2, int(PRUNE_END * total))
        if state["masks"] is not None:
            apply_masks(layers, state["masks"])    # pruned weights stay zero after Adam's update
        if sparsity > 0 and step <= end and (step % prune_every == 0 or step == end):
            s = gradual_sparsity(step, sparsity, start=0, end=end)
            state["masks"] = prune_masks(layers, s, pattern, scope)
            apply_masks(layers, state["masks"])

    train(model, xtr, ytr, epochs=epochs, seed=seed, on_step=on_step, lr=lr, batch=batch, decay=True)
    got = sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    return {"accuracy": accuracy(model, xte, yte), "sparsity": got}


def accuracy_vs_sparsity(data, *, width: int, sparsities: list, group_sparsities: list = (), epochs: int,
                         seeds: int = 1, seed: int = 0) -> tuple:
    """Train the digits CNN with gradual pruning at every (pattern, sparsity) and seed.

    Returns a tidy frame (pattern, sparsity, seed, accuracy, achieved) and the
    trained networks of the first seed keyed by (pattern, sparsity), for latency.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    configs = [("unstructured", float(s)) for s in sparsities] + [("1x4", float(s)) for s in group_sparsities]
    for _, s in configs:
        check_sparsity(s)
    rows, nets = [], {}
    for i in range(seeds):
        for pattern, s in configs:
            net = digits_cnn(width, seed=seed + i)
            r = train_pruned(net, data, sparsity=s, pattern=pattern, epochs=epochs, seed=seed + i)
            rows.append({"pattern": pattern, "sparsity": s, "seed": seed + i,
                         "accuracy": 100 * r["accuracy"], "achieved": r["sparsity"]})
            if i == 0:
                nets[(pattern, s)] = net
    import pandas as pd
    return pd.DataFrame(rows), nets


def accuracy_summary(acc):
    """Mean, standard deviation (over seeds) and count of the test accuracy per (pattern, sparsity)."""
    out = acc.groupby(["pattern", "sparsity"], sort=False)["accuracy"].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def accuracies(runs, pattern: str, sparsity: float) -> np.ndarray:
    """Per-seed test accuracies (%) of one configuration of :func:`accuracy_vs_sparsity`, in seed order,
    so two configurations subtract seed by seed."""
    r = runs[(runs.pattern == pattern) & np.isclose(runs.sparsity, sparsity)].sort_values("seed")
    if r.empty:
        raise KeyError(f"no runs of pattern {pattern!r} at sparsity {sparsity}; have "
                       f"{sorted(set(zip(runs.pattern, runs.sparsity)))}")
    return r["accuracy"].to_numpy()
