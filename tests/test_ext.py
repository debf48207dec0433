"""effnb.ext: build once, never rebuild, report locks and missing compilers clearly.

Only the session fixture compiles (and only when `make ext` has not already);
the lock and fallback tests use a temporary cache and monkeypatching, so they
never start a second compile.
"""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from effnb import ext


@pytest.fixture(scope="session")
def built():
    try:
        return ext.build()
    except ext.BuildError as err:
        pytest.skip(f"C++ kernels unavailable here: {err}")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache and a not-yet-loaded state (the real state is restored afterwards)."""
    monkeypatch.setenv("EFFNB_CACHE", str(tmp_path))
    monkeypatch.setattr(ext, "_state", dict(ext._state, backend="fallback", reason="fresh"))
    monkeypatch.setattr(ext, "_compile", _no_compile)
    monkeypatch.setattr(ext, "_ops_present", lambda: False)  # as in a process that loaded nothing yet
    return tmp_path


def _key():
    if ext.compiler() is None:
        pytest.skip("no C++ compiler here")
    return ext.key()


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

def test_build_loads_ops(built):
    import torch
    assert ext.load()
    st = ext.status()
    assert st["backend"] == "cpp" and st["key"] == built.name
    assert st["build_s"] is not None and st["build_s"] > 0
    marker = json.loads((built / ext.MARKER).read_text())
    assert marker["key"] == built.name and marker["build_s"] == st["build_s"]
    assert torch.ops.effnb.stream_read(torch.ones(5)) == 5.0


def test_second_build_is_a_no_op(built):
    marker = built / ext.MARKER
    before = marker.stat().st_mtime_ns
    assert ext.build() == built
    assert marker.stat().st_mtime_ns == before
    assert ext.key() == built.name


def test_cli_up_to_date_and_status(built):
    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-m", "effnb.ext", "build"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "up to date" in res.stdout
    res = subprocess.run([sys.executable, "-m", "effnb.ext", "status"], capture_output=True, text=True,
                         env=env, timeout=300)
    st = json.loads(res.stdout)
    assert st["backend"] == "cpp" and st["key"] == built.name


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        ext.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "build" in out and "status" in out and "EFFNB_CACHE" in out


# ---------------------------------------------------------------- the key

def test_key_follows_cpu_features_and_flags(monkeypatch, built):
    k = ext.key()
    monkeypatch.setattr(ext.provenance, "isa_features", lambda: ["avx512f", "sse4_2"])
    assert ext.key() != k
    monkeypatch.undo()
    monkeypatch.setattr(ext, "flags", lambda: {"cflags": ["-O0"], "ldflags": []})
    assert ext.key() != k


def test_two_libraries_owning_the_namespace_is_an_error(monkeypatch, tmp_path):
    for name in ("a.cpp", "b.cpp"):
        (tmp_path / name).write_text("TORCH_LIBRARY(effnb, m) {}\n")
    monkeypatch.setattr(ext, "sources", lambda: sorted(tmp_path.glob("*.cpp")))
    with pytest.raises(ext.BuildError, match="TORCH_LIBRARY_FRAGMENT"):
        ext._check_namespace()


# ---------------------------------------------------------------- the lock

def test_stale_lock_dead_pid_is_reported(fresh):
    lock = ext.build_dir(_key()) / ext.LOCK
    pid = _dead_pid()
    _write_lock(lock, pid)
    with pytest.raises(ext.StaleLockError) as exc:
        ext.build(timeout=5)
    msg = str(exc.value)
    assert f"stale build lock at {lock}" in msg and f"pid {pid}" in msg and "remove it" in msg
    assert lock.exists()  # reported, not silently removed


def test_old_lock_is_stale_even_if_pid_lives(fresh):
    lock = ext.build_dir(_key()) / ext.LOCK
    _write_lock(lock, os.getpid(), when=time.time() - ext.LOCK_STALE_S - 60)
    with pytest.raises(ext.StaleLockError, match="stale build lock"):
        ext.build(timeout=5)


def test_live_lock_waits_then_uses_the_other_build(fresh, monkeypatch, capsys):
    out = ext.build_dir(_key())
    _write_lock(out / ext.LOCK, os.getpid())
    monkeypatch.setattr(ext, "load", lambda: False)

    def finish():  # the "other process" completes its build
        time.sleep(1.5)
        (out / "lib.so").write_text("")
        (out / ext.MARKER).write_text(json.dumps({"library": "lib.so", "build_s": 1.0}))
        (out / ext.LOCK).unlink()

    threading.Thread(target=finish).start()
    assert ext.build(timeout=30) == out
    assert "waiting" in capsys.readouterr().out


def test_live_lock_times_out_with_a_message(fresh):
    lock = ext.build_dir(_key()) / ext.LOCK
    _write_lock(lock, os.getpid())
    with pytest.raises(ext.BuildError, match="gave up after"):
        ext.build(timeout=1)


def test_lock_is_released_after_a_build(fresh, monkeypatch):
    out = ext.build_dir(_key())
    seen = {}

    def fake_compile(k, where, cxx, verbose):
        seen["locked"] = (where / ext.LOCK).exists()
        (where / "x.so").write_text("")
        (where / ext.MARKER).write_text(json.dumps({"library": "x.so", "build_s": 1.0}))
        return where / "x.so"

    monkeypatch.setattr(ext, "_compile", fake_compile)
    monkeypatch.setattr(ext, "load", lambda: False)
    assert ext.build() == out
    assert seen["locked"] and not (out / ext.LOCK).exists()
    assert ext._finished(out)["build_s"] == 1.0


def test_marker_without_its_library_is_not_a_build(fresh):
    out = ext.build_dir(_key())
    out.mkdir(parents=True)
    (out / ext.MARKER).write_text(json.dumps({"library": "gone.so", "build_s": 1.0}))
    assert ext._finished(out) is None
    assert ext.load() is False and "not built" in ext.status()["reason"]


def test_torchs_own_stale_lock_is_cleared(fresh, monkeypatch):
    """A build killed mid-way leaves torch's `lock` file, on which torch would wait forever."""
    out = ext.build_dir(_key())
    out.mkdir(parents=True)
    (out / "lock").write_text("")

    def fake_compile(k, where, cxx, verbose):
        assert not (where / "lock").exists()
        (where / "x.so").write_text("")
        (where / ext.MARKER).write_text(json.dumps({"library": "x.so", "build_s": 1.0}))

    monkeypatch.setattr(ext, "_compile", fake_compile)
    monkeypatch.setattr(ext, "load", lambda: False)
    ext.build()


def test_rebuild_with_old_ops_loaded_says_restart(fresh, monkeypatch):
    _key()
    monkeypatch.setattr(ext, "_ops_present", lambda: True)
    with pytest.raises(ext.BuildError, match="restart"):
        ext.build()


def test_failed_compile_releases_the_lock(fresh, monkeypatch):
    _key()
    def broken(k, where, cxx, verbose):
        raise ext.BuildError("compiling failed: error: expected ';'")

    monkeypatch.setattr(ext, "_compile", broken)
    with pytest.raises(ext.BuildError, match="expected"):
        ext.build()
    assert not (ext.build_dir(_key()) / ext.LOCK).exists()


# ---------------------------------------------------------------- fallbacks

def test_not_built_means_fallback(fresh):
    _key()
    assert ext.load() is False
    st = ext.status()
    assert st["backend"] == "fallback" and "python -m effnb.ext build" in st["reason"]


@pytest.mark.parametrize("how", ["CXX", "PATH"])
def test_no_compiler_means_fallback(fresh, monkeypatch, capsys, how):
    if how == "CXX":
        monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    else:
        monkeypatch.delenv("CXX", raising=False)
        monkeypatch.setenv("PATH", str(fresh))
    assert ext.compiler() is None
    assert ext.load() is False
    st = ext.status()
    assert st["backend"] == "fallback" and "compiler" in st["reason"]
    with pytest.raises(ext.BuildError, match="no C\\+\\+ compiler"):
        ext.build()
    assert ext.main(["build"]) == 0  # make test goes on; the chapters use fallbacks
    assert "NOT built" in capsys.readouterr().err
    assert ext.main(["build", "--strict"]) == 1


def test_broken_compiler_means_fallback(fresh, monkeypatch):
    fake = fresh / "c++"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert ext.load() is False
    assert "failed" in ext.status()["reason"]
