"""The MobileNetV2 inverted-residual block: weights, a plain reference, torch's eager block, its cost.

A block maps ``c_in`` channels to ``c_out`` through ``c_exp = expansion * c_in``:
1x1 expand + ReLU6, depthwise 3x3 + ReLU6, 1x1 project, plus the input when
``c_in == c_out`` (Sandler et al. 2018; biases stand for folded batch norm).
Our kernels take NHWC activations and the weights as matrices (:meth:`IRBlock.mats`);
torch's block takes conv weights. The reference works on the matrices in NHWC
with einsum and shifted slices, so it shares no code with either.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .counts import FP32, positive_ints

# MobileNetV2's stride-1 blocks with a residual (Cin == Cout), as "channels@resolution" (expansion 6).
MOBILENET_V2 = ("24@56", "32@28", "64@14", "96@14", "160@7")


def parse(spec: str) -> tuple[int, int]:
    """``"24@56"`` -> (24 channels, 56x56 pixels)."""
    m = re.fullmatch(r"\s*(\d+)\s*@\s*(\d+)\s*", str(spec))
    if not m:
        raise ValueError(f"block {spec!r}: write channels@resolution, e.g. '24@56'")
    c, hw = int(m.group(1)), int(m.group(2))
    positive_ints(channels=c, resolution=hw)
    return c, hw


@dataclass(frozen=True)
class IRBlock:
    """Conv weights of one block, torch layout: w1 [Cexp, Cin, 1, 1], wd [Cexp, 1, 3, 3], w2 [Cout, Cexp, 1, 1]."""
    w1: torch.Tensor
    b1: torch.Tensor
    wd: torch.Tensor
    bd: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    @property
    def c_in(self) -> int:
        return self.w1.shape[1]

    @property
    def c_exp(self) -> int:
        return self.w1.shape[0]

    @property
    def c_out(self) -> int:
        return self.w2.shape[0]

    @property
    def residual(self) -> bool:
        return self.c_in == self.c_out

    def mats(self) -> tuple:
        """(w1 [Cin, Cexp], b1, wd [9, Cexp], bd, w2 [Cexp, Cout], b2): what the C++ kernels read."""
        ce = self.c_exp
        return (self.w1.reshape(ce, self.c_in).t().contiguous(), self.b1.contiguous(),
                self.wd.reshape(ce, 9).t().contiguous(), self.bd.contiguous(),
                self.w2.reshape(self.c_out, ce).t().contiguous(), self.b2.contiguous())


def make_block(c_in: int, expansion: int = 6, c_out: int | None = None, seed: int = 0) -> IRBlock:
    """Random weights scaled so that the ReLU6s neither die nor saturate (pre-activations ~ N(0, 1))."""
    c_out = c_in if c_out is None else c_out
    positive_ints(c_in=c_in, expansion=expansion, c_out=c_out)
    ce = c_in * expansion
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, fan_in=1):
        return torch.randn(*shape, generator=g) / fan_in ** 0.5
    return IRBlock(rnd(ce, c_in, 1, 1, fan_in=c_in), rnd(ce) * 0.5 + 1.0, rnd(ce, 1, 3, 3, fan_in=9),
                   rnd(ce) * 0.5 + 0.5, rnd(c_out, ce, 1, 1, fan_in=ce), rnd(c_out) * 0.5)


def reference_nhwc(x: torch.Tensor, mats: tuple, residual: bool) -> torch.Tensor:
    """The block written out on NHWC ``x`` and matrix weights: einsum, shifted slices, clamp."""
    w1, b1, wd, bd, w2, b2 = mats
    n, h, w, _ = x.shape
    e = (torch.einsum("nhwc,ce->nhwe", x, w1) + b1).clamp(0, 6)
    ep = F.pad(e, (0, 0, 1, 1, 1, 1))  # zero rows and columns around each image
    d = bd.expand_as(e).clone()
    for dy in range(3):
        for dx in range(3):
            d += ep[:, dy:dy + h, dx:dx + w, :] * wd[3 * dy + dx]
    y = torch.einsum("nhwe,eo->nhwo", d.clamp(0, 6), w2) + b2
    return (y + x if residual else y).contiguous()


def reference(x_nhwc: torch.Tensor, block: IRBlock) -> torch.Tensor:
    """:func:`reference_nhwc` in float64: what the kernels are checked against."""
    mats = tuple(m.double() for m in block.mats())
    return reference_nhwc(x_nhwc.double(), mats, block.residual)


def eager(x: torch.Tensor, block: IRBlock, weights: tuple | None = None) -> torch.Tensor:
    """torch's eager block (three F.conv2d, in-place ReLU6, residual add) on NCHW or channels_last ``x``."""
    w1, b1, wd, bd, w2, b2 = weights or (block.w1, block.b1, block.wd, block.bd, block.w2, block.b2)
    with torch.inference_mode():
        e = F.relu6(F.conv2d(x, w1, b1), inplace=True)
        d = F.relu6(F.conv2d(e, wd, bd, padding=1, groups=block.c_exp), inplace=True)
        y = F.conv2d(d, w2, b2)
        return y.add_(x) if block.residual else y


def channels_last(block: IRBlock) -> tuple:
    """The block's conv weights in channels_last memory format (oneDNN's preferred layout)."""
    cl = torch.channels_last
    return (block.w1.to(memory_format=cl), block.b1, block.wd.to(memory_format=cl), block.bd,
            block.w2.to(memory_format=cl), block.b2)


def block_counts(block: IRBlock, batch: int, hw: int) -> tuple[float, float]:
    """(FLOPs, compulsory bytes) of one block call: two per multiply-add; input, output and weights once."""
    positive_ints(batch=batch, hw=hw)
    p = batch * hw * hw
    macs = p * (block.c_in * block.c_exp + 9 * block.c_exp + block.c_exp * block.c_out)
    weights = sum(t.numel() for t in block.mats())
    return 2.0 * macs, float(FP32) * (p * (block.c_in + block.c_out) + weights)


def intermediate_bytes(block: IRBlock, batch: int, hw: int) -> float:
    """Bytes of the expanded activation E (and again of D): what an unfused block writes and reads back."""
    return float(FP32) * batch * hw * hw * block.c_exp


__all__ = ["MOBILENET_V2", "parse", "IRBlock", "make_block", "reference_nhwc", "reference", "eager",
           "channels_last", "block_counts", "intermediate_bytes"]
