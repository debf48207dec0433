"""Weight sparsity that pays: sparse formats, kernels, pruning and the chapter-04 experiments.

A pruned weight only saves time if a kernel skips the zeros *and* reads fewer
bytes than the dense one. :func:`sparsify` turns a dense weight into one of
three layouts the C++ kernels in ``kernels/sparse.cpp`` understand:

* ``"unstructured"``: CSR (row pointer int32, column index uint16 when the
  layer has at most 65536 inputs, else int32; fp32 values);
* ``"1x4"``: groups of four output rows share one column pattern
  (SparseByteNN's fine-grained group sparsity), values stored 4 per column;
* ``"dense"``: no zeros skipped, the weight packed ``[ceil(N/4), K, 4]`` for the
  dense kernel that runs *the same loops* as the 1x4 one.

:func:`linear` and :func:`conv1x1` run them (``torch.ops.effnb.*`` when the
extension is built, a plain torch reference otherwise: ``backend()`` says
which). :func:`sparsify_module` swaps a model's Linear and 1x1 Conv layers for
sparse ones. Pruning (magnitude, per layer or global, gradual schedule, 1x4
groups) and the Sparse-Wide / random-search experiments follow below.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import bench, provenance

PATTERNS = ("unstructured", "1x4", "dense")
OPS = ("sparse_spmm", "sparse_spmv", "group4_spmm", "group4_spmv", "dense4_spmm", "dense4_spmv")


# ---------------------------------------------------------------- backend

_BACKEND: list = []   # decided once per process: checking the build hashes the sources


def backend() -> str:
    """'cpp' when the sparse ops of ``kernels/sparse.cpp`` are loaded, else 'fallback' (plain torch)."""
    if not _BACKEND:
        from .. import ext
        try:
            ext.load("sparse")
            ok = all(hasattr(torch.ops.effnb, op) for op in OPS)
        except (AttributeError, RuntimeError):
            ok = False
        _BACKEND.append("cpp" if ok else "fallback")
    return _BACKEND[0]


# ---------------------------------------------------------------- the sparse weight

@dataclass
class SparseWeight:
    """A pruned (N x K) weight in one of :data:`PATTERNS`' layouts, ready for the kernels."""
    shape: tuple
    pattern: str
    ptr: torch.Tensor        # int32 row (or group) pointer; empty for "dense"
    col: torch.Tensor        # int16 (read as uint16) or int32 column indices; empty for "dense"
    values: torch.Tensor     # fp32: [nnz] / [stored columns * 4] / [G, K, 4]

    @property
    def nnz(self) -> int:
        """Stored weights (for 1x4, four per stored column, zeros inside a group included)."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of the N*K weights not stored."""
        n, k = self.shape
        return 1.0 - self.nnz / max(1, n * k) if self.pattern != "dense" else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes the kernel must read for the weight: values, indices and pointers."""
        return int(sum(t.numel() * t.element_size() for t in (self.ptr, self.col, self.values)))

    def to_dense(self) -> torch.Tensor:
        """The (N x K) fp32 weight this layout stands for (the reference)."""
        n, k = self.shape
        if self.pattern == "dense":
            g = self.values.shape[0]
            return self.values.permute(0, 2, 1).reshape(4 * g, k)[:n].clone()
        col = self.col.long() & 0xFFFF if self.col.dtype == torch.int16 else self.col.long()
        counts = (self.ptr[1:] - self.ptr[:-1]).long()
        if self.pattern == "unstructured":
            rows = torch.repeat_interleave(torch.arange(n), counts)
            w = torch.zeros(n, k)
            w[rows, col] = self.values
            return w
        g = len(counts)
        groups = torch.repeat_interleave(torch.arange(g), counts)
        w = torch.zeros(g, 4, k)
        w[groups, :, col] = self.values.view(-1, 4)
        return w.reshape(4 * g, k)[:n].clone()

    def clone(self) -> "SparseWeight":
        """A copy in fresh memory (cold-cache benchmarks rotate through copies)."""
        return SparseWeight(self.shape, self.pattern, self.ptr.clone(), self.col.clone(), self.values.clone())


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)) \
            or not (0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1) (the fraction of weights removed), got {sparsity!r}")
    return float(sparsity)


def _as_matrix(weight) -> torch.Tensor:
    """A 2-D fp32 view of a Linear weight (N, K) or a 1x1 Conv weight (N, K, 1, 1)."""
    if isinstance(weight, np.ndarray):
        weight = torch.from_numpy(weight)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch tensor or numpy array, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}; pass weight.float()")
    if weight.dim() == 4:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"only 1x1 convolution weights can be sparsified here, got kernel {tuple(weight.shape[2:])}")
        weight = weight.reshape(weight.shape[0], weight.shape[1])
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out x in) or a 1x1 conv weight, got shape {tuple(weight.shape)}")
    return weight.detach().to("cpu", torch.float32).contiguous()


def _index_dtype(k: int, index_dtype: str) -> torch.dtype:
    if index_dtype == "auto":
        return torch.int16 if k <= 65536 else torch.int32
    if index_dtype == "int32":
        return torch.int32
    if index_dtype == "uint16":
        if k > 65536:
            raise ValueError(f"uint16 column indices need at most 65536 inputs, the weight has {k}")
        return torch.int16
    raise ValueError(f"index_dtype must be 'auto', 'uint16' or 'int32', got {index_dtype!r}")


def _narrow(col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Column indices in the kernel's dtype (uint16 values are stored in an int16 tensor)."""
    if dtype == torch.int16:
        return col.to(torch.int32).to(torch.int16).contiguous()  # wraps 32768..65535 like uint16
    return col.to(torch.int32).contiguous()


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: str = "unstructured") -> torch.Tensor:
    """Keep mask (True = keep) removing the ``sparsity`` fraction of smallest-magnitude weights.

    For ``"1x4"`` the unit is a group of 4 consecutive output rows in one column,
    scored by its L2 norm, so the mask is constant within every group.
    """
    sparsity = _check_sparsity(sparsity)
    w = weight.detach().abs().float()
    if pattern == "1x4":
        n, k = w.shape
        pad = (-n) % 4
        wp = F.pad(w, (0, 0, 0, pad)).view(-1, 4, k)
        score = wp.pow(2).sum(1)                       # [G, K]
        keep = _top_mask(score, sparsity)
        return keep.unsqueeze(1).expand(-1, 4, -1).reshape(-1, k)[:n].clone()
    if pattern != "unstructured":
        raise ValueError(f"pattern must be 'unstructured' or '1x4' for a mask, got {pattern!r}")
    return _top_mask(w, sparsity)


def _top_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    n_drop = int(round(sparsity * score.numel()))
    if n_drop == 0:
        return torch.ones_like(score, dtype=torch.bool)
    flat = score.flatten()
    if n_drop < flat.numel():  # fast path: a threshold (exact when there are no ties at it)
        thr = torch.kthvalue(flat, n_drop).values
        keep = flat > thr
        if int(keep.sum()) == flat.numel() - n_drop:
            return keep.view_as(score)
    order = torch.argsort(flat, stable=True)          # ties broken by position: deterministic
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:n_drop]] = False
    return keep.view_as(score)


def sparsify(weight, sparsity: float | None, pattern: str = "unstructured", *,
             index_dtype: str = "auto") -> SparseWeight:
    """Prune ``weight`` by magnitude to ``sparsity`` and store it in ``pattern``'s layout.

    ``sparsity=None`` keeps the weight's existing zeros (a model pruned during
    training). Rows with no weight left and an all-zero weight are fine.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    w = _as_matrix(weight)
    n, k = w.shape
    if sparsity is not None:
        sparsity = _check_sparsity(sparsity)
    if pattern == "dense":
        g = (n + 3) // 4
        w4 = F.pad(w, (0, 0, 0, 4 * g - n)).view(g, 4, k).permute(0, 2, 1).contiguous()
        return SparseWeight((n, k), "dense", torch.zeros(0, dtype=torch.int32),
                            torch.zeros(0, dtype=torch.int32), w4)
    idt = _index_dtype(k, index_dtype)
    if pattern == "unstructured":
        keep = magnitude_mask(w, sparsity) if sparsity is not None else w != 0
        rows, cols = keep.nonzero(as_tuple=True)
        ptr = torch.zeros(n + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
        return SparseWeight((n, k), pattern, ptr.to(torch.int32), _narrow(cols, idt), w[rows, cols].contiguous())
    # 1x4: a (group, column) is stored when any of its four weights is kept
    keep = magnitude_mask(w, sparsity, "1x4") if sparsity is not None else w != 0
    g = (n + 3) // 4
    wk = F.pad(w * keep, (0, 0, 0, 4 * g - n)).view(g, 4, k)
    used = F.pad(keep, (0, 0, 0, 4 * g - n)).view(g, 4, k).any(1)   # [G, K]
    gi, cols = used.nonzero(as_tuple=True)
    ptr = torch.zeros(g + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(torch.bincount(gi, minlength=g), 0)
    vals = wk[gi, :, cols].contiguous().view(-1)                   # [stored, 4] -> flat
    return SparseWeight((n, k), "1x4", ptr.to(torch.int32), _narrow(cols, idt), vals)


# ---------------------------------------------------------------- running them

def _check_sw(sparse) -> SparseWeight:
    if not isinstance(sparse, SparseWeight):
        raise TypeError(f"expected a SparseWeight from effnb.sparse.sparsify, got {type(sparse).__name__}")
    return sparse


def matmul(sparse: SparseWeight, b: torch.Tensor) -> torch.Tensor:
    """C = W @ B for B (K x P) or a vector (K): the kernel every layer calls."""
    sw = _check_sw(sparse)
    n, k = sw.shape
    if b.dtype != torch.float32:
        raise TypeError(f"activations must be float32, got {b.dtype}; pass x.float()")
    if b.shape[0] != k:
        raise ValueError(f"the weight has {k} inputs but the operand has {b.shape[0]} rows")
    b = b.contiguous()
    if backend() != "cpp":
        return sw.to_dense() @ b
    ops = torch.ops.effnb
    vec = b.dim() == 1
    if sw.pattern == "unstructured":
        return (ops.sparse_spmv if vec else ops.sparse_spmm)(sw.ptr, sw.col, sw.values, b, n)
    if sw.pattern == "1x4":
        return (ops.group4_spmv if vec else ops.group4_spmm)(sw.ptr, sw.col, sw.values, b, n)
    return (ops.dense4_spmv if vec else ops.dense4_spmm)(sw.values, b, n)


def linear(x: torch.Tensor, sparse: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` with a sparse W: x (..., K) -> (..., N)."""
    sw = _check_sw(sparse)
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
    sw = _check_sw(sparse)
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
        _check_sparsity(sparsity)
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


# ---------------------------------------------------------------- pruning during training

def gradual_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic schedule: sparsity rises fast early and levels off at ``final`` by ``end``."""
    if end <= start:
        raise ValueError(f"the schedule needs end > start, got start={start}, end={end}")
    t = min(max((step - start) / (end - start), 0.0), 1.0)
    return final + (initial - final) * (1.0 - t) ** 3


def prune_masks(layers: list, sparsity: float, pattern: str = "unstructured", scope: str = "layer") -> list:
    """Magnitude keep-masks for ``layers`` (modules with .weight): per layer, or one global threshold."""
    sparsity = _check_sparsity(sparsity)
    if scope == "layer" or sparsity == 0:
        return [magnitude_mask(_as_matrix(m.weight), sparsity, pattern).view_as(m.weight) for m in layers]
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if pattern != "unstructured":
        raise ValueError("global scope is implemented for the unstructured pattern only")
    scores = torch.cat([m.weight.detach().abs().flatten() for m in layers])
    keep = _top_mask(scores, sparsity)
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


# ---------------------------------------------------------------- data and models for the accuracy experiments

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
          on_step=None, on_epoch=None, masks_for=None) -> nn.Module:
    """Adam on cross-entropy; ``on_step(step, total)`` runs after each update (pruning, regrowth),
    ``on_epoch(epoch, model)`` after each epoch (learning curves; it must not draw random numbers)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per = math.ceil(len(xtr) / batch)
    total, step = epochs * steps_per, 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, total)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model


def train_pruned(model, data, *, sparsity: float, pattern: str = "unstructured", epochs: int = 10,
                 seed: int = 0, scope: str = "layer", prune_every: int = 10, lr: float = 1e-2,
                 batch: int = 64) -> dict:
    """Train with gradual magnitude pruning of the Linear / 1x1 layers to ``sparsity`` (last 30% fine-tunes)."""
    xtr, ytr, xte, yte = data
    layers = [m for _, m in prunable(model)]
    state = {"masks": None}

    def on_step(step, total):
        end = max(2, int(0.7 * total))
        if state["masks"] is not None:
            apply_masks(layers, state["masks"])    # pruned weights stay zero after Adam's update
        if sparsity > 0 and step <= end and (step % prune_every == 0 or step == end):
            s = gradual_sparsity(step, sparsity, start=0, end=end)
            state["masks"] = prune_masks(layers, s, pattern, scope)
            apply_masks(layers, state["masks"])

    train(model, xtr, ytr, epochs=epochs, seed=seed, on_step=on_step, lr=lr, batch=batch)
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
        _check_sparsity(s)
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

# ---------------------------------------------------------------- Sparse-IFT: Sparse-Wide MLPs at equal FLOPs

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
    """Sparse-Wide: every hidden width times ``k``, each layer's sparsity set so its nonzeros equal the dense layer's."""
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


def epochs_to_reach(curve, fraction: float = 0.95) -> int:
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
    to reach 95% of the final accuracy, measure how fast each converges."""
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
    """Mean of a - b, its 95% interval and the paired t-test and Wilcoxon p-values (scipy.stats)."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = len(d)
    if n < 2:
        raise ValueError("a paired test needs at least 2 pairs (seeds)")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if sd > 0 else 0.0
    t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
    try:
        w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    except ValueError:
        w_p = float("nan")
    return {"n": n, "mean_diff": mean, "ci_lo": mean - half, "ci_hi": mean + half, "t_p": t_p, "wilcoxon_p": w_p}


# ---------------------------------------------------------------- speed: the sweep vs sparsity

def _rotating(make, per_bytes: int, llc: int | None = None):
    """A callable cycling through enough copies (``make()`` each) to exceed 4x the last-level cache."""
    n = bench.cold_copies(max(1, per_bytes), llc)
    fns = [make() for _ in range(n)]
    state = [0]

    def call():
        f = fns[state[0] % n]
        state[0] += 1
        return f()
    call.copies = n
    return call


def linear_providers(n: int, k: int, m: int, sparsity: float, seed: int = 0, cold: bool = True) -> dict:
    """Factories (no argument -> no-argument callable) for every peer of the sparse Linear sweep."""
    import scipy.sparse as sps
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    sw = sparsify(w, sparsity)
    wd = sw.to_dense()                  # the pruned weight, dense
    x = torch.randn(m, k, generator=g)
    xt = x.t().contiguous()
    x1 = x[0].contiguous()
    rot = _rotating if cold else (lambda make, per: make())
    out = {}
    out["torch dense F.linear"] = (lambda: rot(lambda: (lambda W=wd.clone(): F.linear(x, W)), 4 * n * k), 4 * n * k)
    # through the public entry point: the C++ kernel, or the reference when backend() is 'fallback'
    out["effnb CSR"] = (lambda: rot(lambda: (lambda s=sw.clone(): matmul(s, x1 if m == 1 else xt)), sw.nbytes),
                        sw.nbytes)
    with warnings.catch_warnings():  # torch's "sparse CSR is in beta" notice: the peer is what users get
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        tcsr = wd.to_sparse_csr()
    tbytes = int(tcsr.values().numel() * 4 + tcsr.col_indices().numel() * 8 + tcsr.crow_indices().numel() * 8)
    if m == 1:
        out["torch CSR"] = (lambda: rot(lambda: (lambda W=tcsr.clone(): W @ x1), tbytes), tbytes)
    else:
        out["torch CSR"] = (lambda: rot(lambda: (lambda W=tcsr.clone(): W @ xt), tbytes), tbytes)
    scsr = sps.csr_matrix(wd.numpy())
    sbytes = int(scsr.data.nbytes + scsr.indices.nbytes + scsr.indptr.nbytes)
    xn, xtn = x1.numpy(), xt.numpy()
    out["scipy CSR"] = (lambda: rot(lambda: (lambda W=scsr.copy(): W @ (xn if m == 1 else xtn)), sbytes), sbytes)
    return out


def linear_sweep(shapes: list, ms: list, sparsities: list, *, repeats: int = 5, seed: int = 0,
                 bsr: bool = False, progress: bool = False):
    """Time every peer at every (shape, M, sparsity), interleaved, cold weights; one tidy frame.

    ``effective_gflops`` counts the dense FLOPs (2*M*N*K) for every provider, so
    it is the speed a user sees; ``gbps`` counts each provider's own weight bytes.
    """
    import pandas as pd
    rows = []
    for (n, k) in shapes:
        for m in ms:
            for s in sparsities:
                provs = linear_providers(n, k, m, s, seed)
                if bsr:
                    provs.update(_bsr_provider(n, k, m, s, seed))
                for name, (factory, wbytes) in provs.items():
                    fn = factory()
                    t = bench.measure(fn, warmup=2, repeats=repeats, label=f"{name} {n}x{k} M={m} s={s}")
                    rows.append({"provider": name, "N": n, "K": k, "M": m, "sparsity": s,
                                 "median_s": t.median, "q25_s": t.q25, "q75_s": t.q75,
                                 "weight_bytes": wbytes, "copies": getattr(fn, "copies", 1),
                                 "gbps": wbytes / t.median / 1e9,
                                 "effective_gflops": 2 * m * n * k / t.median / 1e9,
                                 "effective_gflops_lo": 2 * m * n * k / t.q75 / 1e9,
                                 "effective_gflops_hi": 2 * m * n * k / t.q25 / 1e9})
                    del fn
                del provs
    return pd.DataFrame(rows)


def _bsr_provider(n, k, m, s, seed):
    """torch BSR (4x4 blocks) where this torch build supports BSR @ dense on the CPU."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    # block-sparse at the same sparsity (the unstructured pattern has no empty 4x4 blocks)
    keep = magnitude_mask(w.view(n // 4, 4, k // 4, 4).pow(2).sum((1, 3)), s)
    wd = (w.view(n // 4, 4, k // 4, 4) * keep[:, None, :, None]).view(n, k)
    try:
        b = wd.to_sparse_bsr((4, 4))
        xx = torch.randn(k, m, generator=g)
        b @ xx
    except (RuntimeError, NotImplementedError):
        return {}
    nb = int(b.values().numel() * 4 + b.col_indices().numel() * 8 + b.crow_indices().numel() * 8)
    return {"torch BSR 4x4": (lambda: _rotating(lambda: (lambda W=b.clone(): W @ xx), nb), nb)}


def speedups(df, over: str = "torch dense F.linear", of: str = "effnb CSR"):
    """Per (N, K, M, sparsity): time of ``over`` / time of ``of`` (> 1: ``of`` is faster)."""
    keys = [c for c in ("N", "K", "M", "sparsity", "shape") if c in df.columns]
    wide = df.pivot_table(index=keys, columns="provider", values="median_s")
    return (wide[over] / wide[of]).rename(f"{of} vs {over}")


def break_even(sparsities, speedup) -> float:
    """Lowest sparsity where the speed-up reaches 1, linearly interpolated; nan if never, 0 if always."""
    s, r = np.asarray(sparsities, float), np.asarray(speedup, float)
    order = np.argsort(s)
    s, r = s[order], r[order]
    if r[0] >= 1:
        return float(s[0])
    for i in range(1, len(s)):
        if r[i] >= 1 > r[i - 1]:
            return float(s[i - 1] + (1 - r[i - 1]) * (s[i] - s[i - 1]) / (r[i] - r[i - 1]))
    return float("nan")


MOBILENET_1X1 = [  # (H=W, Cin, Cout) of MobileNet-v1's pointwise layers at 224x224 input
    (112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024)]


def conv_sweep(shapes: list, sparsity: float, *, repeats: int = 5, seed: int = 0):
    """Sparse 1x1 conv (unstructured and 1x4) vs torch's dense conv2d on MobileNet-v1 shapes, batch 1, warm."""
    import pandas as pd
    rows = []
    g = torch.Generator().manual_seed(seed)
    for hw, cin, cout in shapes:
        w = torch.randn(cout, cin, 1, 1, generator=g)
        x = torch.randn(1, cin, hw, hw, generator=g)
        sw = sparsify(w, sparsity)
        sg = sparsify(w, sparsity, "1x4")
        wd = sw.to_dense().view(cout, cin, 1, 1)
        d4 = sparsify(w, None, "dense")
        provs = {"torch dense conv2d": lambda: F.conv2d(x, wd), "effnb sparse 1x1": lambda: conv1x1(x, sw),
                 "effnb 1x4 1x1": lambda: conv1x1(x, sg), "effnb dense same-code": lambda: conv1x1(x, d4)}
        for name, fn in provs.items():
            t = bench.measure(fn, warmup=2, repeats=repeats, label=f"{name} {hw}x{hw}x{cin}->{cout}")
            rows.append({"provider": name, "shape": f"{hw}x{hw}x{cin}->{cout}", "sparsity": sparsity,
                         "median_s": t.median, "q25_s": t.q25, "q75_s": t.q75,
                         "effective_gflops": 2 * hw * hw * cin * cout / t.median / 1e9})
    return pd.DataFrame(rows)


def group_vs_dense(n: int, k: int, ms: list, sparsity: float, *, repeats: int = 5, seed: int = 0):
    """1x4 group-sparse vs the same-code dense kernel (and unstructured CSR), cold weights."""
    import pandas as pd
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    layouts = {"effnb dense same-code": sparsify(w, None, "dense"), "effnb 1x4": sparsify(w, sparsity, "1x4"),
               "effnb CSR": sparsify(w, sparsity)}
    rows = []
    for m in ms:
        x = torch.randn(k, m, generator=g) if m > 1 else torch.randn(k, generator=g)
        for name, sw in layouts.items():
            fn = _rotating(lambda sw=sw: (lambda s=sw.clone(): matmul(s, x)), sw.nbytes)
            t = bench.measure(fn, warmup=2, repeats=repeats, label=f"{name} M={m}")
            rows.append({"provider": name, "M": m, "sparsity": sparsity if name != "effnb dense same-code" else 0.0,
                         "median_s": t.median, "q25_s": t.q25, "q75_s": t.q75, "weight_bytes": sw.nbytes,
                         "gbps": sw.nbytes / t.median / 1e9})
    return pd.DataFrame(rows)


def model_latency(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of one forward pass (warm), gradients off."""
    model.eval()
    with torch.no_grad():
        return bench.measure(lambda: model(x), warmup=2, repeats=repeats).median


def wall(fn):
    """(result, seconds) of one call: for the compile/JIT time reported apart."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def hardware() -> str:
    return provenance.hardware_id()


# ---------------------------------------------------------------- tables and plots for the chapter

def linear_table(df, limits: dict):
    """The sweep with speed-up over dense F.linear and % of the roofline limit per row."""
    from .. import roofline
    out = df.copy()
    keys = ["N", "K", "M", "sparsity"]
    dense = out[out.provider == "torch dense F.linear"].set_index(keys)["median_s"]
    out["speedup_vs_dense"] = [dense.loc[tuple(r[k] for k in keys)] / r.median_s for _, r in out.iterrows()]
    pct, binding = [], []
    for _, r in out.iterrows():
        nnz = r.N * r.K * (1.0 if r.provider.startswith("torch dense") else 1.0 - r.sparsity)
        b = roofline.bound(2 * r.M * nnz, float(r.weight_bytes), float(r.median_s), limits)
        pct.append(b["pct_of_limit"])
        binding.append(b["binding"])
    out["pct_of_limit"], out["binding"] = pct, binding
    return out


def plot_speedups(table, ax=None, title: str = ""):
    """Speed-up over dense F.linear vs sparsity, one panel per (shape, M), the machine in the title."""
    import matplotlib.pyplot as plt
    groups = list(table.groupby(["N", "K", "M"]))
    if ax is None:
        _, ax = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
        ax = ax[0]
    for a, ((n, k, m), g) in zip(ax, groups):
        for name, gp in g.groupby("provider", sort=False):
            a.plot(gp.sparsity, gp.speedup_vs_dense, marker="o", label=name)
        a.axhline(1.0, color="k", lw=1, ls="--")
        a.set_yscale("log")
        a.set_xlabel("weight sparsity")
        a.set_ylabel("speed-up over dense F.linear")
        a.set_title(f"{n}x{k}, M={m}", fontsize="medium")
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize="small")
    plt.suptitle(f"{title} [{provenance.hardware_id()}]".strip())
    plt.tight_layout()
    return ax


def plot_tradeoff(table, summary, title: str = ""):
    """Two panels against sparsity: our CSR kernel's speed-up over dense F.linear (left, one line per
    shape and M) and the digits CNN's test accuracy, mean +- std over seeds (right); machine in the title."""
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    ours = table[table.provider == "effnb CSR"]
    for (n, k, m), g in ours.groupby(["N", "K", "M"]):
        a.plot(g.sparsity, g.speedup_vs_dense, marker="o", label=f"{n}x{k}, M={m}")
    a.axhline(1.0, color="k", lw=1, ls="--")
    a.set_yscale("log")
    a.set_xlabel("weight sparsity")
    a.set_ylabel("speed-up over dense F.linear (ratio)")
    a.set_title("effnb CSR, cold fp32 weights", fontsize="medium")
    a.grid(True, alpha=0.3)
    a.legend(fontsize="small")
    for pattern, g in summary.groupby("pattern", sort=False):
        g = g.sort_values("sparsity")
        b.errorbar(g.sparsity, g["mean"], yerr=g["std"], marker="o", capsize=3, label=pattern)
    dense = summary[(summary.pattern == "unstructured") & (summary.sparsity == 0.0)]
    if len(dense):
        b.axhline(float(dense["mean"].iloc[0]) - 1.0, color="k", lw=1, ls=":", label="dense - 1 point")
    b.set_xlabel("sparsity of the 1x1 convs + head")
    b.set_ylabel("test accuracy (%)")
    n_seeds = int(summary["count"].max())
    b.set_title(f"digits CNN, mean +- std over {n_seeds} seed{'s' if n_seeds > 1 else ''}", fontsize="medium")
    b.grid(True, alpha=0.3)
    b.legend(fontsize="small")
    fig.suptitle(f"{title} [{provenance.hardware_id()}]".strip())
    fig.tight_layout()
    return fig
