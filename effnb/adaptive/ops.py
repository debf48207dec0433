"""The ``adaptive`` kernel family as torch ops: schemas, fake kernels, and the call that picks a kernel.

The schema lives here, not in ``kernels/adaptive/adaptive.cpp``, so the op
exists (with a fake kernel for tracing and ``opcheck``) even where the library
is not built; the C++ file only registers the CPU implementation.
:func:`cats_ffn` checks its inputs, then calls the C++ kernel when the family
is loaded and the plain reference of :mod:`effnb.adaptive.reference`
otherwise; :func:`backend` says which ran.
"""
from __future__ import annotations

import math
import numbers

import torch

from .. import ext
from ..family import KernelOps
from . import reference

FAMILY = "adaptive"

# A gated FFN with contextual sparsity (CATS): x (n, dim); gate, up and down_t (= down.weight.t()) (ffn, dim).
SCHEMAS = {
    "adaptive_cats_ffn": "(Tensor x, Tensor gate, Tensor up, Tensor down_t, float threshold) -> Tensor",
}


def _cats_ffn_fake(x, gate, up, down_t, threshold):
    """y has x's shape: (n, dim)."""
    torch._check(x.dim() == 2, lambda: f"x must be 2-D (n, dim), got {x.dim()}-D")
    return x.new_empty(x.shape)


_OPS = KernelOps(FAMILY, SCHEMAS, lambda name: _cats_ffn_fake)
declare, available = _OPS.declare, _OPS.available
declare()  # the op exists (with its fake kernel) whether or not the library loads


def backend() -> str:
    """What :func:`cats_ffn` runs: ``cpp-<isa path>`` (``cpp-avx512``, ``cpp-avx2``, ``cpp-scalar``) or
    ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force it


def _check(x, gate, up, down_t, threshold) -> None:
    """Raise a ValueError that says what to pass; the kernel then never sees a bad input."""
    for name, t in (("x", x), ("gate", gate), ("up", up), ("down_t", down_t)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} is {t.dtype}; pass {name}.float()")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}; pass {name}.cpu()")
        if t.dim() != 2:
            raise ValueError(f"{name} is {t.dim()}-D {tuple(t.shape)}; pass a 2-D tensor "
                             + ("(n, dim), e.g. x.reshape(-1, dim)" if name == "x" else "(ffn, dim)"))
        if not t.is_contiguous():
            raise ValueError(f"{name} is strided; pass {name}.contiguous()")
    dim, ffn = x.shape[1], gate.shape[0]
    for name, t in (("gate", gate), ("up", up), ("down_t", down_t)):
        if tuple(t.shape) != (ffn, dim):
            hint = ", down_t = down.weight.t().contiguous()" if name == "down_t" else ""
            raise ValueError(f"{name} has shape {tuple(t.shape)}; pass (ffn, dim) = ({ffn}, {dim}), "
                             f"dim from x and ffn from gate{hint}")
    if not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold is {threshold!r}; pass a finite number (< 0 keeps every neuron)")


def cats_ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down_t: torch.Tensor,
             threshold: float) -> torch.Tensor:
    """The gated FFN computing up and down only for neurons with ``|silu(gate x)| > threshold``.

    x (n, dim); gate, up: the (ffn, dim) weights; down_t = ``down.weight.t().contiguous()``, so an
    active neuron's down column is one contiguous row. ``threshold < 0`` keeps every neuron."""
    _check(x, gate, up, down_t, threshold)
    if not available():
        return reference.cats_ffn_ref(x, gate, up, down_t, threshold)
    return torch.ops.effnb.adaptive_cats_ffn(x, gate, up, down_t, float(threshold))
