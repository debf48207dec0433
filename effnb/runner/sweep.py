"""Sweeps: many chapter runs from one grid file, resumable, serial or on Dask.

A grid crosses chapters, presets and parameter values::

    runs:
      - chapter: "01"            # an id, a stem, a list of them, or "all"
        presets: [full]          # the CLI's --preset replaces these
        parameters:              # a list is crossed: one run per value
          threads: [1, 2]

Every job is validated before the first one runs. A job whose sidecar says
``ok`` with the same inputs hash (code, notebook, parameters, machine) is
skipped, so a killed sweep resumes where it stopped. One failed job never
stops the others. Serial execution is the default and the right one for
timings; Dask spreads jobs over worker processes (which then share cores, so
their timings are not comparable) and assumes a filesystem shared with them.
"""
from __future__ import annotations

import itertools
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import runner as _run

_ENTRY_KEYS = {"chapter", "chapters", "presets", "preset", "parameters"}


@dataclass(frozen=True)
class Job:
    """One run of a sweep: a chapter stem, a preset and its parameter overrides."""
    chapter: str
    preset: str
    overrides: tuple = ()  # sorted (name, value) pairs, so jobs compare and pickle simply

    @property
    def params(self) -> dict:
        return dict(self.overrides)

    @property
    def label(self) -> str:
        extra = " ".join(f"{k}={_run._fmt(v)}" for k, v in self.overrides)
        return f"{self.chapter} {self.preset}" + (f" {extra}" if extra else "")


def load_grid(path: Path | str) -> list[dict]:
    """The ``runs`` entries of a grid file; UsageError says what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise _run.UsageError(f"grid file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _run.UsageError(f"grid file {path} is not valid YAML: {exc}") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise _run.UsageError(f"grid file {path}: expected `runs:` with a list of entries like "
                              "{chapter: \"01\", presets: [full]}")
    for i, entry in enumerate(runs):
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise _run.UsageError(f"grid file {path}, entry {i}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"use {', '.join(sorted(_ENTRY_KEYS))}")
    return runs


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _value_options(param: _run.Param, value) -> list:
    """The values a grid entry crosses for one parameter (a list-typed value needs a list of lists)."""
    if param.type == "list":
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return _as_list(value)


def expand(runs: list[dict], preset: str | None = None,
           notebooks_dir: Path | str | None = None) -> list[Job]:
    """All jobs of a grid, each fully validated (UsageError before anything runs), duplicates dropped."""
    jobs, seen = [], set()
    for entry in runs:
        names = entry.get("chapters", entry.get("chapter"))
        if names is None:
            raise _run.UsageError("grid entry without `chapter`: " + repr(entry))
        if names == "all":
            chapters = _run.discover(notebooks_dir)
        else:
            chapters = [_run.find_chapter(str(n), notebooks_dir) for n in _as_list(names)]
        presets = [preset] if preset else _as_list(entry.get("presets", entry.get("preset", "smoke")))
        grid = entry.get("parameters") or {}
        for ch in chapters:
            axes = [[(name, v) for v in _value_options(_run._param(ch, name), value)]
                    for name, value in sorted(grid.items())]
            for p in presets:
                for combo in itertools.product(*axes):
                    overrides = dict(combo)
                    _run.resolve(ch, str(p), overrides)  # raises on anything invalid
                    name = _run.run_name(ch, str(p), overrides)
                    if name in seen:
                        continue
                    seen.add(name)
                    eff = _run.effective_overrides(ch, str(p), overrides)
                    jobs.append(Job(ch.stem, str(p), tuple(sorted(eff.items()))))
    return jobs


def run_job(job: Job, runs_dir: str, notebooks_dir: str, force: bool = False,
            progress: bool = False) -> dict:
    """Run (or skip) one job; what each worker executes. Never raises: the result says what happened.

    The skip check happens here, on the machine that runs the job, so a
    worker of another kind compares against its own hardware id.
    """
    t0 = time.perf_counter()
    out = {"job": job.label, "chapter": job.chapter, "preset": job.preset, "overrides": job.params,
           "status": "failed", "elapsed_s": 0.0, "output": None, "error": None,
           "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        ch = _run.find_chapter(job.chapter, notebooks_dir)
        hw = _run.hardware_id()
        paths = _run.run_paths(ch, job.preset, job.params, runs_dir, hw)
        digest = _run.inputs_hash(ch, job.preset, job.params, hardware=hw)
        out["output"] = str(paths.notebook)
        if not force and _run.is_current(paths, digest):
            out["status"] = "skipped"
        else:
            _run.run_chapter(ch, job.preset, job.params, runs_dir=runs_dir, progress=progress, hardware=hw)
            out["status"] = "ran"
    except _run.CellFailed as exc:
        run = (exc.sidecar or {}).get("run") or {}
        cell = run.get("failed_cell")
        where = f"cell {cell['index']} (`{cell['first_line']}`): " if cell else ""
        out["error"] = f"{where}{run.get('error') or exc}"
        out["output"] = str(exc.partial) if exc.partial else None
    except Exception as exc:  # noqa: BLE001 - one bad job must not stop the sweep
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return out


def plan(grid: Path | str | list, preset: str | None = None, runs_dir: Path | str | None = None,
         notebooks_dir: Path | str | None = None, force: bool = False) -> list[dict]:
    """What a sweep would do, without running anything: each job, ``run`` or ``skip``, and why.

    ``why`` is ``no earlier run``, ``the last run failed``, or the declared input
    groups whose digest changed (``kernels sparse``, ``package quant``, ``notebook``...).
    """
    runs = load_grid(grid) if not isinstance(grid, list) else grid
    hw = _run.hardware_id()
    out = []
    for job in expand(runs, preset, notebooks_dir):
        ch = _run.find_chapter(job.chapter, notebooks_dir)
        paths = _run.run_paths(ch, job.preset, job.params, runs_dir, hw)
        why = ["--force"] if force else _run.why_stale(paths, _run.input_digests(ch, job.preset, job.params,
                                                                                  hardware=hw))
        out.append({"job": job.label, "action": "run" if why else "skip", "why": why,
                    "output": str(paths.notebook)})
    return out


def _serial(jobs, runs_dir, notebooks_dir, force, bar):
    for job in jobs:
        bar.set_postfix_str(job.label)
        yield run_job(job, runs_dir, notebooks_dir, force)


def _dask(jobs, runs_dir, notebooks_dir, force, scheduler):
    from distributed import Client, LocalCluster, as_completed

    if scheduler == "local":
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, host="127.0.0.1")
        client = Client(cluster)
    else:
        cluster = None
        client = Client(scheduler, timeout="20s")
    try:
        tag = uuid.uuid4().hex[:8]
        futures = [client.submit(run_job, job, runs_dir, notebooks_dir, force, pure=False,
                                 key=f"effnb-{i}-{tag}") for i, job in enumerate(jobs)]
        by_key = {f.key: job for f, job in zip(futures, jobs)}
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its job only
                job = by_key[fut.key]
                yield {"job": job.label, "chapter": job.chapter, "preset": job.preset,
                       "overrides": job.params, "status": "failed", "elapsed_s": 0.0, "output": None,
                       "error": f"{type(exc).__name__}: {exc}", "worker": None}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def sweep(grid: Path | str | list, preset: str | None = None, scheduler: str | None = None,
          force: bool = False, runs_dir: Path | str | None = None,
          notebooks_dir: Path | str | None = None, progress: bool = True, file=None) -> list[dict]:
    """Run every job of a grid; return one result dict per job (status ran / skipped / failed).

    ``scheduler``: None (serial, in this process), ``"local"`` (a Dask
    LocalCluster of 2 single-thread worker processes) or ``"tcp://host:port"``
    (an existing Dask scheduler whose workers share this filesystem).
    Raises UsageError / EnvironmentUnsupported before any job when a job is invalid.
    """
    from tqdm.auto import tqdm

    runs = load_grid(grid) if not isinstance(grid, list) else grid
    jobs = expand(runs, preset, notebooks_dir)
    if scheduler in (None, "serial", "local"):  # the workers are this machine: check up front
        for job in jobs:
            _run.check_environment(_run.resolve(_run.find_chapter(job.chapter, notebooks_dir),
                                                job.preset, job.params))
    elif not str(scheduler).startswith(("tcp://", "tls://")):
        raise _run.UsageError(f"--scheduler {scheduler!r}: use local or tcp://host:port")
    runs_dir = str(Path(runs_dir or _run.RUNS_DIR).resolve())
    notebooks_dir = str(Path(notebooks_dir or _run.NOTEBOOKS_DIR).resolve())
    file = file or sys.stdout
    results = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="sweep", unit="run", disable=not progress, file=sys.stderr)
    try:
        if scheduler in (None, "serial"):
            stream = _serial(jobs, runs_dir, notebooks_dir, force, bar)
        else:
            stream = _dask(jobs, runs_dir, notebooks_dir, force, scheduler)
        for res in stream:
            results.append(res)
            bar.update(1)
            if res["status"] == "failed":
                bar.write(f"FAILED {res['job']}: {res['error']}"
                          + (f"; partial notebook: {res['output']}" if res["output"] else ""), file=sys.stderr)
    finally:
        bar.close()
    order = {job.label: i for i, job in enumerate(jobs)}
    results.sort(key=lambda r: order.get(r["job"], 0))
    where = "serially" if scheduler in (None, "serial") else f"on Dask ({scheduler})"
    print(summary(results) + f", {time.perf_counter() - t0:.1f} s wall {where}", file=file)
    return results


def summary(results: list[dict]) -> str:
    """A plain-text table of the jobs and a count line: what ran, what was skipped, what failed."""
    rows = [("job", "status", "seconds", "output / error")]
    for r in results:
        detail = r["output"] or ""
        if r["status"] == "failed":
            error = r["error"] if len(r["error"] or "") <= 160 else r["error"][:157] + "..."
            detail = f"{error} (partial: {detail})" if detail else error
        rows.append((r["job"], r["status"], f"{r['elapsed_s']:.1f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2].rjust(widths[2])}  {r[3]}" for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 14)
    counts = {s: sum(r["status"] == s for r in results) for s in ("ran", "skipped", "failed")}
    total = sum(r["elapsed_s"] for r in results)
    lines.append(f"{len(results)} jobs: {counts['ran']} ran, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed; {total:.1f} s of run time")
    return "\n".join(lines)
