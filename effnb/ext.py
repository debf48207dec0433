"""The C++ kernels: build ``kernels/*.cpp`` once into torch custom operators, load them fast.

All sources become one shared library whose operators live in the ``effnb``
namespace (``torch.ops.effnb.stream_copy`` ...). The build lands in
``$EFFNB_CACHE/ext/<key>/`` (default ``~/.cache/effnb``); the key hashes
everything that changes the machine code: the sources, torch, the compiler,
the CPU's ISA features and the flags. Same key, no rebuild.

Notebooks only ever call :func:`load`, which loads a finished build (marked by
``BUILD_OK.json``) and never compiles; ``make ext`` / ``python -m effnb.ext
build`` compiles. Without a compiler, or before a build, :func:`load` returns
False and the chapters take their fallback path; :func:`status` says why.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import provenance

KERNEL_DIR = provenance.ROOT / "kernels"
MARKER = "BUILD_OK.json"
LOCK = "build.lock"
LOCK_STALE_S = 30 * 60      # a lock older than this is stale even if its pid lives
LOCK_WAIT_S = 20 * 60       # how long a second builder waits for the first
OPS = ("stream_read", "stream_copy", "stream_scale", "stream_triad")  # must exist after loading

_state: dict = {"backend": "fallback", "reason": "effnb.ext.load() not called yet", "path": None,
                "key": None, "build_s": None}
_loaded: dict = {"key": None}  # the build whose library this process has loaded (one per process)


class BuildError(RuntimeError):
    """The kernels could not be built; the message says what to do."""


class StaleLockError(BuildError):
    """A build lock left behind by a process that is gone."""


# ---------------------------------------------------------------- inputs of the key

def cache_dir() -> Path:
    """Root of effnb's caches: ``$EFFNB_CACHE`` or ``~/.cache/effnb``."""
    return Path(os.environ.get("EFFNB_CACHE") or "~/.cache/effnb").expanduser()


def sources() -> list[Path]:
    return sorted(KERNEL_DIR.glob("*.cpp"))


def compiler() -> str | None:
    """Path of the C++ compiler torch will use (``$CXX`` or ``c++``), None if there is none."""
    return shutil.which(os.environ.get("CXX") or "c++")


def compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise BuildError(f"the C++ compiler {cxx} does not run: {err}") from err
    first = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not first:
        raise BuildError(f"`{cxx} --version` failed (exit {out.returncode}); is the compiler installed?")
    return first[0]


def arch_flags() -> list[str]:
    """Target the ISA level of this CPU (x86-64-v3 = AVX2+FMA, v4 = AVX-512).

    Named levels rather than -march=native: one build then serves every CPU
    with the same feature set, and the features are part of the cache key, so a
    different CPU gets its own build instead of an illegal instruction.
    """
    feats = set(provenance.isa_features())
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= feats:
        # VNNI is not part of v4; kernels/quant.cpp uses vpdpbusd when it is there
        return ["-march=x86-64-v4", "-mprefer-vector-width=256"] + (["-mavx512vnni"] if "avx512_vnni" in feats else [])
    if {"avx2", "fma", "bmi2", "f16c"} <= feats:
        return ["-march=x86-64-v3"] + (["-mavxvnni"] if "avx_vnni" in feats else [])
    if "sse4_2" in feats:
        return ["-march=x86-64-v2"]
    return []


def flags() -> dict:
    """Compiler flags; ``$EFFNB_CXXFLAGS`` adds more (part of the key, so it is its own build).
    Example: ``EFFNB_CXXFLAGS=-DEFFNB_QDOT32_EMULATE`` compiles the VNNI code path of
    quant.cpp with an AVX2 stand-in, to test it on a CPU without VNNI."""
    extra = os.environ.get("EFFNB_CXXFLAGS", "").split()
    return {"cflags": ["-O3", "-fopenmp", *arch_flags(), *extra], "ldflags": ["-fopenmp"]}


def key(cxx: str | None = None) -> str:
    """Short hash of sources, torch, compiler, CPU features and flags."""
    import torch
    cxx = cxx or compiler()
    if cxx is None:
        raise BuildError("no C++ compiler: neither $CXX nor `c++` is on PATH")
    h = hashlib.sha256()
    for src in sources():
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    for part in (torch.__version__, compiler_version(cxx), " ".join(provenance.isa_features()),
                 json.dumps(flags(), sort_keys=True), f"{sys.version_info[:2]}"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def build_dir(k: str) -> Path:
    return cache_dir() / "ext" / k


def _lib_name(k: str) -> str:
    return f"effnb_kernels_{k}"


# ---------------------------------------------------------------- loading

def _fallback(reason: str, k: str | None = None) -> bool:
    _state.update(backend="fallback", reason=reason, path=None, key=k, build_s=None)
    return False


def _ops_present() -> bool:
    import torch
    try:
        return all(hasattr(torch.ops.effnb, op) for op in OPS)
    except (AttributeError, RuntimeError):
        return False


def load() -> bool:
    """Load the finished build for this machine; True when ``torch.ops.effnb`` is ready.

    Never compiles. Returns False (and :func:`status` says why) when there is
    no compiler, no finished build for this key, or the library fails to load.
    """
    if _state["backend"] == "cpp":
        return True
    cxx = compiler()
    if cxx is None:
        return _fallback("no C++ compiler ($CXX or `c++` on PATH); using the fallback kernels")
    try:
        k = key(cxx)
    except BuildError as err:
        return _fallback(str(err))
    info = _finished(build_dir(k))
    if info is None:
        return _fallback(f"the kernels are not built for this machine (key {k}): "
                         "run `make ext` or `python -m effnb.ext build`", k)
    lib = build_dir(k) / info["library"]
    reason = "loaded the cached build"
    try:
        import torch
        if _ops_present():  # loaded earlier in this process, e.g. by the build itself
            if _loaded["key"] not in (None, k):
                reason = (f"this process runs the older build {_loaded['key']}; restart Python "
                          f"to load the current one ({k})")
        else:
            torch.ops.load_library(str(lib))
            _loaded["key"] = k
    except Exception as err:  # noqa: BLE001 - any failure means "use the fallback"
        return _fallback(f"could not load {lib}: {err}", k)
    if not _ops_present():
        return _fallback(f"{lib} loaded but lacks the ops {OPS}; rebuild with `python -m effnb.ext build`", k)
    _state.update(backend="cpp", reason=reason, path=str(lib), key=k, build_s=info.get("build_s"))
    return True


def _finished(out: Path) -> dict | None:
    """The marker of a complete build in ``out`` (None if absent, unreadable or its library is gone)."""
    try:
        info = json.loads((out / MARKER).read_text())
        return info if (out / info["library"]).is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def status() -> dict:
    """Which backend the chapters get: ``backend`` 'cpp' or 'fallback', and why."""
    if _state["backend"] != "cpp":
        load()
    return dict(_state)


# ---------------------------------------------------------------- the build lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def lock_is_stale(path: Path, now: float | None = None) -> tuple[bool, dict]:
    """(stale?, lock contents): stale when its pid on this host is dead or it is too old."""
    info = _read_lock(path)
    now = time.time() if now is None else now
    try:
        age = now - float(info.get("time", path.stat().st_mtime))
    except OSError:
        return False, info  # vanished meanwhile: not stale, just gone
    pid = info.get("pid")
    same_host = info.get("host", socket.gethostname()) == socket.gethostname()
    dead = isinstance(pid, int) and same_host and not _pid_alive(pid)
    return bool(dead or age > LOCK_STALE_S), info


def _acquire(path: Path, timeout: float, say) -> bool:
    """Take the lock. False: another process finished the build while we waited."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale, info = lock_is_stale(path)
            if stale:
                raise StaleLockError(f"stale build lock at {path} from pid {info.get('pid', '?')} "
                                     f"(that process is gone or the lock is over {LOCK_STALE_S // 60} min old); "
                                     f"remove it: rm {path}")
            if _finished(path.parent):
                return False
            if time.monotonic() > deadline:
                raise BuildError(f"gave up after {timeout:.0f} s waiting for the build lock {path} "
                                 f"held by pid {info.get('pid', '?')}; if no build is running, remove it")
            if not told:
                say(f"another build (pid {info.get('pid', '?')}) holds {path}; waiting up to {timeout:.0f} s ...")
                told = True
            time.sleep(1.0)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}, fh)
        return True


# ---------------------------------------------------------------- building

def build(verbose: bool = False, timeout: float = LOCK_WAIT_S) -> Path:
    """Compile the kernels for this machine unless an up-to-date build exists; return the build dir.

    Raises :class:`BuildError` (with the compiler's message) when there is no
    compiler or compilation fails, :class:`StaleLockError` when a dead build left
    its lock behind.
    """
    say = print if verbose else (lambda *_: None)
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler: install g++ (or set $CXX); the chapters use the fallback kernels meanwhile")
    if not sources():
        raise BuildError(f"no kernels/*.cpp under {KERNEL_DIR}")
    _check_namespace()
    k = key(cxx)
    out = build_dir(k)
    if _finished(out):
        say(f"up to date: {out}")
        load()
        return out
    if _ops_present():
        raise BuildError("the kernel sources changed while this Python process has the old build loaded "
                         "(torch cannot unload it): run `python -m effnb.ext build` in a terminal, then "
                         "restart this Python process")
    out.mkdir(parents=True, exist_ok=True)
    if not _acquire(out / LOCK, timeout, print):
        load()
        return out
    try:
        if _finished(out):  # finished by someone else between our checks
            load()
            return out
        # torch keeps its own lock file here; one left by a killed build would make it wait
        # forever. We hold our lock, so nobody else is building in this folder.
        (out / "lock").unlink(missing_ok=True)
        _compile(k, out, cxx, verbose)
        _loaded["key"] = k
    finally:
        (out / LOCK).unlink(missing_ok=True)
    load()
    return out


def _check_namespace() -> None:
    """Only one source may open the namespace with TORCH_LIBRARY; the others add to it."""
    owners = [s.name for s in sources() if "TORCH_LIBRARY(effnb" in s.read_text().replace(" ", "")]
    if len(owners) > 1:
        raise BuildError(f"TORCH_LIBRARY(effnb, m) appears in {owners}: keep it in one file and use "
                         "TORCH_LIBRARY_FRAGMENT(effnb, m) in the others")


def _compile(k: str, out: Path, cxx: str, verbose: bool) -> Path:
    from torch.utils import cpp_extension
    fl = flags()
    # ninja ships in the venv; make sure torch finds it even when the venv is not activated
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env_path])
    t0 = time.perf_counter()
    try:
        lib = cpp_extension.load(name=_lib_name(k), sources=[str(s) for s in sources()],
                                 extra_cflags=list(fl["cflags"]), extra_ldflags=list(fl["ldflags"]),  # torch appends
                                 build_directory=str(out), is_python_module=False, verbose=verbose)
    except Exception as err:  # noqa: BLE001 - the compiler's message is what the user needs
        tail = "\n".join(str(err).strip().splitlines()[-25:])
        raise BuildError(f"compiling {[s.name for s in sources()]} with {cxx} failed:\n{tail}") from err
    finally:
        os.environ["PATH"] = env_path
    build_s = time.perf_counter() - t0
    lib = Path(lib) if lib else out / f"{_lib_name(k)}.so"
    info = {"key": k, "library": lib.name, "build_s": round(build_s, 2), "compiler": compiler_version(cxx),
            "torch": __import__("torch").__version__, "isa_features": provenance.isa_features(),
            "flags": fl, "sources": [s.name for s in sources()],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(out / MARKER)  # atomic: a reader sees no marker or a whole one
    return lib


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effnb.ext",
        description="Build or inspect effnb's C++ kernels (kernels/*.cpp -> torch.ops.effnb.*). "
                    f"The build is cached under $EFFNB_CACHE/ext/<key>/ (now {cache_dir() / 'ext'}); "
                    "the key covers sources, torch, compiler, CPU features and flags, so an unchanged "
                    "build returns at once.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the kernels unless an up-to-date build exists")
    b.add_argument("-v", "--verbose", action="store_true", help="show the compiler's commands and output")
    b.add_argument("--strict", action="store_true",
                   help="exit 1 when the kernels cannot be built (default: warn, exit 0, chapters use fallbacks)")
    b.add_argument("--timeout", type=float, default=LOCK_WAIT_S,
                   help="seconds to wait for another process's build (default %(default)s)")
    sub.add_parser("status", help="print which backend the chapters get and why (JSON)")
    args = parser.parse_args(argv)
    if args.cmd == "status":
        print(json.dumps(status(), indent=1))
        return 0
    t0 = time.perf_counter()
    try:
        k = key() if compiler() else None
        already = k is not None and _finished(build_dir(k)) is not None
        out = build(verbose=args.verbose, timeout=args.timeout)
    except BuildError as err:
        print(f"effnb.ext: C++ kernels NOT built: {err}", file=sys.stderr)
        if isinstance(err, StaleLockError) or args.strict:
            return 1
        print("effnb.ext: the chapters will use their fallback kernels (Numba/torch)", file=sys.stderr)
        return 0
    st = status()
    if already:
        print(f"effnb.ext: up to date ({out}, key {k}, checked in {time.perf_counter() - t0:.1f} s)")
    else:
        print(f"effnb.ext: built {out} in {st['build_s']} s (key {st['key']})")
    if st["backend"] != "cpp":
        print(f"effnb.ext: built but not loadable: {st['reason']}", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
