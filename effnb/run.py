"""Run chapter notebooks with papermill, strictly validated, written atomically.

A chapter is ``notebooks/NN_slug.ipynb`` plus ``NN_slug.yaml``. The notebook's
``parameters`` cell says each parameter's name, type, default and help (its
trailing comment); the YAML adds limits (``min``/``max``, ``max: cores``,
``choices``) and presets (``smoke`` = the notebook's own defaults).

Every parameter is checked before a kernel starts, so a typo costs a second,
not a half-finished run. A run lands in
``<runs_dir>/<hardware-id>/<stem>__<preset>[__k=v...].ipynb`` with a JSON
sidecar of the same name. Both are written under a ``.tmp`` name and renamed
into place, the sidecar last, so a killed run leaves either a complete result
or nothing that looks like one.

A failed cell keeps the partial notebook as ``<name>.failed.ipynb``; the
sidecar ``<name>.json`` then has ``status: failed`` and names the cell, and an
older ``<name>.ipynb`` is removed so that no stale result sits beside it.
"""
from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import io
import json
import os
import re
import threading
import time
import tokenize
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from . import threads as _threads

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
RUNS_DIR = ROOT / "book" / "runs"
KERNEL = "python3"
SIDECAR_ENV = "EFFNB_SIDECAR"
# The kernel's own log (e.g. ipykernel's "running over TCP" notice) is noise on a
# loopback-only run; errors still show, and cell output is untouched.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]

# One run per process at a time: papermill changes the working directory and
# the kernel inherits os.environ, both process-wide.
_RUN_LOCK = threading.Lock()


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
                elif self.name == "device" and v == "cuda" and not _cuda_available():
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
class Chapter:
    """A chapter notebook, its parameters and presets."""
    id: str
    stem: str
    notebook: Path
    spec: Path | None
    title: str
    params: dict[str, Param] = field(default_factory=dict)
    presets: dict[str, dict] = field(default_factory=dict)

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


def load_chapter(notebook: Path) -> Chapter:
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
    return Chapter(chapter_id, stem, notebook, spec_path, str(title), params, presets)


def discover(notebooks_dir: Path | str | None = None) -> list[Chapter]:
    """Every ``NN_*.ipynb`` chapter in ``notebooks_dir`` (default: the repo's notebooks/), in order."""
    d = Path(notebooks_dir or NOTEBOOKS_DIR)
    found = sorted(p for p in d.glob("[0-9][0-9]_*.ipynb") if "." not in p.stem)
    return [load_chapter(p) for p in found]


def find_chapter(name: str | Chapter, notebooks_dir: Path | str | None = None) -> Chapter:
    """A chapter by id ("01", "1"), stem ("01_measuring") or path; UsageError lists the valid ones."""
    if isinstance(name, Chapter):
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
def parse_assignments(chapter: Chapter, pairs: list[str]) -> dict:
    """``["name=value", ...]`` from the command line as typed values (not yet range-checked)."""
    out = {}
    for pair in pairs or []:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"-p {pair!r}: write -p name=value, e.g. -p threads=1")
        out[name] = _param(chapter, name).parse(text)
    return out


def _param(chapter: Chapter, name: str) -> Param:
    if name in chapter.params:
        return chapter.params[name]
    close = difflib.get_close_matches(name, list(chapter.params), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UsageError(f"unknown parameter '{name}' for chapter {chapter.stem}: {hint}"
                     f"valid parameters: {', '.join(chapter.params) or 'none'}")


def resolve(chapter: Chapter, preset: str = "smoke", overrides: dict | None = None) -> dict:
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


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def check_environment(params: dict) -> None:
    """Raise EnvironmentUnsupported when this machine cannot run these parameters (exit code 3)."""
    if params.get("device") == "cuda":
        if not _cuda_available():
            raise EnvironmentUnsupported("device=cuda, but torch sees no CUDA GPU on this machine; "
                                    "use -p device=cpu")


def effective_overrides(chapter: Chapter, preset: str, overrides: dict | None) -> dict:
    """The overrides that change a value the preset sets: they name the run's files."""
    base = resolve(chapter, preset)
    full = resolve(chapter, preset, overrides)
    return {k: full[k] for k in sorted(overrides or {}) if full[k] != base[k]}


def _slug_value(v) -> str:
    text = _fmt(v)
    return "".join(c if c.isalnum() or c in "._,+-" else "-" for c in text)


def run_name(chapter: Chapter, preset: str, overrides: dict | None = None) -> str:
    """``<stem>__<preset>[__k=v...]``: the file name of a run, without suffix."""
    parts = [chapter.stem, preset]
    parts += [f"{k}={_slug_value(v)}" for k, v in effective_overrides(chapter, preset, overrides).items()]
    return "__".join(parts)


def hardware_id() -> str:
    from . import provenance
    return provenance.hardware_id()


@dataclass
class RunPaths:
    """Where one run's files go; ``.tmp`` names are in-progress, never results."""
    dir: Path
    name: str

    @property
    def notebook(self) -> Path:
        return self.dir / f"{self.name}.ipynb"

    @property
    def failed(self) -> Path:
        return self.dir / f"{self.name}.failed.ipynb"

    @property
    def sidecar(self) -> Path:
        return self.dir / f"{self.name}.json"

    @property
    def tmp_notebook(self) -> Path:
        return self.dir / f"{self.name}.ipynb.tmp"

    @property
    def kernel_sidecar(self) -> Path:
        return self.dir / f"{self.name}.kernel.json.tmp"

    def tmps(self) -> list[Path]:
        return sorted(self.dir.glob(f"{self.name}.*tmp"))


def run_paths(chapter: Chapter, preset: str = "smoke", overrides: dict | None = None,
              runs_dir: Path | str | None = None, hardware: str | None = None) -> RunPaths:
    d = Path(runs_dir or RUNS_DIR) / (hardware or hardware_id())
    return RunPaths(d, run_name(chapter, preset, overrides))


_EFFNB_IMPORT = re.compile(r"\beffnb\.(\w+)|from[ \t]+effnb[ \t]+import[ \t]+([\w \t,()]+)|from[ \t]+\.(\w*)[ \t]+import[ \t]+([\w \t,()]+)")


def _effnb_modules(source: str) -> set[str]:
    """Names of effnb modules a piece of code uses (``effnb.x``, ``from effnb import x``, ``from .x import``)."""
    names = set()
    for dotted, from_abs, rel_mod, rel_names in _EFFNB_IMPORT.findall(source):
        if dotted:
            names.add(dotted)
        for group in (from_abs, rel_names if rel_mod == "" else ""):
            names.update(n.strip() for n in group.replace("(", " ").replace(")", " ").split(",") if n.strip())
        if rel_mod:
            names.add(rel_mod)
    return {n.split()[0] for n in names if n}


def _code_files(notebook_source: str = "") -> list[Path]:
    """The code a run depends on: the effnb modules the notebook uses, what they import in turn, and the kernels.

    A change to another chapter's module does not invalidate this chapter's runs.
    """
    pkg = ROOT / "effnb"
    seen: set[str] = set()
    todo = _effnb_modules(notebook_source) | {"__init__"}
    while todo:
        name = todo.pop()
        path = pkg / f"{name}.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        todo |= _effnb_modules(path.read_text()) - seen
    files = [pkg / f"{n}.py" for n in seen]
    kernels = ROOT / "kernels"
    if kernels.is_dir():  # one library holds every kernel: any change rebuilds all
        files += [p for p in kernels.glob("*") if p.is_file() and p.suffix in (".cpp", ".h", ".hpp")]
    return sorted(files)


def _notebook_source(path: Path) -> str:
    """Cell types and sources only: outputs and execution counts do not change what a run computes."""
    nb = json.loads(path.read_text())
    return "\n".join(f"#{c.get('cell_type')}\n" + "".join(c.get("source", "")) for c in nb.get("cells", []))


def inputs_hash(chapter: Chapter | str, preset: str = "smoke", overrides: dict | None = None,
                notebooks_dir: Path | str | None = None, hardware: str | None = None) -> str:
    """sha256 of everything a run's result depends on: a sweep skips a run whose hash is unchanged.

    Covers the notebook's cells (not their outputs) and its YAML, the effnb
    modules it uses (and theirs), the kernels, the resolved parameters and the
    hardware id.
    """
    ch = find_chapter(chapter, notebooks_dir)
    h = hashlib.sha256()

    def add(tag: str, data: bytes):
        h.update(tag.encode() + b"\0" + len(data).to_bytes(8, "little") + data)

    source = _notebook_source(ch.notebook)
    add("notebook", source.encode())
    add("spec", ch.spec.read_bytes() if ch.spec else b"")
    for p in _code_files(source):
        add("code:" + p.relative_to(ROOT).as_posix(), p.read_bytes())
    add("parameters", json.dumps(resolve(ch, preset, overrides), sort_keys=True, default=str).encode())
    add("hardware", (hardware or hardware_id()).encode())
    return h.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_notebook(nb, path: Path) -> None:
    import nbformat
    _atomic_write(path, nbformat.writes(nb) + "\n")


def _first_line(source) -> str:
    text = "".join(source) if isinstance(source, list) else str(source or "")
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:120]
    return ""


_PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


def _source_index_of_error(nb, fallback: int) -> int:
    """Index of the failing cell in the chapter's own notebook (papermill's added cells not counted)."""
    i = 0
    for cell in nb.cells:
        if _PAPERMILL_TAGS & set(cell.get("metadata", {}).get("tags", [])):
            continue
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return i
        i += 1
    return fallback


def read_sidecar(path: Path) -> dict | None:
    """A finished run's sidecar, or None when missing or unreadable (e.g. cut off)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_current(paths: RunPaths, digest: str) -> bool:
    """True when a finished, successful run with these exact inputs is already on disk."""
    side = read_sidecar(paths.sidecar)
    run = (side or {}).get("run") or {}
    return (run.get("status") == "ok" and run.get("inputs_hash") == digest
            and paths.notebook.exists())


# ------------------------------------------------------------------- run
def run_chapter(chapter: Chapter | str, preset: str = "smoke", overrides: dict | None = None,
                runs_dir: Path | str | None = None, notebooks_dir: Path | str | None = None,
                progress: bool = True, hardware: str | None = None, timeout: float | None = None) -> dict:
    """Validate, execute with papermill, and write the executed notebook and its sidecar.

    Returns the sidecar dict. Raises UsageError (bad chapter/preset/parameter),
    EnvironmentUnsupported (e.g. no GPU for device=cuda) before any kernel starts,
    and CellFailed after a cell raised (partial notebook and failed sidecar kept).
    """
    ch = find_chapter(chapter, notebooks_dir)
    params = resolve(ch, preset, overrides)
    check_environment(params)
    eff = effective_overrides(ch, preset, overrides)
    hw = hardware or hardware_id()
    paths = run_paths(ch, preset, overrides, runs_dir, hw)
    digest = inputs_hash(ch, preset, overrides, hardware=hw)
    paths.dir.mkdir(parents=True, exist_ok=True)

    import papermill

    run = {"chapter": ch.id, "title": ch.title, "preset": preset, "overrides": eff,
           "parameters": params, "notebook": _rel(ch.notebook), "output": _rel(paths.notebook),
           "hardware_id": hw, "started": _now(), "finished": None, "elapsed_s": None,
           "inputs_hash": digest, "status": "ok", "failed_cell": None, "error": None}
    t0 = time.perf_counter()
    error = None
    with _RUN_LOCK:
        for p in (paths.tmp_notebook, paths.kernel_sidecar):
            p.unlink(missing_ok=True)
        old_env = os.environ.get(SIDECAR_ENV)
        os.environ[SIDECAR_ENV] = str(paths.kernel_sidecar)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not end in one of")
                papermill.execute_notebook(
                    str(ch.notebook), str(paths.tmp_notebook), parameters=params,
                    kernel_name=KERNEL, cwd=str(ch.notebooks_dir), progress_bar=progress,
                    log_output=False, execution_timeout=timeout, extra_arguments=KERNEL_ARGS)
        except papermill.PapermillExecutionError as exc:
            error = exc
        except KeyboardInterrupt:
            for p in (paths.tmp_notebook, paths.kernel_sidecar):
                p.unlink(missing_ok=True)
            raise
        except Exception as exc:  # noqa: BLE001 - a dead kernel or timeout is a failed run too
            error = exc
        finally:
            if old_env is None:
                os.environ.pop(SIDECAR_ENV, None)
            else:
                os.environ[SIDECAR_ENV] = old_env

    run["finished"] = _now()
    run["elapsed_s"] = round(time.perf_counter() - t0, 3)
    side = read_sidecar(paths.kernel_sidecar) or {"chapter": ch.id, "parameters": params}
    paths.kernel_sidecar.unlink(missing_ok=True)

    if error is not None:
        run["status"] = "failed"
        if isinstance(error, papermill.PapermillExecutionError):
            run["failed_cell"] = {"index": error.cell_index, "execution_count": error.exec_count,
                                  "first_line": _first_line(error.source)}
            run["error"] = f"{error.ename}: {error.evalue}"
        else:
            run["error"] = f"{type(error).__name__}: {error}"
        run["output"] = _rel(paths.failed)
    side["status"] = run["status"]
    side["run"] = run

    import nbformat
    partial = None
    if paths.tmp_notebook.exists():
        nb = nbformat.read(str(paths.tmp_notebook), as_version=4)
        if run["failed_cell"] is not None:
            run["failed_cell"]["index"] = _source_index_of_error(nb, run["failed_cell"]["index"])
        nb.metadata["effnb"] = side
        target = paths.failed if error is not None else paths.notebook
        if "papermill" in nb.metadata:  # it recorded the .tmp name it wrote to
            nb.metadata["papermill"]["output_path"] = str(target)
        _write_notebook(nb, target)
        paths.tmp_notebook.unlink(missing_ok=True)
        partial = target if error is not None else None
    elif error is not None:
        run["output"] = None
    if error is not None:
        paths.notebook.unlink(missing_ok=True)  # no stale success beside a failed sidecar
    else:
        paths.failed.unlink(missing_ok=True)
    _atomic_write(paths.sidecar, json.dumps(side, indent=1, default=str) + "\n")

    if error is not None:
        cell = run["failed_cell"]
        where = (f"cell {cell['index']} (`{cell['first_line']}`)" if cell else "the run")
        raise CellFailed(f"chapter {ch.stem} ({preset}): {where} failed: {run['error']}; "
                         f"partial notebook: {partial or 'none written'}; sidecar: {paths.sidecar}",
                         sidecar=side, partial=partial)
    return side


# --------------------------------------------------------------- refresh
def refresh(chapter: Chapter | str, notebooks_dir: Path | str | None = None,
            timeout: float | None = None) -> Path:
    """Re-execute the committed notebook in place with its own (smoke) defaults.

    Uses nbclient directly, so no injected-parameters cell or papermill
    metadata appears; execution counts are kept: these are the reference
    outputs nbval compares against. On a failing cell the file is left as it
    was and CellFailed is raised.
    """
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    ch = find_chapter(chapter, notebooks_dir)
    nb = nbformat.read(str(ch.notebook), as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("effnb", None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, record_timing=False,
                                     extra_arguments=KERNEL_ARGS,
                                     resources={"metadata": {"path": str(ch.notebooks_dir)}})
    with _RUN_LOCK:
        old_env = os.environ.pop(SIDECAR_ENV, None)  # a refresh writes no sidecar
        try:
            client.execute()
        except CellExecutionError as exc:
            idx = next((i for i, c in enumerate(nb.cells) if any(
                o.get("output_type") == "error" for o in c.get("outputs", []))), None)
            line = _first_line(nb.cells[idx].source) if idx is not None else ""
            raise CellFailed(f"refresh {ch.stem}: cell {idx} (`{line}`) failed: "
                             f"{exc.ename}: {exc.evalue}; {ch.notebook.name} left unchanged") from None
        finally:
            if old_env is not None:
                os.environ[SIDECAR_ENV] = old_env
    _write_notebook(nb, ch.notebook)
    return ch.notebook
