"""The `effnb` command: help, list, validation messages and exit codes, run, pages delegation.

Validation is checked both in-process (with papermill patched to fail the test
if a kernel would start) and through the installed console script.
"""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from effnb import runner as run
from effnb import threads
from effnb.runner import cli

NB_DIR = Path(__file__).parent / "data" / "notebooks"
EFFNB = Path(sys.executable).parent / "effnb"


def effnb(*args, timeout=120):
    return subprocess.run([str(EFFNB), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def no_kernel(monkeypatch):
    import papermill

    def boom(*a, **k):
        raise AssertionError("a kernel was started before validation finished")
    monkeypatch.setattr(papermill, "execute_notebook", boom)


def test_help_documents_commands_examples_and_exit_codes():
    res = effnb("--help")
    assert res.returncode == 0
    for text in ("list", "run", "sweep", "refresh", "pages", "examples:", "exit codes:",
                 "2  bad usage", "3  this machine cannot run it", "4  a notebook cell failed", "5  a sweep"):
        assert text in res.stdout, text
    sweep_help = effnb("sweep", "--help").stdout
    assert "shared" in sweep_help and "--scheduler" in sweep_help and "grid format" in sweep_help


def test_list_shows_parameters_allowed_values_and_presets(capsys):
    assert cli.main(["list", "--notebooks-dir", str(NB_DIR)]) == 0
    out = capsys.readouterr().out
    assert "99  99_tiny  A tiny chapter for the runner's tests" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:] if line.startswith("    ") and line.split()}
    assert lines["threads"].split()[:4] == ["threads", "int", "1", f"1..{threads.available_cores()}"]
    assert "threads it pretends to use" in lines["threads"]
    assert "one of cpu, cuda" in lines["device"] and "one of a, b, c" in lines["label"]
    assert "presets: smoke (the notebook's defaults); full (scale=2.0, sizes=[1,2,3])" in out


def test_list_without_chapters(tmp_path, capsys):
    assert cli.main(["list", "--notebooks-dir", str(tmp_path)]) == 0
    assert "no chapters" in capsys.readouterr().out


@pytest.mark.parametrize("args, code, message", [
    (["-p", "thread=1"], 2, "unknown parameter 'thread' for chapter 99_tiny: did you mean threads?"),
    (["-p", "threads=0"], 2, f"threads=0 is not allowed: use 1..{threads.available_cores()}"),
    (["-p", "scale=abc"], 2, "scale='abc' is not a float"),
    (["-p", "label=d"], 2, "use one of a, b, c"),
    (["--preset", "huge"], 2, "unknown preset 'huge' for chapter 99_tiny; presets: smoke, full"),
    (["-p", "device=gpu"], 2, "use one of cpu, cuda"),
])
def test_validation_errors_in_process(no_kernel, capsys, args, code, message):
    assert cli.main(["run", "99", "--notebooks-dir", str(NB_DIR), *args]) == code
    err = capsys.readouterr().err
    assert message in err and err.startswith("effnb run: error:")


def test_unknown_chapter_and_bad_usage_in_process(no_kernel, capsys):
    assert cli.main(["run", "42", "--notebooks-dir", str(NB_DIR)]) == 2
    assert "no chapter '42'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["run"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2


def test_cuda_without_gpu_exits_3(no_kernel, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["run", "99", "--notebooks-dir", str(NB_DIR), "-p", "device=cuda"]) == 3
    assert "torch sees no CUDA GPU" in capsys.readouterr().err


def test_validation_through_the_console_script(tmp_path):
    res = effnb("run", "99", "--notebooks-dir", NB_DIR, "--runs-dir", tmp_path, "-p", "threads=0")
    assert res.returncode == 2 and "threads=0 is not allowed: use 1.." in res.stderr
    res = effnb("run", "99", "--notebooks-dir", NB_DIR, "--runs-dir", tmp_path, "-p", "sclae=2")
    assert res.returncode == 2 and "did you mean scale" in res.stderr
    res = effnb("run", "99", "--notebooks-dir", NB_DIR, "--runs-dir", tmp_path, "--preset", "ful")
    assert res.returncode == 2 and "did you mean full?" in res.stderr
    assert not any(tmp_path.iterdir())  # nothing was run or written


@pytest.mark.slow
def test_run_through_the_console_script(tmp_path):
    res = effnb("run", "99", "--notebooks-dir", NB_DIR, "--runs-dir", tmp_path, "--no-progress",
                "-p", "sizes=[5,5]")
    assert res.returncode == 0, res.stderr
    (side,) = tmp_path.glob("*/99_tiny__smoke__sizes=-5,5-.json")
    data = json.loads(side.read_text())
    assert data["results"]["total"] == 10.0 and data["run"]["status"] == "ok"
    assert side.with_suffix(".ipynb").exists()
    assert f"ok: 99_tiny (smoke)" in res.stdout and str(side.with_suffix(".ipynb")) in res.stdout


@pytest.mark.slow
def test_failing_cell_exits_4_and_names_cell_and_partial_notebook(tmp_path):
    res = effnb("run", "99", "--notebooks-dir", NB_DIR, "--runs-dir", tmp_path, "--no-progress",
                "-p", "fail_in=compute")
    assert res.returncode == 4, res.stderr
    (partial,) = tmp_path.glob("*/99_tiny__smoke__fail_in=compute.failed.ipynb")
    assert "cell 2 (`import json`) failed: ValueError: tiny chapter asked to fail" in res.stderr
    assert f"partial notebook: {partial}" in res.stderr


def test_pages_is_delegated_with_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("effnb.runner.pages")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "effnb.runner.pages", fake)
    import effnb.runner
    monkeypatch.setattr(effnb.runner, "pages", fake, raising=False)
    assert cli.main(["pages", "--runs-dir", "x", "--help"]) == 0
    assert seen == [["--runs-dir", "x", "--help"]]


def test_refresh_and_sweep_validate_before_running(no_kernel, capsys, tmp_path):
    assert cli.main(["refresh", "77", "--notebooks-dir", str(NB_DIR)]) == 2
    grid = tmp_path / "grid.yaml"
    grid.write_text("runs:\n  - chapter: '99'\n    parameters: {threads: [1, 0]}\n")
    assert cli.main(["sweep", str(grid), "--notebooks-dir", str(NB_DIR), "--runs-dir", str(tmp_path)]) == 2
    assert "threads=0 is not allowed" in capsys.readouterr().err
    assert cli.main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_exit_codes_match_the_error_classes():
    assert (run.UsageError.exit_code, run.EnvironmentUnsupported.exit_code, run.CellFailed.exit_code) == \
        (cli.EXIT_USAGE, cli.EXIT_ENV, cli.EXIT_CELL) == (2, 3, 4)
