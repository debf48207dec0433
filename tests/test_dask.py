"""Sweeps on Dask: a real `dask scheduler` + two `dask worker` processes on 127.0.0.1, and a LocalCluster.

The workers run the jobs and write the outputs themselves (same filesystem);
the cluster is always torn down, whatever the test does.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from effnb.runner import cli, sweep

pytest.importorskip("distributed")

NB_DIR = Path(__file__).parent / "data" / "notebooks"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs):
    """SIGTERM each process group this fixture started, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


@pytest.fixture
def cluster(tmp_path):
    """Address of a scheduler with two single-thread workers, all on the loopback interface."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = []

    def start(name, *args):
        log = open(logs / f"{name}.log", "w")
        procs.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard",
              "--idle-timeout", "600")
        for i in range(2):
            start(f"worker{i}", "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                  "--name", f"w{i}", "--death-timeout", "60")
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    except Exception:
        for f in sorted(logs.iterdir()):
            print(f"--- {f.name}\n{f.read_text()[-3000:]}")
        raise
    finally:
        stop(procs)


def test_sweep_on_a_dask_cluster(cluster, tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("runs:\n"
                    "  - chapter: '99'\n    parameters: {label: [a, b], sleep_s: 1.0}\n"
                    "  - chapter: '99'\n    parameters: {fail_in: compute}\n")
    runs = tmp_path / "runs"
    results = sweep.sweep(grid, scheduler=cluster, notebooks_dir=NB_DIR, runs_dir=runs, progress=False)
    assert [r["status"] for r in results] == ["ran", "ran", "failed"]  # one fails; the others still ran
    out = capsys.readouterr().out
    assert "3 jobs: 2 ran, 0 skipped, 1 failed" in out and f"on Dask ({cluster})" in out
    workers = {r["worker"] for r in results}
    assert f"{socket.gethostname()}:{os.getpid()}" not in workers  # the workers did the work
    assert len(workers) == 2
    (hw,) = runs.iterdir()
    ok = [json.loads((hw / f"99_tiny__smoke__{x}sleep_s=1.0.json").read_text()) for x in ("", "label=b__")]
    assert [s["status"] for s in ok] == ["ok", "ok"] and [s["parameters"]["label"] for s in ok] == ["a", "b"]
    assert (hw / "99_tiny__smoke__fail_in=compute.failed.ipynb").exists()
    assert not list(hw.glob("*tmp"))

    args = ["sweep", str(grid), "--scheduler", cluster, "--notebooks-dir", str(NB_DIR), "--runs-dir", str(runs),
            "--no-progress"]
    assert cli.main(args) == 5
    assert "3 jobs: 0 ran, 2 skipped, 1 failed" in capsys.readouterr().out


def test_sweep_on_a_local_cluster(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("runs:\n  - chapter: '99'\n    parameters: {label: [a, c]}\n")
    results = sweep.sweep(grid, scheduler="local", notebooks_dir=NB_DIR, runs_dir=tmp_path / "runs",
                          progress=False)
    assert [r["status"] for r in results] == ["ran", "ran"]
    assert all(Path(r["output"]).exists() for r in results)
    assert not {r["worker"] for r in results} & {f"{socket.gethostname()}:{os.getpid()}"}


def test_unknown_scheduler_is_a_usage_error(tmp_path, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("runs:\n  - chapter: '99'\n")
    assert cli.main(["sweep", str(grid), "--scheduler", "127.0.0.1:8786", "--notebooks-dir", str(NB_DIR)]) == 2
    assert "use local or tcp://host:port" in capsys.readouterr().err
