"""A kernel family as Python sees it: schemas declared once, the library loaded once.

Why one helper: every technique's ``ops`` module needs the same two steps
(declare the ops with fake kernels so they exist even without a build, load
the C++ library once per process), and a copy per family drifted. A
technique's ops module keeps its own schemas and fakes and delegates these.
"""
from __future__ import annotations

import numbers
from typing import Callable

from . import ext


class KernelOps:
    """``declare()`` and ``available()`` for one family: ``fake(name)`` gives each op's fake kernel
    (shapes for tracing and ``torch.library.opcheck``). The ops module's ``backend()`` names the path
    from its own ``available()``, so a test can force the fallback by replacing that one function."""

    def __init__(self, family: str, schemas: dict[str, str], fake: Callable[[str], Callable]):
        self.family, self.schemas, self.fake = family, schemas, fake
        self._lib, self._loaded = None, None

    def declare(self):
        """Define the family's ops and their fake kernels, once per process."""
        if self._lib is None:
            import torch
            self._lib = ext.declare(self.family, self.schemas)
            for name in self.schemas:
                torch.library.register_fake(f"effnb::{name}", self.fake(name), lib=self._lib)
        return self._lib

    def available(self) -> bool:
        """True when the C++ kernels are loaded; decided once per process (checking a build hashes the sources)."""
        if self._loaded is None:
            self.declare()
            self._loaded = ext.load(self.family)
        return self._loaded


def check_tensor(t, name: str, dtype, dims: int, shape_hint: str) -> None:
    """Raise a ValueError that says what to pass unless ``t`` is a contiguous CPU tensor of ``dtype``
    with ``dims`` dimensions: what every kernel wrapper checks before its kernel runs."""
    import torch
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        cast = {torch.float32: "float()", torch.int64: "long()"}.get(dtype, f"to({dtype})")
        raise ValueError(f"{name} is {t.dtype}; pass {name}.{cast}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on {t.device}; pass {name}.cpu()")
    if t.dim() != dims:
        raise ValueError(f"{name} is {t.dim()}-D {tuple(t.shape)}; pass {shape_hint}")
    if not t.is_contiguous():
        raise ValueError(f"{name} is strided; pass {name}.contiguous()")


def check_int(x, name: str, low: int, hint: str) -> int:
    """``x`` as an int if it is a whole number >= ``low`` (not a bool), else a ValueError saying ``hint``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low:
        raise ValueError(f"{name} is {x!r}; pass {hint}")
    return int(x)


def check_cache_heads(hq: int, hkv: int, length, cap: int) -> int:
    """A decode kernel's grouped heads and cache length: ``hq`` query heads share ``hkv`` key/value
    heads (query head j reads kv head j // (hq // hkv)), and ``1 <= length <= cap`` rows are valid."""
    if hkv < 1 or hq % hkv:
        raise ValueError(f"Hq = {hq} is not a multiple of Hkv = {hkv}; pass Hq = group * Hkv query heads "
                         "(query head j uses kv head j // group)")
    length = check_int(length, "length", 1, f"1 <= length <= cap = {cap}")
    if length > cap:
        raise ValueError(f"length is {length}; pass 1 <= length <= cap = {cap}")
    return length
