"""The record a chapter notebook keeps while it runs.

A notebook starts with ``ch = effnb.chapter.start("01", **parameters)``: that
sets the threads, seeds every generator, and snapshots provenance before any
kernel runs. Results it wants in the book's prose go through ``ch.record``
(which also glues them for myst-nb), claims through ``ch.claims``, and
``ch.finish()`` writes the JSON sidecar the runner placed in ``EFFNB_SIDECAR``.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from . import claims as _claims
from . import provenance
from . import threads as _threads

SIDECAR_ENV = "EFFNB_SIDECAR"


def _jsonable(value):
    """Numbers and containers as plain JSON types (numpy scalars included)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):  # pandas objects
        return _jsonable(value.to_dict(orient="records") if hasattr(value, "columns") else value.to_dict())
    return value


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_device(device: str) -> str:
    """'cpu' always works; 'cuda' only where torch sees a GPU: say so before any work."""
    if device == "cpu":
        return device
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA GPU on this machine; use device='cpu'")
        return device
    raise ValueError(f"device={device!r} is not one of 'cpu', 'cuda'")


class Chapter:
    """One run of one chapter: parameters, provenance, recorded results and claims."""

    def __init__(self, chapter: str, parameters: dict, seed: int):
        self.chapter = chapter
        self.parameters = dict(parameters)
        self.seed = seed
        self.claims = _claims.Ledger(chapter)
        self.results: dict = {}
        self.figures: list[str] = []
        self.started = time.time()
        self.provenance = provenance.collect(self.parameters, {"seed": seed})

    def record(self, name: str, value, *, glue: bool = True, display: bool = False):
        """Keep a result for the sidecar and glue it for the book's prose (``{glue:}`name```)."""
        self.results[name] = _jsonable(value)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()  # numpy scalars: glue a plain number, whose text myst-nb can format
        if glue:
            try:
                from myst_nb import glue as _glue
                _glue(name, value, display=display)
            except ImportError:  # the book stack is optional when exploring
                pass
        return value

    def sidecar(self, status: str = "ok") -> dict:
        return {
            "chapter": self.chapter,
            "status": status,
            "elapsed_s": round(time.time() - self.started, 3),
            "parameters": _jsonable(self.parameters),
            "provenance": self.provenance,
            "claims": self.claims.rows(),
            "results": self.results,
        }

    def finish(self) -> dict:
        """Write the sidecar where the runner asked (``$EFFNB_SIDECAR``); return it."""
        data = self.sidecar()
        path = os.environ.get(SIDECAR_ENV)
        if path:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            tmp.replace(path)
        return data


def start(chapter: str, *, threads: int | None = None, device: str = "cpu", seed: int = 0,
          **parameters) -> Chapter:
    """Validate, set threads and seeds, snapshot provenance; call first in a chapter."""
    n = _threads.set_threads(threads)
    check_device(device)
    seed_everything(seed)
    return Chapter(chapter, dict(parameters, threads=n, device=device, seed=seed), seed)
