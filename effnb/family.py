"""A kernel family as Python sees it: schemas declared once, the library loaded once.

Why one helper: every technique's ``ops`` module needs the same two steps
(declare the ops with fake kernels so they exist even without a build, load
the C++ library once per process), and a copy per family drifted. A
technique's ops module keeps its own schemas and fakes and delegates these.
"""
from __future__ import annotations

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
