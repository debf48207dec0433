"""The plain references the CATS kernel is tested against (float64 inside, fp32 out)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gate_activations(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``silu(gate x)`` in float64, (n, ffn): what CATS thresholds by magnitude."""
    return F.silu(x.double() @ gate.double().t())


def active_count(x: torch.Tensor, gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """How many neurons each row keeps (int64, (n,)): |silu(gate x)| > threshold."""
    return (gate_activations(x, gate).abs() > threshold).sum(dim=1)


def cats_ffn_ref(x, gate, up, down_t, threshold: float) -> torch.Tensor:
    """``y = sum_i [|a_i| > threshold] a_i (up_i . x) down_t[i]`` with ``a = silu(gate x)``."""
    a = gate_activations(x, gate)
    h = torch.where(a.abs() > threshold, a * (x.double() @ up.double().t()), 0.0)
    return (h @ down_t.double()).float()


def dense_ffn_ref(x, gate, up, down_t) -> torch.Tensor:
    """The gated FFN with every neuron: ``down(silu(gate x) * up x)``."""
    h = gate_activations(x, gate) * (x.double() @ up.double().t())
    return (h @ down_t.double()).float()
