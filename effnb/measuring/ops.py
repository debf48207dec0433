"""The ``fused`` kernel family as torch ops: schemas, fake kernels, and the calls the chapter makes.

Two ops run one MobileNetV2 inverted-residual block on NHWC fp32 activations
with the same C++ building blocks (``kernels/fused/block.h``): ``ir_block_fused``
(one pass over row tiles, the expanded activation stays in cache) and
``ir_block_unfused`` (three passes, the intermediates go through memory). Without
the C++ library both calls run the torch reference, and :func:`backend` says
``torch-fallback``.
"""
from __future__ import annotations

import torch

from .. import ext
from ..family import KernelOps

FAMILY = "fused"
_ARGS = "Tensor x, Tensor w1, Tensor b1, Tensor wd, Tensor bd, Tensor w2, Tensor b2, bool residual"
SCHEMAS = {
    "ir_block_unfused": f"({_ARGS}) -> Tensor",
    "ir_block_fused": f"({_ARGS}, int tile_rows, int channel_block) -> Tensor",
}


def _fake(x, w1, b1, wd, bd, w2, b2, residual, *tuning):
    torch._check(x.dim() == 4, lambda: f"x must be NHWC (4-D), got {x.dim()}-D")
    return x.new_empty((x.shape[0], x.shape[1], x.shape[2], w2.shape[1]))


_OPS = KernelOps(FAMILY, SCHEMAS, lambda name: _fake)
declare, available = _OPS.declare, _OPS.available


def backend() -> str:
    """What runs the block: ``cpp-<isa path>`` or ``torch-fallback``."""
    return ext.backend(FAMILY) if available() else ext.FALLBACK  # the module's available(): tests force the fallback


def fused(x: torch.Tensor, mats: tuple, residual: bool, tile_rows: int = 4, channel_block: int = 0) -> torch.Tensor:
    """The fused block on NHWC ``x`` with matrix-form weights ``mats`` (:meth:`IRBlock.mats`)."""
    if not available():
        from .block import reference_nhwc
        return reference_nhwc(x, mats, residual)
    return torch.ops.effnb.ir_block_fused(x, *mats, residual, int(tile_rows), int(channel_block))


def unfused(x: torch.Tensor, mats: tuple, residual: bool) -> torch.Tensor:
    """The same block as three passes through memory."""
    if not available():
        from .block import reference_nhwc
        return reference_nhwc(x, mats, residual)
    return torch.ops.effnb.ir_block_unfused(x, *mats, residual)


__all__ = ["FAMILY", "SCHEMAS", "declare", "available", "backend", "fused", "unfused"]
