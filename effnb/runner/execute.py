"""Run chapter notebooks with papermill, strictly validated, written atomically.

A run lands in ``<runs_dir>/<hardware-id>/<stem>__<preset>[__k=v...].ipynb``
with a JSON sidecar (:class:`effnb.sidecar.Sidecar`) of the same name. Both are
written under a ``.tmp`` name and renamed into place, the sidecar last, so a
killed run leaves either a complete result or nothing that looks like one.

A failed cell keeps the partial notebook as ``<name>.failed.ipynb``; the
sidecar ``<name>.json`` then has ``status: failed`` and names the cell, and an
older ``<name>.ipynb`` is removed so that no stale result sits beside it.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import files
from ..chapter import NOTEBOOK_ENV, SIDECAR_ENV
from ..provenance import ROOT
from ..sidecar import Sidecar
from .inputs import changed_inputs, input_digests, inputs_hash, source_hash
from .spec import (CellFailed, ChapterSpec, _fmt, check_environment, effective_overrides, find_chapter,
                   resolve)

RUNS_DIR = ROOT / "book" / "runs"
KERNEL = "python3"
# The kernel's own log (e.g. ipykernel's "running over TCP" notice) is noise on a
# loopback-only run; errors still show, and cell output is untouched.
KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]

# One run per process at a time: papermill changes the working directory and
# the kernel inherits os.environ, both process-wide.
_RUN_LOCK = threading.Lock()


def _slug_value(v) -> str:
    text = _fmt(v)
    return "".join(c if c.isalnum() or c in "._,+-" else "-" for c in text)


def run_name(chapter: ChapterSpec, preset: str, overrides: dict | None = None) -> str:
    """``<stem>__<preset>[__k=v...]``: the file name of a run, without suffix."""
    parts = [chapter.stem, preset]
    parts += [f"{k}={_slug_value(v)}" for k, v in effective_overrides(chapter, preset, overrides).items()]
    return "__".join(parts)


def hardware_id() -> str:
    from .. import provenance
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


def run_paths(chapter: ChapterSpec, preset: str = "smoke", overrides: dict | None = None,
              runs_dir: Path | str | None = None, hardware: str | None = None) -> RunPaths:
    d = Path(runs_dir or RUNS_DIR) / (hardware or hardware_id())
    return RunPaths(d, run_name(chapter, preset, overrides))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    try:
        return p.relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def _write_notebook(nb, path: Path) -> None:
    import nbformat
    files.atomic_write(path, nbformat.writes(nb) + "\n")


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
    """A finished run's sidecar as a dict, or None when missing or unreadable (e.g. cut off)."""
    side = Sidecar.read(path)
    return side.to_dict() if side else None


def is_current(paths: RunPaths, digest: str) -> bool:
    """True when a finished, successful run with these exact inputs is already on disk."""
    side = Sidecar.read(paths.sidecar)
    run = side.run if side else {}
    return (run.get("status") == "ok" and run.get("inputs_hash") == digest
            and paths.notebook.exists())


def why_stale(paths: RunPaths, digests: dict[str, str]) -> list[str]:
    """Why a run must (re)run: 'no earlier run', 'failed', or the input groups that changed."""
    side = Sidecar.read(paths.sidecar)
    if side is None or not paths.notebook.exists():
        return ["no earlier run"]
    if side.run.get("status") != "ok":
        return ["the last run failed"]
    if side.run.get("inputs_hash") == inputs_hash(None, digests=digests):
        return []
    return changed_inputs(side.run.get("inputs"), digests) or ["inputs changed"]


# ------------------------------------------------------------------- run
def run_chapter(chapter: ChapterSpec | str, preset: str = "smoke", overrides: dict | None = None,
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
    digests = input_digests(ch, preset, overrides, hardware=hw)
    digest = inputs_hash(ch, digests=digests)
    paths.dir.mkdir(parents=True, exist_ok=True)

    import papermill

    run = {"chapter": ch.id, "title": ch.title, "preset": preset, "overrides": eff,
           "parameters": params, "notebook": _rel(ch.notebook), "output": _rel(paths.notebook),
           "hardware_id": hw, "started": _now(), "finished": None, "elapsed_s": None,
           "inputs_hash": digest, "inputs": digests, "status": "ok", "failed_cell": None, "error": None}
    t0 = time.perf_counter()
    error = None
    with _RUN_LOCK:
        for p in (paths.tmp_notebook, paths.kernel_sidecar):
            p.unlink(missing_ok=True)
        old_env = {k: os.environ.get(k) for k in (SIDECAR_ENV, NOTEBOOK_ENV)}
        os.environ[SIDECAR_ENV] = str(paths.kernel_sidecar)
        os.environ[NOTEBOOK_ENV] = str(ch.notebook)
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
            _restore_env(old_env)

    run["finished"] = _now()
    run["elapsed_s"] = round(time.perf_counter() - t0, 3)
    side = Sidecar.read(paths.kernel_sidecar) or Sidecar(chapter=ch.id, parameters=params)
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
    side.status = run["status"]
    side.run = run

    import nbformat
    partial = None
    if paths.tmp_notebook.exists():
        nb = nbformat.read(str(paths.tmp_notebook), as_version=4)
        if run["failed_cell"] is not None:
            run["failed_cell"]["index"] = _source_index_of_error(nb, run["failed_cell"]["index"])
        nb.metadata["effnb"] = side.to_dict()
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
    side.write(paths.sidecar)

    if error is not None:
        cell = run["failed_cell"]
        where = (f"cell {cell['index']} (`{cell['first_line']}`)" if cell else "the run")
        raise CellFailed(f"chapter {ch.stem} ({preset}): {where} failed: {run['error']}; "
                         f"partial notebook: {partial or 'none written'}; sidecar: {paths.sidecar}",
                         sidecar=side.to_dict(), partial=partial)
    return side.to_dict()


def _restore_env(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# --------------------------------------------------------------- refresh
def refresh(chapter: ChapterSpec | str, notebooks_dir: Path | str | None = None,
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
        old_env = {SIDECAR_ENV: os.environ.pop(SIDECAR_ENV, None),  # a refresh writes no sidecar
                   NOTEBOOK_ENV: os.environ.get(NOTEBOOK_ENV)}
        os.environ[NOTEBOOK_ENV] = str(ch.notebook)
        try:
            client.execute()
        except CellExecutionError as exc:
            idx = next((i for i, c in enumerate(nb.cells) if any(
                o.get("output_type") == "error" for o in c.get("outputs", []))), None)
            line = _first_line(nb.cells[idx].source) if idx is not None else ""
            raise CellFailed(f"refresh {ch.stem}: cell {idx} (`{line}`) failed: "
                             f"{exc.ename}: {exc.evalue}; {ch.notebook.name} left unchanged") from None
        finally:
            _restore_env(old_env)
    nb.metadata["effnb"] = {"source_hash": source_hash(ch)}  # tests/test_hygiene.py: stale outputs fail
    _write_notebook(nb, ch.notebook)
    return ch.notebook
