"""A chapter's registry entry: its notebook, its YAML and the parameters they declare.

A chapter is ``notebooks/NN_slug.ipynb`` plus ``NN_slug.yaml``. The notebook's
``parameters`` cell says each parameter's name, type, default and help (its
trailing comment). The YAML is the registry: title, the technique packages and
kernel families the chapter uses (its runs are hashed over exactly those), its
bibliography keys, limits for each parameter (``min``/``max``, ``max: cores``,
``choices``) and presets (``smoke`` = the notebook's own defaults).

Every parameter is checked before a kernel starts, so a typo costs a second,
not a half-finished run.
"""
from __future__ import annotations

import ast
import copy
import difflib
import io
import json
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import threads as _threads
from ..provenance import ROOT, cuda_available

NOTEBOOKS_DIR = ROOT / "notebooks"
SPEC_KEYS = {"chapter", "title", "packages", "kernels", "bibliography", "typed_numbers", "parameters", "presets"}

# ----------------------------------------------------------------- errors
class EffnbError(Exception):
    """An error the CLI reports in one message; ``exit_code`` tells the shell why."""
    exit_code = 1


class UsageError(EffnbError, ValueError):
    """Unknown chapter, preset or parameter, or a value it does not allow."""
    exit_code = 2


class EnvironmentUnsupported(EffnbError, RuntimeError):
    """This machine cannot run what was asked (e.g. device=cuda without a GPU)."""
    exit_code = 3


class CellFailed(EffnbError, RuntimeError):
    """A notebook cell raised; the partial notebook and a failed sidecar are kept."""
    exit_code = 4

    def __init__(self, message: str, sidecar: dict | None = None, partial: Path | None = None):
        super().__init__(message)
        self.sidecar = sidecar
        self.partial = partial


# ------------------------------------------------------------ parameters


@dataclass
class Param:
    """One notebook parameter: type and default from the cell, limits from the YAML."""
    name: str
    type: str
    default: object
    help: str = ""
    min: object = None
    max: object = None
    choices: list | None = None

    def allowed(self) -> str:
        """The allowed values in words, for `effnb list` and error messages."""
        if self.choices is not None:
            return "one of " + ", ".join(_fmt(c) for c in self.choices)
        if self.min is not None and self.max is not None:
            return f"{_fmt(self.min)}..{_fmt(self.max)}"
        if self.min is not None:
            return f">= {_fmt(self.min)}"
        if self.max is not None:
            return f"<= {_fmt(self.max)}"
        return f"any {self.type}"

    def parse(self, text: str):
        """A ``-p name=value`` string as this parameter's type."""
        t = self.type
        try:
            if t == "str":
                return text
            if t == "int":
                return int(text.strip())
            if t == "float":
                return float(text.strip())
            if t == "bool":
                low = text.strip().lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(text)
            return yaml.safe_load(text)
        except (ValueError, yaml.YAMLError):
            raise UsageError(f"{self.name}={text!r} is not {_a(t)}; pass {self.name}=<{t}>, "
                             f"{self.allowed()}") from None

    def check(self, value, where: str = ""):
        """Return ``value`` if this parameter allows it (ints widen to float), else raise UsageError."""
        value = _check_type(self, value, where)
        items = value if isinstance(value, list) and self.type == "list" else [value]
        for v in items:
            bad = False
            if self.choices is not None and v not in self.choices:
                bad = True
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (self.min is not None and v < self.min) or (self.max is not None and v > self.max):
                    bad = True
            if bad:
                extra = ""
                if self.name == "threads":
                    extra = f" (this machine has {_threads.available_cores()} usable cores)"
                elif self.name == "device" and v == "cuda" and not cuda_available():
                    extra = "; this chapter has no CUDA path, and torch sees no CUDA GPU on this machine either"
                raise UsageError(f"{self.name}={_fmt(value)}{where} is not allowed: use {self.allowed()}{extra}")
        return value


def _check_type(p: Param, value, where: str):
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list,
                "dict": dict, "tuple": (list, tuple)}.get(p.type)
    if expected is None:  # an exotic annotation: accept any literal
        return value
    ok = isinstance(value, expected) and not (isinstance(value, bool) and p.type in ("int", "float"))
    if not ok:
        raise UsageError(f"{p.name}={_fmt(value)}{where} is not {_a(p.type)}; use {p.allowed()}")
    return float(value) if p.type == "float" else value


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    if isinstance(v, str) and (not v or any(c in v for c in " ,'\"")):
        return repr(v)
    return str(v)


# -------------------------------------------------------------- chapters
@dataclass
class ChapterSpec:
    """A chapter notebook, its parameters and presets."""
    id: str
    stem: str
    notebook: Path
    spec: Path | None
    title: str
    params: dict[str, Param] = field(default_factory=dict)
    presets: dict[str, dict] = field(default_factory=dict)
    packages: list[str] = field(default_factory=list)      # effnb technique packages (hashed whole)
    kernels: list[str] = field(default_factory=list)       # kernel families (sources + common headers)
    bibliography: list[str] = field(default_factory=list)  # keys in book/references.bib

    @property
    def notebooks_dir(self) -> Path:
        return self.notebook.parent

    def defaults(self) -> dict:
        return {n: copy.deepcopy(p.default) for n, p in self.params.items()}


def _limit(value):
    """``cores`` in a YAML limit means this machine's usable cores."""
    return _threads.available_cores() if value == "cores" else value


def _title_from(nb: dict, stem: str) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return stem


def parse_parameters(src: str, where: str = "parameters cell") -> dict[str, Param]:
    """Name, type, literal default and help (trailing comment) of each assignment in a parameters cell.

    Parsed with ast and tokenize rather than papermill's line matcher, which
    skips any line with a second '=' (``# n >= 4`` in a help comment).
    """
    try:
        tree = ast.parse(src)
        comments = {t.start[0]: t.string.lstrip("#").strip()
                    for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    except (SyntaxError, tokenize.TokenError) as exc:
        raise UsageError(f"{where} does not parse: {exc}") from None
    params = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            name, annotation, value = stmt.target.id, ast.unparse(stmt.annotation), stmt.value
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, annotation, value = stmt.targets[0].id, None, stmt.value
        else:
            raise UsageError(f"{where}, line {stmt.lineno}: write only `name: type = literal  # help`")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise UsageError(f"{where}: {name} = {ast.unparse(value)} is not a literal; "
                             "parameters need literal defaults") from None
        typ = type(default).__name__
        if annotation:
            base = annotation.split("[", 1)[0].strip().strip("'\"").lower()
            typ = base if base in ("int", "float", "bool", "str", "list", "dict", "tuple") else annotation
        params[name] = Param(name, typ, default, comments.get(stmt.end_lineno, ""))
    return params


def _parameters_source(nb: dict) -> str:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell.get("source", "")
            return "".join(src) if isinstance(src, list) else src
    return ""


def load_chapter(notebook: Path) -> ChapterSpec:
    """Read a chapter's parameters cell and its YAML; raise UsageError if they disagree."""
    notebook = Path(notebook).resolve()
    spec_path = notebook.with_suffix(".yaml")
    spec = {}
    if spec_path.exists():
        spec = yaml.safe_load(spec_path.read_text()) or {}
    else:
        spec_path = None
    stem = notebook.stem
    chapter_id = spec.get("chapter", stem.split("_", 1)[0])
    chapter_id = f"{chapter_id:02d}" if isinstance(chapter_id, int) else str(chapter_id)
    nb = json.loads(notebook.read_text())
    title = spec.get("title") or _title_from(nb, stem)
    params = parse_parameters(_parameters_source(nb), f"{notebook.name}, parameters cell")

    for name, cons in (spec.get("parameters") or {}).items():
        if name not in params:
            raise UsageError(f"{spec_path.name}: constrains '{name}', which the parameters cell of "
                             f"{notebook.name} does not define; parameters: {', '.join(params) or 'none'}")
        cons = cons or {}
        p = params[name]
        p.min, p.max = _limit(cons.get("min")), _limit(cons.get("max"))
        p.choices = cons.get("choices")
        p.help = cons.get("help") or p.help
    if "threads" in params and params["threads"].min is None and params["threads"].choices is None:
        params["threads"].min, params["threads"].max = 1, _threads.available_cores()

    presets = {"smoke": {}}
    presets.update({k: dict(v or {}) for k, v in (spec.get("presets") or {}).items()})
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise UsageError(f"{spec_path.name}: unknown keys {sorted(unknown)}; a chapter YAML has {sorted(SPEC_KEYS)}")
    lists = {k: [str(v) for v in (spec.get(k) or [])] for k in ("packages", "kernels", "bibliography")}
    return ChapterSpec(chapter_id, stem, notebook, spec_path, str(title), params, presets, **lists)


def discover(notebooks_dir: Path | str | None = None) -> list[ChapterSpec]:
    """Every ``NN_*.ipynb`` chapter in ``notebooks_dir`` (default: the repo's notebooks/), in order."""
    d = Path(notebooks_dir or NOTEBOOKS_DIR)
    found = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb") if "." not in p.stem)
    return [load_chapter(p) for p in found]


def find_chapter(name: str | ChapterSpec, notebooks_dir: Path | str | None = None) -> ChapterSpec:
    """A chapter by id ("01", "1"), stem ("01_measuring") or path; UsageError lists the valid ones."""
    if isinstance(name, ChapterSpec):
        return name
    text = str(name)
    if text.endswith(".ipynb") and Path(text).exists():
        return load_chapter(Path(text))
    d = Path(notebooks_dir or NOTEBOOKS_DIR)
    stems = sorted(p.stem for p in d.glob("[0-9][0-9]_*.ipynb") if "." not in p.stem)
    for stem in stems:
        prefix = stem.split("_", 1)[0]
        if text in (stem, prefix) or (text.isdigit() and int(text) == int(prefix)):
            return load_chapter(d / f"{stem}.ipynb")
    close = difflib.get_close_matches(text, stems, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UsageError(f"no chapter '{text}' in {d}.{hint} Chapters: {', '.join(stems) or 'none'} "
                     "(see `effnb list`)")


# ------------------------------------------------------------ validation
def parse_assignments(chapter: ChapterSpec, pairs: list[str]) -> dict:
    """``["name=value", ...]`` from the command line as typed values (not yet range-checked)."""
    out = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"-p {pair!r}: write -p name=value, e.g. -p threads=1")
        out[name] = _param(chapter, name).parse(text)
    return out


def _param(chapter: ChapterSpec, name: str) -> Param:
    if name in chapter.params:
        return chapter.params[name]
    close = difflib.get_close_matches(name, list(chapter.params), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown parameter '{name}' for chapter {chapter.stem}: {hint}"
                     f"valid parameters: {', '.join(chapter.params) or 'none'}")


def resolve(chapter: ChapterSpec, preset: str = "smoke", overrides: dict | None = None) -> dict:
    """Defaults < preset < overrides, every value checked; raise UsageError before any work."""
    if preset not in chapter.presets:
        close = difflib.get_close_matches(preset, list(chapter.presets), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(f"unknown preset '{preset}' for chapter {chapter.stem}{hint}; "
                         f"presets: {', '.join(chapter.presets)}")
    values = chapter.defaults()
    given = set(chapter.presets[preset]) | set(overrides or {})
    for name, p in chapter.params.items():  # a default may not fit this machine: threads=2 on 1 core
        if name not in given:
            values[name] = p.check(values[name], f" (the default in {chapter.notebook.name})")
    for name, value in chapter.presets[preset].items():
        p = _param(chapter, name)
        values[name] = p.check(value, f" (preset {preset} in {chapter.stem}.yaml)")
    for name, value in (overrides or {}).items():
        p = _param(chapter, name)
        if isinstance(value, str) and p.type != "str":
            value = p.parse(value)
        values[name] = p.check(value)
    return values


def check_environment(params: dict) -> None:
    """Raise EnvironmentUnsupported when this machine cannot run these parameters (exit code 3)."""
    if params.get("device") == "cuda":
        if not cuda_available():
            raise EnvironmentUnsupported("device=cuda, but torch sees no CUDA GPU on this machine; "
                                    "use -p device=cpu")


def effective_overrides(chapter: ChapterSpec, preset: str, overrides: dict | None) -> dict:
    """The overrides that change a value the preset sets: they name the run's files."""
    base = resolve(chapter, preset)
    full = resolve(chapter, preset, overrides)
    return {k: full[k] for k in sorted(overrides or {}) if full[k] != base[k]}

