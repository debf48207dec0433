"""Pruning during training: Zhu and Gupta's gradual schedule and magnitude masks, per layer or global."""
from __future__ import annotations

import torch

from .formats import as_matrix, check_sparsity, magnitude_mask, top_mask


def gradual_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: sparsity rises fast early and levels off at ``final`` by ``end``."""
    if end <= start:
        raise ValueError(f"the schedule needs end > start, got start={start}, end={end}")
    t = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** 3


def prune_masks(layers: list, sparsity: float, pattern: str = "unstructured", scope: str = "layer") -> list:
    """Magnitude keep-masks for ``layers`` (modules with .weight): per layer, or one global threshold."""
    sparsity = check_sparsity(sparsity)
    if scope == "layer" or sparsity == 0:
        return [magnitude_mask(as_matrix(m.weight), sparsity, pattern).view_as(m.weight) for m in layers]
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if pattern != "unstructured":
        raise ValueError("global scope is implemented for the unstructured pattern only")
    scores = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    keep = top_mask(scores, sparsity)
    out, i = [], 0
    for m in layers:
        n = m.weight.numel()
        out.append(keep[i:i + n].view_as(m.weight))
        i += n
    return out


def apply_masks(layers: list, masks: list) -> None:
    with torch.no_grad():
        for m, k in zip(layers, masks):
            m.weight.mul_(k)
