"""effnb.run: chapter discovery, strict validation, papermill runs, failures, refresh.

Uses the fixture chapter tests/data/notebooks/99_tiny.ipynb (runs in about a
second), never the book's own chapters.
"""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from effnb import runner as run
from effnb import threads

NB_DIR = Path(__file__).parent / "data" / "notebooks"
HW = "test-machine"


@pytest.fixture
def tiny():
    return run.find_chapter("99", NB_DIR)


@pytest.fixture
def no_kernel(monkeypatch):
    """Fail the test if anything tries to execute a notebook."""
    import papermill

    def boom(*a, **k):
        raise AssertionError("a kernel was started before validation finished")
    monkeypatch.setattr(papermill, "execute_notebook", boom)


# ----------------------------------------------------------- discovery
def test_discover_reads_parameters_cell_and_yaml(tiny):
    assert [c.stem for c in run.discover(NB_DIR)] == ["99_tiny"]
    assert tiny.id == "99" and tiny.title.startswith("A tiny chapter")
    p = tiny.params
    assert list(p) == ["threads", "device", "scale", "label", "sizes", "sleep_s", "fail_in", "verbose"]
    assert (p["threads"].type, p["threads"].default, p["threads"].min, p["threads"].max) == \
        ("int", 1, 1, threads.available_cores())
    assert p["threads"].help == "threads it pretends to use"          # from the YAML
    assert p["scale"].help == "multiplies the total"                  # from the trailing comment
    assert (p["sizes"].type, p["sizes"].default) == ("list", [1, 2])
    assert p["verbose"].type == "bool" and p["device"].choices == ["cpu", "cuda"]
    assert tiny.presets == {"smoke": {}, "full": {"scale": 2.0, "sizes": [1, 2, 3]}}
    assert p["label"].allowed() == "one of a, b, c"
    assert p["threads"].allowed() == f"1..{threads.available_cores()}"


@pytest.mark.parametrize("name", ["99", "099", "99_tiny", str(NB_DIR / "99_tiny.ipynb")])
def test_find_chapter_by_id_stem_or_path(name):
    assert run.find_chapter(name, NB_DIR).stem == "99_tiny"


def test_unknown_chapter_lists_chapters():
    with pytest.raises(run.UsageError, match=r"no chapter '98'.*99_tiny"):
        run.find_chapter("98", NB_DIR)


def test_yaml_constraining_a_missing_parameter_is_an_error(tmp_path):
    shutil.copy(NB_DIR / "99_tiny.ipynb", tmp_path / "99_tiny.ipynb")
    (tmp_path / "99_tiny.yaml").write_text("chapter: '99'\nparameters:\n  treads: {min: 1}\n")
    with pytest.raises(run.UsageError, match="treads"):
        run.find_chapter("99", tmp_path)


# ---------------------------------------------------------- validation
@pytest.mark.parametrize("pair, value", [
    ("threads=2", 2), ("scale=0.5", 0.5), ("scale=3", 3.0), ("verbose=true", True), ("verbose=0", False),
    ("sizes=[4, 5]", [4, 5]), ("label=b", "b"), ("fail_in=", ""),
])
def test_parse_assignments_by_declared_type(tiny, pair, value):
    (got,) = run.parse_assignments(tiny, [pair]).values()
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("pairs, message", [
    (["thread=1"], r"unknown parameter 'thread'.*did you mean threads\?.*valid parameters: threads, device"),
    (["threads=two"], r"threads='two' is not an int.*1\.\.\d"),
    (["threads=0"], r"threads=0 is not allowed: use 1\.\.\d .*usable cores"),
    (["threads=999"], r"threads=999 is not allowed"),
    (["scale=11"], r"scale=11.0 is not allowed: use 0\.\.10"),
    (["label=z"], r"label=z is not allowed: use one of a, b, c"),
    (["verbose=maybe"], r"not a bool"),
    (["sizes=[1"], r"not a list"),
    (["sizes=3"], r"sizes=3 is not a list"),
    (["threads"], r"write -p name=value"),
])
def test_bad_overrides_are_rejected_with_the_allowed_values(tiny, no_kernel, pairs, message):
    with pytest.raises(run.UsageError, match=message):
        overrides = run.parse_assignments(tiny, pairs)
        run.run_chapter(tiny, "smoke", overrides, runs_dir="/nonexistent")


def test_unknown_preset_lists_presets(tiny, no_kernel):
    with pytest.raises(run.UsageError, match=r"unknown preset 'fast'.*presets: smoke, full"):
        run.run_chapter(tiny, "fast")


def test_typed_overrides_are_checked_too(tiny, no_kernel):
    with pytest.raises(run.UsageError, match="threads=1.5 is not an int"):
        run.run_chapter(tiny, overrides={"threads": 1.5})
    with pytest.raises(run.UsageError, match="not an int"):
        run.resolve(tiny, overrides={"threads": True})


def test_cuda_without_gpu_is_an_environment_error(tiny, no_kernel):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(run.EnvironmentUnsupported, match="device=cpu") as info:
        run.run_chapter(tiny, overrides={"device": "cuda"})
    assert info.value.exit_code == 3


def test_resolve_merges_defaults_preset_overrides(tiny):
    assert run.resolve(tiny)["scale"] == 1.0
    full = run.resolve(tiny, "full", {"label": "c"})
    assert (full["scale"], full["sizes"], full["label"], full["threads"]) == (2.0, [1, 2, 3], "c", 1)


def test_run_name_names_only_overrides_beyond_the_preset(tiny):
    assert run.run_name(tiny, "full") == "99_tiny__full"
    assert run.run_name(tiny, "full", {"scale": 2.0}) == "99_tiny__full"          # the preset's own value
    assert run.run_name(tiny, "smoke", {"scale": 2, "label": "b"}) == "99_tiny__smoke__label=b__scale=2.0"
    assert run.run_name(tiny, "smoke", {"sizes": [3, 4]}) == "99_tiny__smoke__sizes=-3,4-"


def test_inputs_hash_tracks_notebook_parameters_and_machine(tmp_path):
    shutil.copy(NB_DIR / "99_tiny.ipynb", tmp_path)
    shutil.copy(NB_DIR / "99_tiny.yaml", tmp_path)
    h = run.inputs_hash("99", "smoke", {}, tmp_path, hardware=HW)
    assert h == run.inputs_hash("99", "smoke", {"scale": 1.0}, tmp_path, hardware=HW)  # same resolved values
    assert h != run.inputs_hash("99", "smoke", {"scale": 2.0}, tmp_path, hardware=HW)
    assert h != run.inputs_hash("99", "smoke", {}, tmp_path, hardware="another-machine")
    (tmp_path / "99_tiny.yaml").write_text((tmp_path / "99_tiny.yaml").read_text() + "\n# edited\n")
    assert h != run.inputs_hash("99", "smoke", {}, tmp_path, hardware=HW)


def test_is_current_ignores_tmp_leftovers_and_cut_files(tmp_path):
    paths = run.RunPaths(tmp_path, "99_tiny__smoke")
    paths.tmp_notebook.write_text("{}")
    (tmp_path / "99_tiny__smoke.json.tmp").write_text('{"run": {"status": "ok", "inputs_hash": "h"}}')
    assert not run.is_current(paths, "h")
    paths.sidecar.write_text('{"run": {"status": "ok", "inputs_h')  # cut off: unreadable
    assert not run.is_current(paths, "h")


# ----------------------------------------------------------------- runs
@pytest.mark.slow
def test_run_writes_notebook_and_sidecar(tmp_path, monkeypatch):
    monkeypatch.delenv(run.SIDECAR_ENV, raising=False)
    side = run.run_chapter("99", "full", {"label": "b"}, runs_dir=tmp_path, notebooks_dir=NB_DIR,
                           progress=False, hardware=HW)
    out = tmp_path / HW
    assert sorted(p.name for p in out.iterdir()) == ["99_tiny__full__label=b.ipynb", "99_tiny__full__label=b.json"]
    on_disk = json.loads((out / "99_tiny__full__label=b.json").read_text())
    assert on_disk == json.loads(json.dumps(side))
    assert side["status"] == "ok" and side["results"]["total"] == 12.0     # written by the kernel
    r = side["run"]
    assert (r["preset"], r["overrides"], r["status"], r["failed_cell"]) == ("full", {"label": "b"}, "ok", None)
    assert r["parameters"]["sizes"] == [1, 2, 3] and r["hardware_id"] == HW
    assert r["inputs_hash"] == run.inputs_hash("99", "full", {"label": "b"}, NB_DIR, hardware=HW)
    assert r["output"].endswith("99_tiny__full__label=b.ipynb") and r["elapsed_s"] > 0
    nb = nbformat.read(out / "99_tiny__full__label=b.ipynb", as_version=4)
    assert nb.metadata["effnb"] == on_disk
    assert nb.metadata["papermill"]["output_path"].endswith(".ipynb")
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert run.SIDECAR_ENV not in __import__("os").environ


@pytest.mark.slow
def test_failing_cell_keeps_partial_notebook_and_failed_sidecar(tmp_path):
    out = tmp_path / HW
    out.mkdir()
    stale = out / "99_tiny__smoke__fail_in=compute.ipynb"
    stale.write_text("{}")  # an older successful run of the same name
    with pytest.raises(run.CellFailed) as info:
        run.run_chapter("99", overrides={"fail_in": "compute"}, runs_dir=tmp_path, notebooks_dir=NB_DIR,
                        progress=False, hardware=HW)
    err = info.value
    assert err.exit_code == 4
    msg = str(err)
    assert "cell 2 (`import json`)" in msg and "ValueError: tiny chapter asked to fail" in msg
    assert err.partial == out / "99_tiny__smoke__fail_in=compute.failed.ipynb" and str(err.partial) in msg
    assert not stale.exists()
    side = json.loads((out / "99_tiny__smoke__fail_in=compute.json").read_text())
    assert side["status"] == "failed" and side["run"]["status"] == "failed"
    assert side["run"]["failed_cell"] == {"index": 2, "execution_count": 3, "first_line": "import json"}
    assert side["run"]["error"] == "ValueError: tiny chapter asked to fail"
    nb = nbformat.read(err.partial, as_version=4)
    assert nb.metadata["effnb"]["status"] == "failed"
    assert any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
    assert not list(out.glob("*tmp"))


@pytest.mark.slow
def test_refresh_executes_in_place_without_papermill_traces(tmp_path):
    shutil.copy(NB_DIR / "99_tiny.ipynb", tmp_path)
    shutil.copy(NB_DIR / "99_tiny.yaml", tmp_path)
    path = tmp_path / "99_tiny.ipynb"
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.metadata["papermill"] = {"parameters": {}}
    nbformat.write(nb, path)
    assert run.refresh("99", tmp_path) == path
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2, 3]
    assert code[1].outputs[0]["text"] == "total = 3.0\n"
    assert "papermill" not in nb.metadata and nb.metadata.kernelspec.name == "python3"
    assert not any("execution" in c.metadata for c in code)
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*tmp"))


@pytest.mark.slow
def test_refresh_failure_leaves_the_notebook_unchanged(tmp_path):
    shutil.copy(NB_DIR / "99_tiny.ipynb", tmp_path)
    path = tmp_path / "99_tiny.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[2].source = "raise RuntimeError('broken')"
    nbformat.write(nb, path)
    before = path.read_bytes()
    with pytest.raises(run.CellFailed, match=r"cell 2 \(`raise RuntimeError\('broken'\)`\).*RuntimeError"):
        run.refresh("99", tmp_path)
    assert path.read_bytes() == before


def test_a_default_this_machine_cannot_take_is_caught_unless_overridden(tiny, monkeypatch, no_kernel):
    monkeypatch.setitem(tiny.params, "threads", run.Param("threads", "int", 4, min=1, max=2))
    with pytest.raises(run.UsageError, match=r"threads=4 \(the default in 99_tiny.ipynb\) is not allowed"):
        run.resolve(tiny)
    assert run.resolve(tiny, overrides={"threads": 2})["threads"] == 2


def test_parameters_cell_parser_is_robust_to_equals_in_comments():
    params = run.parse_parameters('a: int = 128  # MiB (>= 4x the cache)\nb = [1,\n  2]  # h = w\n'
                                  'c: "float" = 2  # scale\nd: list[int] = []\n')
    assert [(p.name, p.type, p.default, p.help) for p in params.values()] == [
        ("a", "int", 128, "MiB (>= 4x the cache)"), ("b", "list", [1, 2], "h = w"),
        ("c", "float", 2, "scale"), ("d", "list", [], "")]
    with pytest.raises(run.UsageError, match="not a literal"):
        run.parse_parameters("n: int = os.cpu_count()")
    with pytest.raises(run.UsageError, match="line 1: write only"):
        run.parse_parameters("import os")


@pytest.mark.slow
def test_sidecar_written_by_effnb_chapter_reaches_the_run(tmp_path):
    """A chapter that uses effnb.chapter: its provenance, results and claims land in the sidecar."""
    side = run.run_chapter("98", overrides={"n": 4}, runs_dir=tmp_path,
                           notebooks_dir=NB_DIR.parent / "chapter_api", progress=False, hardware=HW)
    assert side["chapter"] == "98" and side["status"] == "ok"
    assert side["results"] == {"n_squared": 16}
    assert side["parameters"]["n"] == 4 and side["parameters"]["threads"] == 1
    assert side["claims"][0]["key"] == "fixture"
    assert side["provenance"]["fingerprint"]["hardware_id"]
    assert side["run"]["overrides"] == {"n": 4}
    assert not list((tmp_path / HW).glob("*tmp"))


def test_inputs_hash_follows_only_what_a_chapter_declares(monkeypatch, tmp_path):
    """Editing the sparse kernel reruns chapter 04 only; a common header reruns every C++ chapter."""
    import shutil
    from effnb import ext
    from effnb import runner as run_mod
    kernels = tmp_path / "kernels"
    shutil.copytree(ext.KERNEL_DIR, kernels)
    monkeypatch.setattr(ext, "KERNEL_DIR", kernels)
    chapters = [c.id for c in run_mod.discover()]

    def digests():
        return {c: run_mod.input_digests(c, hardware=HW) for c in chapters}

    before = digests()
    (kernels / "sparse" / "sparse.cpp").write_text("// edited\n")
    after = digests()
    changed = {c: run_mod.changed_inputs(before[c], after[c]) for c in chapters}
    assert changed["04"] == ["backends", "kernels sparse"]  # its sources, and so the build that would run
    assert all(changed[c] == [] for c in chapters if c != "04")
    (kernels / "common" / "effnb.h").write_text("// edited\n")
    again = digests()
    uses_cpp = {c for c in chapters if run_mod.find_chapter(c).kernels}
    assert {c for c in chapters if run_mod.changed_inputs(after[c], again[c])} == uses_cpp
    assert uses_cpp >= {"01", "02", "04"}


def test_a_chapter_declaring_a_missing_package_is_told(tmp_path):
    import shutil
    from effnb import runner as run_mod
    nbdir = tmp_path / "nb"
    shutil.copytree(Path(__file__).parent / "data" / "notebooks", nbdir)
    spec = nbdir / "99_tiny.yaml"
    spec.write_text(spec.read_text() + "packages: [no_such_package]\n")
    with pytest.raises(run_mod.UsageError, match="no_such_package"):
        run_mod.inputs_hash("99", notebooks_dir=nbdir)


def test_inputs_hash_ignores_outputs(tmp_path):
    import shutil
    from effnb import runner as run_mod
    src = Path(__file__).parent / "data" / "notebooks"
    nbdir = tmp_path / "nb"
    shutil.copytree(src, nbdir)
    before = run_mod.inputs_hash("99", notebooks_dir=nbdir)
    nb = nbformat.read(nbdir / "99_tiny.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [nbformat.v4.new_output("stream", text="changed\n")]
            cell.execution_count = 42
    nbformat.write(nb, nbdir / "99_tiny.ipynb")
    assert run_mod.inputs_hash("99", notebooks_dir=nbdir) == before
    nb.cells[-1].source += "\n# an edit"
    nbformat.write(nb, nbdir / "99_tiny.ipynb")
    assert run_mod.inputs_hash("99", notebooks_dir=nbdir) != before
