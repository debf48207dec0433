"""effnb.ext: one library per kernel family, built once, loud when a family breaks.

The session fixture builds every family (a no-op after `make ext`); the lock and
fallback tests use a temporary cache and monkeypatching. Two slow tests compile
tiny families of their own: a broken one next to a good one, and the stream
family at the AVX2 level on an AVX-512 machine.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from effnb import ext


FAMILY = "stream"


@pytest.fixture(scope="session")
def built():
    if ext.compiler() is None:
        pytest.skip("no C++ compiler here: the chapters run their fallbacks")
    return ext.build()   # a BuildError here fails the suite, naming the family


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache and a not-yet-loaded state (the real state is restored afterwards)."""
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path))
    monkeypatch.setattr(ext, "_state", {})
    monkeypatch.setattr(ext, "_loaded", {})
    monkeypatch.setattr(ext, "_compile", _no_compile)
    return tmp_path


def _key():
    if ext.compiler() is None:
        pytest.skip("no C++ compiler here")
    return ext.key(FAMILY)


def _no_compile(*args, **kwargs):
    raise AssertionError("this test must not compile")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(path, pid, when=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "time": when or time.time()}))


# ---------------------------------------------------------------- the real build

def test_every_family_builds_and_names_its_path(built):
    import torch
    from effnb import probes
    assert set(built) == set(ext.families()) and {"stream", "quant", "sparse"} <= set(built)
    for family, out in built.items():
        st = ext.status(family)
        assert st["backend"].startswith("cpp-") and st["key"] in out.name, st
        assert st["isa_path"] and st["build_s"] > 0
        marker = json.loads((out / ext.MARKER).read_text())
        assert marker["family"] == family and "common/effnb.h" in marker["inputs"]
    assert probes.cpp_ops().stream_read(torch.ones(5)) == 5.0


def test_second_build_is_a_no_op(built):
    marker = built[FAMILY] / ext.MARKER
    before = marker.stat().st_mtime_ns
    assert ext.build([FAMILY]) == {FAMILY: built[FAMILY]}
    assert marker.stat().st_mtime_ns == before


def test_cli_build_and_status(built):
    res = subprocess.run([sys.executable, "-m", "effnb.ext", "build"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert all(f in res.stdout for f in ext.families()) and "cpp-" in res.stdout
    res = subprocess.run([sys.executable, "-m", "effnb.ext", "status"], capture_output=True, text=True, timeout=300)
    st = json.loads(res.stdout)
    assert set(st) == set(ext.families()) and all(v["backend"].startswith("cpp-") for v in st.values())


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        ext.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "build" in out and "status" in out and "EFFNB_CACHE" in out


def test_ops_follow_set_threads(built):
    """The libraries link the system libgomp, not torch's copy: effnb.threads.set_threads must reach both."""
    from effnb import threads
    import torch
    from effnb import probes
    probes.cpp_ops()  # declares the stream schemas this test calls
    before = threads.current_threads()["torch"]
    try:
        for f in ext.families():
            ext.omp_threads(f)  # loaded and initialised at the current count
        for n in [1, threads.available_cores(), 1]:
            threads.set_threads(n)
            assert {ext.omp_threads(f) for f in ext.families()} == {n}
            # and the ops really run that many: the FMA probe wants 16 floats per OpenMP thread
            torch.ops.effnb.stream_peak_fma(torch.empty(16 * n), 10)
    finally:
        threads.set_threads(before)


@pytest.mark.slow
def test_avx2_level_builds_apart_on_an_avx512_cpu(built):
    """EFFNB_ISA=avx2 is its own cached build whose library says it runs the AVX2 path."""
    if ext.cpu_level() != "avx512":
        pytest.skip(f"this CPU's level is {ext.cpu_level()}: the default build already is the AVX2 path")
    env = {**os.environ, "EFFNB_ISA": "avx2"}
    code = ("from effnb import ext, probes; import torch; ops = probes.cpp_ops(); "
            "print(ext.backend('stream'), ops.stream_read(torch.ones(7)))")
    res = subprocess.run([sys.executable, "-m", "effnb.ext", "build", FAMILY], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["cpp-avx2", "7.0"], out.stdout + out.stderr


def test_isa_above_the_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(ext, "cpu_level", lambda: "avx2")
    monkeypatch.setenv("EFFNB_ISA", "avx512")
    with pytest.raises(ext.BuildError, match="only runs up to avx2"):
        ext.isa()
    monkeypatch.setenv("EFFNB_ISA", "sse9")
    with pytest.raises(ext.BuildError, match="not one of"):
        ext.isa()


# ---------------------------------------------------------------- one library per family

def _family_tree(root, broken: bool = False):
    """kernels/ with a common header and two one-op families, ``good`` and ``bad``."""
    (root / "common").mkdir(parents=True)
    common = (ext.KERNEL_DIR / "common" / "effnb.h").read_text()
    (root / "common" / "effnb.h").write_text(common)
    for name in ("good", "bad"):
        (root / name).mkdir()
        body = "#include \"effnb.h\"\nEFFNB_ISA_PATH(\"tiny\")\n"
        if name == "bad" and broken:
            body += "int oops( { return 1; }\n"
        (root / name / f"{name}.cpp").write_text(body)
    return root


def test_key_covers_the_family_and_the_common_headers_only(monkeypatch, tmp_path):
    if ext.compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setattr(ext, "KERNEL_DIR", _family_tree(tmp_path / "kernels"))
    assert ext.families() == ["bad", "good"]
    good, bad = ext.key("good"), ext.key("bad")
    (tmp_path / "kernels" / "bad" / "bad.cpp").write_text("// changed\n")
    assert ext.key("good") == good and ext.key("bad") != bad
    (tmp_path / "kernels" / "good" / "helper.h").write_text("// a family header\n")
    assert ext.key("good") != good
    good = ext.key("good")
    (tmp_path / "kernels" / "common" / "effnb.h").write_text("// a shared header changed\n")
    assert ext.key("good") != good


def test_key_follows_cpu_features_isa_and_flags(monkeypatch, built):
    k = ext.key(FAMILY)
    monkeypatch.setattr(ext.provenance, "isa_features", lambda: ["avx512f", "sse4_2"])
    assert ext.key(FAMILY) != k
    monkeypatch.undo()
    monkeypatch.setattr(ext, "flags", lambda: {"cflags": ["-O0"], "ldflags": []})
    assert ext.key(FAMILY) != k
    monkeypatch.undo()
    other = next(level for level in ext.LEVELS if level != ext.isa())
    monkeypatch.setattr(ext, "isa", lambda: other)
    assert ext.key(FAMILY) != k


@pytest.mark.slow
def test_a_broken_family_fails_loudly_and_the_others_still_load(monkeypatch, tmp_path):
    if ext.compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setattr(ext, "KERNEL_DIR", _family_tree(tmp_path / "kernels", broken=True))
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ext, "_state", {})
    monkeypatch.setattr(ext, "_loaded", {})
    with pytest.raises(ext.BuildError) as exc:
        ext.build()
    msg = str(exc.value)
    assert "kernel family 'bad' did not build" in msg and "bad/bad.cpp" in msg and "good" not in msg
    assert "error" in msg  # the compiler's own words
    assert ext.status("good")["backend"] == "cpp-tiny"
    assert ext.status("bad")["backend"] == ext.FALLBACK
    assert ext.main(["build"]) == 1  # make ext, make test and make book stop here


def test_unknown_family_lists_the_families():
    with pytest.raises(ext.BuildError, match="families: "):
        ext.build(["no-such-family"])

# ---------------------------------------------------------------- the lock

def test_stale_lock_dead_pid_is_reported(fresh):
    lock = ext.build_dir(FAMILY, _key()) / ext.LOCK
    pid = _dead_pid()
    _write_lock(lock, pid)
    with pytest.raises(ext.StaleLockError) as exc:
        ext.build_family(FAMILY, timeout=5)
    msg = str(exc.value)
    assert f"stale build lock at {lock}" in msg and f"pid {pid}" in msg and "remove it" in msg
    assert lock.exists()  # reported, not silently removed


def test_old_lock_is_stale_even_if_pid_lives(fresh):
    lock = ext.build_dir(FAMILY, _key()) / ext.LOCK
    _write_lock(lock, os.getpid(), when=time.time() - ext.LOCK_STALE_S - 60)
    with pytest.raises(ext.StaleLockError, match="stale build lock"):
        ext.build_family(FAMILY, timeout=5)


def test_live_lock_waits_then_uses_the_other_build(fresh, monkeypatch, capsys):
    out = ext.build_dir(FAMILY, _key())
    _write_lock(out / ext.LOCK, os.getpid())

    def finish():  # the "other process" completes its build
        time.sleep(1.5)
        (out / "lib.so").write_text("")
        (out / ext.MARKER).write_text(json.dumps({"library": "lib.so", "build_s": 1.0}))
        (out / ext.LOCK).unlink()

    threading.Thread(target=finish).start()
    assert ext.build_family(FAMILY, timeout=30) == out
    assert "waiting" in capsys.readouterr().out


def test_live_lock_times_out_with_a_message(fresh):
    lock = ext.build_dir(FAMILY, _key()) / ext.LOCK
    _write_lock(lock, os.getpid())
    with pytest.raises(ext.BuildError, match="gave up after"):
        ext.build_family(FAMILY, timeout=1)


def test_lock_is_released_after_a_build(fresh, monkeypatch):
    out = ext.build_dir(FAMILY, _key())
    seen = {}

    def fake_compile(family, k, where, cxx, verbose):
        seen["locked"] = (where / ext.LOCK).exists()
        (where / "x.so").write_text("")
        (where / ext.MARKER).write_text(json.dumps({"library": "x.so", "build_s": 1.0}))
        return where / "x.so"

    monkeypatch.setattr(ext, "_compile", fake_compile)
    assert ext.build_family(FAMILY) == out
    assert seen["locked"] and not (out / ext.LOCK).exists()
    assert ext._finished(out)["build_s"] == 1.0


def test_marker_without_its_library_is_not_a_build(fresh):
    out = ext.build_dir(FAMILY, _key())
    out.mkdir(parents=True)
    (out / ext.MARKER).write_text(json.dumps({"library": "gone.so", "build_s": 1.0}))
    assert ext._finished(out) is None
    assert ext.load(FAMILY) is False and "not built" in ext.status(FAMILY)["reason"]


def test_torchs_own_stale_lock_is_cleared(fresh, monkeypatch):
    """A build killed mid-way leaves torch's `lock` file, on which torch would wait forever."""
    out = ext.build_dir(FAMILY, _key())
    out.mkdir(parents=True)
    (out / "lock").write_text("")

    ran = []

    def fake_compile(family, k, where, cxx, verbose):
        assert not (where / "lock").exists()
        (where / "x.so").write_text("")
        (where / ext.MARKER).write_text(json.dumps({"library": "x.so", "build_s": 1.0}))
        ran.append(family)

    monkeypatch.setattr(ext, "_compile", fake_compile)
    ext.build_family(FAMILY)
    assert ran == [FAMILY]


def test_rebuild_with_old_ops_loaded_says_restart(fresh, monkeypatch):
    _key()
    monkeypatch.setattr(ext, "_loaded", {FAMILY: {"key": "older", "backend": "cpp-x", "path": None,
                                                  "build_s": 1.0, "isa_path": "x"}})
    with pytest.raises(ext.BuildError, match="restart"):
        ext.build_family(FAMILY)


def test_failed_compile_releases_the_lock(fresh, monkeypatch):
    _key()
    def broken(family, k, where, cxx, verbose):
        raise ext.BuildError("compiling failed: error: expected ';'")

    monkeypatch.setattr(ext, "_compile", broken)
    with pytest.raises(ext.BuildError, match="expected"):
        ext.build_family(FAMILY)
    assert not (ext.build_dir(FAMILY, _key()) / ext.LOCK).exists()


# ---------------------------------------------------------------- fallbacks

def test_not_built_means_fallback(fresh):
    _key()
    assert ext.load(FAMILY) is False
    st = ext.status(FAMILY)
    assert st["backend"] == ext.FALLBACK and "python -m effnb.ext build" in st["reason"]


@pytest.mark.parametrize("how", ["CXX", "PATH"])
def test_no_compiler_means_fallback(fresh, monkeypatch, capsys, how):
    if how == "CXX":
        monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    else:
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setenv("PATH", str(fresh))
    assert ext.compiler() is None
    assert ext.load(FAMILY) is False
    st = ext.status(FAMILY)
    assert st["backend"] == ext.FALLBACK and "compiler" in st["reason"]
    with pytest.raises(ext.BuildError, match="no C\\+\\+ compiler"):
        ext.build([FAMILY])
    assert ext.main(["build"]) == 0  # no compiler: make test goes on, the chapters use fallbacks
    assert "no C++ compiler" in capsys.readouterr().err


def test_broken_compiler_means_fallback(fresh, monkeypatch):
    fake = fresh / "c++"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert ext.load(FAMILY) is False
    assert "failed" in ext.status(FAMILY)["reason"]


def test_a_header_borrowed_from_another_family_rebuilds_the_borrower():
    """kernels/longcontext includes the attention family's vector layer: a change there must change its key."""
    names = [p.relative_to(ext.KERNEL_DIR).as_posix() for p in ext.inputs("longcontext")]
    assert "attention/simd.h" in names and "common/effnb.h" in names
    assert ext.borrowed_headers("attention") == []
