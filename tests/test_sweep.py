"""effnb.sweep: grid expansion, validation up front, resumability after a kill, failures isolated."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effnb import provenance
from effnb import runner as run
from effnb.runner import cli, sweep

NB_DIR = Path(__file__).parent / "data" / "notebooks"
EFFNB = Path(sys.executable).parent / "effnb"
REPO = Path(__file__).resolve().parent.parent


def write_grid(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


# ----------------------------------------------------------- expansion
def test_expand_crosses_lists_and_presets():
    jobs = sweep.expand([{"chapter": "99", "presets": ["smoke", "full"],
                          "parameters": {"label": ["a", "b"], "threads": 1, "sizes": [7, 8]}}],
                        notebooks_dir=NB_DIR)
    labels = [j.label for j in jobs]
    # label=a and threads=1 are the smoke defaults: they do not name the run
    assert labels == ["99_tiny smoke sizes=[7,8]", "99_tiny smoke label=b sizes=[7,8]",
                      "99_tiny full sizes=[7,8]", "99_tiny full label=b sizes=[7,8]"]


def test_expand_list_of_lists_crosses_list_parameters_and_duplicates_drop():
    runs = [{"chapter": ["99", "99_tiny"], "parameters": {"sizes": [[1], [1, 2]]}}]
    jobs = sweep.expand(runs, notebooks_dir=NB_DIR)
    assert [j.label for j in jobs] == ["99_tiny smoke sizes=[1]", "99_tiny smoke"]


def test_cli_preset_replaces_the_grids_presets():
    jobs = sweep.expand([{"chapter": "all", "presets": ["smoke", "full"]}], preset="full", notebooks_dir=NB_DIR)
    assert [j.label for j in jobs] == ["99_tiny full"]


@pytest.mark.parametrize("text, message", [
    ("runs: 3", "expected `runs:`"),
    ("runs:\n  - chapter: '99'\n    params: {}\n", "unknown key"),
    ("runs:\n  - chapter: '98'\n", "no chapter '98'"),
    ("runs:\n  - chapter: '99'\n    presets: [fast]\n", "unknown preset 'fast'"),
    ("runs:\n  - chapter: '99'\n    parameters: {labl: [a]}\n", "did you mean label"),
    ("runs:\n  - chapter: '99'\n    parameters: {label: [a, q]}\n", "label=q is not allowed"),
    ("runs: [", "not valid YAML"),
])
def test_bad_grids_fail_before_any_job(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(run, "run_chapter", lambda *a, **k: pytest.fail("a job ran"))
    with pytest.raises(run.UsageError, match=message):
        sweep.sweep(write_grid(tmp_path / "g.yaml", text), notebooks_dir=NB_DIR, runs_dir=tmp_path,
                    progress=False)


def test_dry_run_lists_jobs(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml", "runs:\n  - chapter: all\n    parameters: {label: [a, b, c]}\n")
    assert cli.main(["sweep", str(grid), "--dry-run", "--notebooks-dir", str(NB_DIR),
                     "--runs-dir", str(tmp_path)]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert lines == ["run 99_tiny smoke no earlier run", "run 99_tiny smoke label=b no earlier run",
                     "run 99_tiny smoke label=c no earlier run", "3 jobs: 3 would run, 0 unchanged"]


@pytest.mark.slow
def test_dry_run_says_which_declared_input_changed(tmp_path):
    import shutil
    nbdir = tmp_path / "nb"
    shutil.copytree(NB_DIR, nbdir)
    runs = [{"chapter": "99"}]
    sweep.sweep(runs, runs_dir=tmp_path / "runs", notebooks_dir=nbdir, progress=False, file=open(os.devnull, "w"))
    [step] = sweep.plan(runs, runs_dir=tmp_path / "runs", notebooks_dir=nbdir)
    assert step["action"] == "skip" and step["why"] == []
    spec = nbdir / "99_tiny.yaml"
    spec.write_text(spec.read_text().replace("scale: {min: 0, max: 10}", "scale: {min: 0, max: 11}"))
    [step] = sweep.plan(runs, runs_dir=tmp_path / "runs", notebooks_dir=nbdir)
    assert step["action"] == "run" and step["why"] == ["yaml"]
    assert sweep.plan(runs, runs_dir=tmp_path / "runs", notebooks_dir=nbdir, preset="full")[0]["why"] == \
        ["no earlier run"]


def test_book_grid_is_valid():
    runs = sweep.load_grid(REPO / "book" / "grid.yaml")
    sweep.expand(runs, preset="smoke")  # every chapter in notebooks/ (maybe none yet) validates


def test_summary_table():
    text = sweep.summary([
        {"job": "01 full", "status": "ran", "elapsed_s": 3.25, "output": "a.ipynb", "error": None},
        {"job": "01 full threads=1", "status": "failed", "elapsed_s": 1.0, "output": None, "error": "boom"}])
    assert "01 full threads=1  failed      1.0  boom" in text and "a.ipynb" in text
    assert text.splitlines()[-1] == "2 jobs: 1 ran, 0 skipped, 1 failed; 4.2 s of run time"


# ---------------------------------------------------------- end to end
@pytest.mark.slow
def test_failed_job_does_not_stop_the_others_and_exits_5(tmp_path, capsys):
    grid = write_grid(tmp_path / "g.yaml",
                      "runs:\n  - chapter: '99'\n    parameters: {fail_in: [compute, '']}\n")
    code = cli.main(["sweep", str(grid), "--notebooks-dir", str(NB_DIR), "--runs-dir", str(tmp_path / "runs"),
                     "--no-progress"])
    assert code == 5
    out = capsys.readouterr().out
    assert "2 jobs: 1 ran, 0 skipped, 1 failed" in out
    assert "cell 2 (`import json`): ValueError: tiny chapter asked to fail (partial: " in out
    (hw,) = (tmp_path / "runs").iterdir()
    assert json.loads((hw / "99_tiny__smoke.json").read_text())["status"] == "ok"
    assert json.loads((hw / "99_tiny__smoke__fail_in=compute.json").read_text())["status"] == "failed"
    # a rerun retries only the failed job
    code = cli.main(["sweep", str(grid), "--notebooks-dir", str(NB_DIR), "--runs-dir", str(tmp_path / "runs"),
                     "--no-progress"])
    assert code == 5 and "2 jobs: 0 ran, 1 skipped, 1 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_sweep_resumes_with_only_the_missing_jobs(tmp_path):
    grid = write_grid(tmp_path / "g.yaml",
                      "runs:\n  - chapter: '99'\n    parameters: {label: [a, b, c], sleep_s: 1.5}\n")
    runs_dir = tmp_path / "runs"
    args = [str(EFFNB), "sweep", str(grid), "--notebooks-dir", str(NB_DIR), "--runs-dir", str(runs_dir),
            "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list(runs_dir.glob("*/*.json")):
            assert proc.poll() is None, "the sweep ended before it was killed"
            time.sleep(0.05)
        time.sleep(0.3)  # the second job's kernel is running now
    finally:
        kernels = children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the worst case: no clean-up code runs at all
        proc.wait(timeout=30)
        for pid in kernels:  # the kernel it had started (it would also exit by itself, soon)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    (hw,) = runs_dir.iterdir()
    first = hw / "99_tiny__smoke__sleep_s=1.5.json"
    done = sorted(p.name for p in hw.glob("*.json"))
    assert done == [first.name], done  # killed mid-way: one job complete, the rest absent or .tmp
    assert json.loads(first.read_text())["status"] == "ok"
    mtime = first.stat().st_mtime_ns

    results = sweep.sweep(grid, notebooks_dir=NB_DIR, runs_dir=runs_dir, progress=False)
    assert [(r["job"], r["status"]) for r in results] == [
        ("99_tiny smoke sleep_s=1.5", "skipped"), ("99_tiny smoke label=b sleep_s=1.5", "ran"),
        ("99_tiny smoke label=c sleep_s=1.5", "ran")]
    assert first.stat().st_mtime_ns == mtime  # the finished job was not touched
    assert sorted(p.name for p in hw.iterdir()) == sorted(
        f"99_tiny__smoke__{extra}sleep_s=1.5.{ext}" for extra in ("", "label=b__", "label=c__")
        for ext in ("ipynb", "json"))  # no .tmp left over
    pids = {json.loads(p.read_text())["results"]["pid"] for p in hw.glob("*.json")}
    assert len(pids) == 3  # three separate kernels ran, one per job


@pytest.mark.slow
def test_force_reruns_and_another_machine_runs_again(tmp_path, monkeypatch):
    grid = write_grid(tmp_path / "g.yaml", "runs:\n  - chapter: '99'\n")
    kw = dict(notebooks_dir=NB_DIR, runs_dir=tmp_path, progress=False)
    assert [r["status"] for r in sweep.sweep(grid, **kw)] == ["ran"]
    assert [r["status"] for r in sweep.sweep(grid, **kw)] == ["skipped"]
    assert [r["status"] for r in sweep.sweep(grid, force=True, **kw)] == ["ran"]
    monkeypatch.setattr(run, "hardware_id", lambda: "another-kind-of-machine")
    assert [r["status"] for r in sweep.sweep(grid, **kw)] == ["ran"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        ["another-kind-of-machine", provenance.hardware_id()])
