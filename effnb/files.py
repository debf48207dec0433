"""Writing results so that a killed process never leaves half a file that looks whole."""
from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write(path: Path | str, data: str | bytes) -> Path:
    """Write under a unique ``.tmp`` name beside ``path``, then rename into place (atomic on POSIX;
    two writers of one file, such as Dask workers sharing a cache, never collide on the temporary)."""
    import tempfile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path | str, data, indent: int = 1) -> Path:
    """``data`` as JSON (numpy scalars and paths as text), written atomically."""
    return atomic_write(path, json.dumps(data, indent=indent, default=str) + "\n")


def read_json(path: Path | str):
    """The JSON in ``path``, or None when it is missing or unreadable (e.g. cut off)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_if_changed(path: Path | str, data: str | bytes) -> bool:
    """Write only when the content differs (so a rebuild sees unchanged files as unchanged)."""
    path = Path(path)
    try:
        old = path.read_bytes()
    except OSError:
        old = None
    new = data.encode() if isinstance(data, str) else data
    if old == new:
        return False
    atomic_write(path, new)
    return True
