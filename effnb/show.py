"""Notebooks show code from effnb/ and kernels/, never paste it (so the book cannot drift from the code)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from . import provenance


def show_source(obj) -> Any:
    """The source of an effnb function or class as a highlighted code block (notebooks show, never paste)."""
    from IPython.display import Code
    return Code(inspect.getsource(obj), language="python")


def show_file(path: str, start: str | None = None, end: str | None = None) -> Any:
    """A kernel file from ``kernels/``, highlighted: whole, or from the first line starting with
    ``start`` to the next line starting with ``end`` (a literalinclude for notebooks)."""
    from IPython.display import Code
    p = Path(path)
    p = p if p.is_absolute() else provenance.ROOT / p
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; pass a path relative to the effnb checkout")
    lines = p.read_text().splitlines()
    i = next((k for k, ln in enumerate(lines) if start and ln.startswith(start)), None) if start else 0
    if i is None:
        raise ValueError(f"no line of {p.name} starts with {start!r}")
    j = next((k for k, ln in enumerate(lines) if end and k > i and ln.startswith(end)), len(lines) - 1)
    lang = {".cpp": "cpp", ".h": "cpp", ".py": "python"}.get(p.suffix, "text")
    return Code("\n".join(lines[i:j + 1]), language=lang)
