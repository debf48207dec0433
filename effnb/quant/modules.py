"""Quantized layers for real models: swap every ``nn.Linear`` for a packed one (or a fake-quantized one).

Why two kinds: :class:`QuantLinear` runs our kernels and is what a deployment
would use; :class:`FakeQuantLinear` carries a dequantized weight and models the
arithmetic of formats we measure for quality only (DGQ's clipping, QServe).
"""
from __future__ import annotations

import torch

from .formats import Packed, Scheme, dequantize, parse_scheme, quantize
from .ops import linear, prepack
from .reference import fake_linear, quantize_acts

KERNEL_MAX_M = 64   # tokens per call up to which QuantLinear runs the kernel (a GEMV-like product)


class QuantLinear(torch.nn.Module):
    """A Linear whose weight is packed; small batches (M <= ``kernel_max_m``) run the kernel,
    larger ones the same quantized arithmetic through torch (a prefill-sized GEMM is
    compute-bound, where dequantizing once and calling a GEMM is the usual choice)."""

    def __init__(self, p: Packed, bias: torch.Tensor | None, kernel_max_m: int = KERNEL_MAX_M):
        super().__init__()
        self.p = prepack(p)
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.kernel_max_m = kernel_max_m
        self._w = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= self.kernel_max_m:
            y = linear(x, self.p)
        else:
            y = fake_linear(x, self.p, self._weight())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    @property
    def weight_nbytes(self) -> int:
        """Bytes a call reads for its weight: codes, scales and zeros (what a decode step streams)."""
        return self.p.nbytes

    def _weight(self) -> torch.Tensor:
        if self._w is None:
            self._w = dequantize(self.p)
        return self._w

    def extra_repr(self) -> str:
        return f"in_features={self.p.k}, out_features={self.p.n}, scheme={self.p.scheme}"


def _linears(model: torch.nn.Module, skip=()) -> list:
    return [(name, mod) for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name not in skip]


def _swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def quantize_module(model: torch.nn.Module, scheme: str | Scheme, skip=(), hessians: dict | None = None) -> list[dict]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`.

    ``scheme`` is a scheme string, or a callable ``(name, linear) -> scheme``
    for per-layer choices (FineQuant's adaptive granularity). Names in ``skip``
    stay fp32. ``hessians`` (from ``calibrate``) switches int4 layers to GPTQ
    rounding. Returns one row per layer: name, shape, scheme, bytes before
    (fp32) and after.
    """
    pick = scheme if callable(scheme) else (lambda name, lin: scheme)
    if not callable(scheme):
        parse_scheme(scheme)  # fail before touching the model
    report = []
    targets = _linears(model, skip)
    if hessians is not None:
        missing = [name for name, _ in targets if name not in hessians]
        if missing:
            raise ValueError(f"no hessian for {missing[:3]}...: build hessians with calibrate() on this model")
    for name, lin in targets:
        sch = parse_scheme(pick(name, lin))
        p = quantize(lin.weight, sch, hessians[name] if hessians is not None and sch.wbits == 4 else None)
        _swap(model, name, QuantLinear(p, lin.bias))
        report.append({"layer": name, "n": p.n, "k": p.k, "scheme": str(p.scheme),
                       "bytes_fp32": 4 * p.n * p.k, "bytes_quant": p.nbytes,
                       "bits_per_weight": p.bits_per_weight})
    return report


def percentile_clip(x: torch.Tensor, pct: float = 99.9) -> torch.Tensor:
    """DGQ's percentile clipping of activations: clip each token at its ``pct`` percentile of |x|."""
    t = torch.quantile(x.abs().float(), pct / 100.0, dim=-1, keepdim=True)
    return torch.maximum(torch.minimum(x, t), -t)


class FakeQuantLinear(torch.nn.Module):
    """A Linear with a given (dequantized) weight and optional int8 per-token activations,
    optionally percentile-clipped first: the quality model of DGQ and QServe."""

    def __init__(self, weight: torch.Tensor, bias, act_bits: int = 16, clip_pct: float | None = None):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.act_bits, self.clip_pct = act_bits, clip_pct

    def forward(self, x):
        if self.act_bits == 8:
            x2 = x.reshape(-1, x.shape[-1]).float()
            if self.clip_pct is not None:
                x2 = percentile_clip(x2, self.clip_pct)
            q, s = quantize_acts(x2, x2.shape[-1])
            x = (q.float() * s).reshape(x.shape)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def replace_linears(model: torch.nn.Module, make) -> int:
    """Replace each nn.Linear by ``make(name, linear)``; returns how many."""
    targets = _linears(model)
    for name, lin in targets:
        _swap(model, name, make(name, lin))
    return len(targets)
