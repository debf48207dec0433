"""The one record a chapter run leaves beside its executed notebook (versioned JSON).

Written by :mod:`effnb.chapter` inside the kernel, completed by the runner
(``run``: preset, inputs, timing, failure) and read by the book's pages, which
know no chapter's result keys: what they show comes from the fields below.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import files

SCHEMA = 2


@dataclass
class Sidecar:
    chapter: str = ""
    status: str = "ok"                      # ok | failed
    elapsed_s: float | None = None          # inside the kernel, from chapter.start to finish
    parameters: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    claims: list = field(default_factory=list)      # effnb.claims rows
    results: dict = field(default_factory=dict)     # ch.record(name, value)
    limits: dict | None = None              # the machine limits this run probed (ch.use_limits)
    backends: dict = field(default_factory=dict)    # kernel family -> cpp-<isa path> | torch-fallback
    run: dict = field(default_factory=dict)         # the runner's record (preset, inputs, timing, errors)
    schema: int = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Sidecar":
        """Tolerant of older files: unknown keys are dropped, missing ones take their defaults."""
        known = {f.name for f in fields(cls)}
        side = cls(**{k: v for k, v in (data or {}).items() if k in known})
        side.schema = int((data or {}).get("schema", 1))
        return side

    def write(self, path: Path | str) -> Path:
        return files.write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: Path | str) -> "Sidecar | None":
        """The sidecar at ``path``, or None when it is missing or unreadable."""
        data = files.read_json(path)
        return cls.from_dict(data) if isinstance(data, dict) else None
