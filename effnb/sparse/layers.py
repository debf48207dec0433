"""Sparse weights as layers: ``F.linear`` and 1x1 convolutions that call the kernels, and the swap
that puts them into a trained model (inference only)."""
from __future__ import annotations

import torch
from torch import nn

from .formats import PATTERNS, SparseWeight, check_sparsity, check_weight, sparsify
from .ops import matmul


def linear(x: torch.Tensor, sparse: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with a sparse W: x (..., K) -> (..., N)."""
    sw = check_weight(sparse)
    n, k = sw.shape
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x must be a tensor (..., {k}); got shape {tuple(getattr(x, 'shape', ()))}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 1:
        y = matmul(sw, x2[0]).unsqueeze(0)
    else:
        y = matmul(sw, x2.t().contiguous()).t()
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, n)


def conv1x1(x: torch.Tensor, sparse: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1, stride-1 convolution with a sparse weight: x (B, Cin, H, W) -> (B, Cout, H, W).

    XNNPACK's layout: per image, W (Cout x Cin) times the activations (Cin x pixels),
    vectorised across pixels.
    """
    sw = check_weight(sparse)
    n, k = sw.shape
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != k:
        raise ValueError(f"x must be (batch, {k}, H, W); got shape {tuple(getattr(x, 'shape', ()))}")
    b, _, h, w = x.shape
    x = x.contiguous()
    out = torch.stack([matmul(sw, x[i].view(k, h * w)) for i in range(b)]) if b else x.new_zeros(0, n, h * w)
    if bias is not None:
        out = out + bias.view(1, n, 1)
    return out.view(b, n, h, w)


class _SparseLayer(nn.Module):
    """Inference-only layer holding a :class:`SparseWeight`; subclasses say which kernel applies it."""

    def __init__(self, sw: SparseWeight, bias):
        super().__init__()
        self.sw = sw
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def extra_repr(self):
        return f"{self.sw.shape[1]} -> {self.sw.shape[0]}, {self.sw.pattern}, sparsity {self.sw.sparsity:.2f}"


class SparseLinear(_SparseLayer):
    """Inference-only Linear whose weight is a :class:`SparseWeight`."""

    def forward(self, x):
        return linear(x, self.sw, self.bias)


class SparseConv1x1(_SparseLayer):
    """Inference-only 1x1 stride-1 convolution whose weight is a :class:`SparseWeight`."""

    def forward(self, x):
        return conv1x1(x, self.sw, self.bias)


def is_pointwise(m: nn.Module) -> bool:
    """A Conv2d the 1x1 kernel can replace: 1x1 kernel, stride 1, no padding, no groups."""
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1)
            and m.padding in ((0, 0), 0) and m.groups == 1 and m.dilation == (1, 1))


def prunable(model: nn.Module) -> list:
    """(name, module) of every Linear and 1x1 Conv: the layers sparsity targets (stem and depthwise stay dense)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) or is_pointwise(m)]


def sparsify_module(model: nn.Module, sparsity: float | None, pattern: str = "unstructured") -> list[dict]:
    """Replace ``model``'s Linear and 1x1 Conv layers in place by sparse ones; return a per-layer report.

    ``sparsity=None`` keeps the zeros the weights already have (after pruning
    during training); a number prunes each layer by magnitude to it.
    """
    if sparsity is not None:
        check_sparsity(sparsity)
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    targets = prunable(model)
    if not targets:
        raise ValueError("the model has no nn.Linear or 1x1 nn.Conv2d layer to sparsify")
    report = []
    for name, m in targets:
        sw = sparsify(m.weight, sparsity, pattern)
        new = SparseLinear(sw, m.bias) if isinstance(m, nn.Linear) else SparseConv1x1(sw, m.bias)
        parent = model
        *path, last = name.split(".")
        for p in path:
            parent = getattr(parent, p)
        setattr(parent, last, new)
        dense_bytes = 4 * sw.shape[0] * sw.shape[1]
        report.append({"layer": name, "kind": "linear" if isinstance(m, nn.Linear) else "conv1x1",
                       "shape": f"{sw.shape[0]}x{sw.shape[1]}", "pattern": pattern, "nnz": sw.nnz,
                       "sparsity": sw.sparsity, "dense_bytes": dense_bytes, "sparse_bytes": sw.nbytes,
                       "bytes_ratio": sw.nbytes / dense_bytes})
    return report
