"""What a chapter run depends on, hashed: a sweep skips a run whose inputs are unchanged.

Exactly what the chapter's YAML declares, nothing guessed: its notebook's cell
sources (not outputs) and its YAML, the effnb technique packages it lists
(every file, whole), the kernel families it lists (sources, family headers and
``kernels/common``) and which build of each would run (a fallback run reruns
once a compiler builds it), the measurement core (``effnb/*.py``: a change in
timing changes every figure), the resolved parameters and the hardware id. Editing the
sparse kernel therefore reruns chapter 04 only; editing a common header reruns
every chapter that declares a kernel family.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import ext
from ..provenance import ROOT
from .spec import ChapterSpec, UsageError, find_chapter, resolve

PACKAGE_DIR = ROOT / "effnb"


def _notebook_source(path: Path) -> str:
    """Cell types and sources only: outputs and execution counts do not change what a run computes."""
    nb = json.loads(path.read_text())
    return "\n".join(f"#{c.get('cell_type')}\n" + "".join(c.get("source", "")) for c in nb.get("cells", []))


def package_files(name: str) -> list[Path]:
    """Every Python file of one effnb package (``effnb/<name>/``), sorted.

    A dotted name (``models.tiny_decoder``) means one module of a shared package
    and its ``__init__``: a chapter then goes stale only when what it uses changes.
    """
    if "." in name:
        pkg, module = name.split(".", 1)
        path = PACKAGE_DIR / pkg / f"{module.replace('.', '/')}.py"
        if not path.is_file():
            raise UsageError(f"the chapter declares module {name!r}, but effnb/{pkg}/{module}.py does not exist")
        return sorted({path, PACKAGE_DIR / pkg / "__init__.py"})
    folder = PACKAGE_DIR / name
    if not (folder / "__init__.py").is_file():
        have = sorted(p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file())
        raise UsageError(f"the chapter declares package {name!r}, but effnb/{name}/ is not a package; "
                         f"packages: {', '.join(have)}")
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def core_files() -> list[Path]:
    """The measurement core: effnb's top-level modules (the runner package is not a result's input)."""
    return sorted(PACKAGE_DIR.glob("*.py"))


def _build_of(family: str) -> str:
    """Which build of a family would run: its cache key when built, else 'fallback' (a new compiler reruns)."""
    try:
        k = ext.key(family)
    except ext.BuildError:
        return "fallback"
    return k if ext._finished(ext.build_dir(family, k)) else "fallback"


def _source_digests(ch: ChapterSpec) -> dict[str, str]:
    """The chapter's own inputs: cells, YAML, each declared package and kernel family."""
    out = {"notebook": _digest([("cells", _notebook_source(ch.notebook).encode())]),
           "yaml": _digest([("yaml", ch.spec.read_bytes() if ch.spec else b"")])}
    for group, paths in declared_inputs(ch).items():
        out[group] = _digest([(_name(p), p.read_bytes()) for p in paths])
    return out


def declared_inputs(ch: ChapterSpec) -> dict[str, list[Path]]:
    """Group name -> files, for each package and kernel family the chapter declares."""
    groups = {}
    for name in ch.packages:
        groups[f"package {name}"] = package_files(name)
    for family in ch.kernels:
        if family not in ext.families():
            raise UsageError(f"{ch.stem}.yaml declares kernel family {family!r}, but kernels/{family}/ has no "
                             f".cpp; families: {', '.join(ext.families())}")
        groups[f"kernels {family}"] = ext.inputs(family)
    return groups


def _name(p: Path) -> str:
    """A file's name in the hash: relative to the checkout, so two clones hash alike."""
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return p.as_posix()


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for tag, data in parts:
        h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def input_digests(chapter: ChapterSpec | str, preset: str = "smoke", overrides: dict | None = None,
                  notebooks_dir: Path | str | None = None, hardware: str | None = None) -> dict[str, str]:
    """One digest per input group: the notebook, the YAML, each package and family, parameters, hardware."""
    from .. import provenance
    ch = find_chapter(chapter, notebooks_dir)
    out = _source_digests(ch)
    out["core"] = _digest([(_name(p), p.read_bytes()) for p in core_files()])
    out["backends"] = _digest([(f, _build_of(f).encode()) for f in ch.kernels])
    out["parameters"] = _digest([("p", json.dumps(resolve(ch, preset, overrides), sort_keys=True,
                                                  default=str).encode())])
    out["hardware"] = _digest([("hw", (hardware or provenance.hardware_id()).encode())])
    return out


def inputs_hash(chapter: ChapterSpec | str, preset: str = "smoke", overrides: dict | None = None,
                notebooks_dir: Path | str | None = None, hardware: str | None = None,
                digests: dict[str, str] | None = None) -> str:
    """sha256 over :func:`input_digests`: equal hashes mean a run would compute the same thing."""
    digests = digests or input_digests(chapter, preset, overrides, notebooks_dir, hardware)
    return _digest(sorted((k, v.encode()) for k, v in digests.items()))


def changed_inputs(old: dict[str, str] | None, new: dict[str, str]) -> list[str]:
    """The input groups whose digest differs between a stored run and now (all, when none is stored)."""
    if not old:
        return ["no earlier run"]
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def source_hash(chapter: ChapterSpec | str, notebooks_dir: Path | str | None = None) -> str:
    """The hash a committed notebook records when refreshed: its cells, YAML, packages and kernels.

    Machine, parameters and the core are left out on purpose: the committed
    outputs are the smoke run's, and they go stale when the chapter's own code
    changes, which is what ``tests/test_hygiene.py`` checks.
    """
    return inputs_hash(None, digests=_source_digests(find_chapter(chapter, notebooks_dir)))
