"""The C++ kernels: one library per kernel family, built once, loaded fast.

``kernels/<family>/*.cpp`` (plus the shared ``kernels/common/`` headers) build
into one shared library per family. Each has its own cache key (its sources and
headers, the common headers, torch, compiler, CPU features, ISA level, flags)
and its own failure: a compile error in ``sparse`` names ``sparse`` and leaves
``quant`` and ``stream`` loaded. Builds land in
``$EFFNB_CACHE/ext/<family>-<key>/`` (default ``~/.cache/effnb``).

Op schemas are declared in Python (each technique's ``ops`` module, with fake
kernels); the C++ files only register implementations. Notebooks call
:func:`load`, which never compiles; ``make ext`` compiles and fails loudly,
naming the family and the compiler's message, whenever a compiler is present
and a family does not build. :func:`backend` names what a chapter runs:
``cpp-avx512``, ``cpp-avx2``, ``cpp-scalar`` (the family's own path string,
read from the library) or ``torch-fallback``.

``EFFNB_ISA=avx2`` (or ``scalar``) builds for a lower ISA level than the CPU
offers, as its own cached build: the tests use it to run the AVX2 path on an
AVX-512 machine.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import files, provenance

KERNEL_DIR = provenance.ROOT / "kernels"
COMMON = "common"
MARKER = "BUILD_OK.json"
LOCK = "build.lock"
LOCK_STALE_S = 30 * 60      # a lock older than this is stale even if its pid lives
LOCK_WAIT_S = 20 * 60       # how long a second builder waits for the first
LEVELS = ("scalar", "avx2", "avx512")
FALLBACK = "torch-fallback"

_state: dict[str, dict] = {}   # family -> backend, reason, path, key, build_s, isa_path
_loaded: dict[str, str] = {}   # family -> key of the library this process loaded (one per process)


class BuildError(RuntimeError):
    """A kernel family could not be built; the message names it and says what to do."""


class StaleLockError(BuildError):
    """A build lock left behind by a process that is gone."""


# ---------------------------------------------------------------- what is built

def cache_dir() -> Path:
    """Root of effnb's caches: ``$EFFNB_CACHE`` or ``~/.cache/effnb``."""
    return Path(os.environ.get("EFFNB_CACHE") or "~/.cache/effnb").expanduser()


def families() -> list[str]:
    """The kernel families: every ``kernels/<name>/`` holding a ``.cpp`` (``common`` is shared)."""
    if not KERNEL_DIR.is_dir():
        return []
    return sorted(d.name for d in KERNEL_DIR.iterdir()
                  if d.is_dir() and d.name != COMMON and any(d.glob("*.cpp")))


def _check_family(family: str) -> str:
    if family not in families():
        raise BuildError(f"no kernel family {family!r} under {KERNEL_DIR}; families: {', '.join(families())}")
    return family


def sources(family: str) -> list[Path]:
    return sorted((KERNEL_DIR / family).glob("*.cpp"))


def _headers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix in (".h", ".hpp") and p.is_file())


_BORROWED = re.compile(r'^\s*#\s*include\s+"\.\./(\w+)/([\w.]+)"', re.M)


def borrowed_headers(family: str) -> list[Path]:
    """Headers another family lends this one (``#include "../<family>/<file>.h"`` in its sources),
    e.g. the attention family's vector layer: they rebuild the borrower too."""
    found = {KERNEL_DIR / owner / name for src in sources(family) + _headers(KERNEL_DIR / family)
             for owner, name in _BORROWED.findall(src.read_text()) if owner not in (family, COMMON)}
    return sorted(p for p in found if p.is_file())


def inputs(family: str) -> list[Path]:
    """Every file whose change rebuilds the family: its sources and headers, headers it borrows from
    another family, and the common headers."""
    return (sources(family) + _headers(KERNEL_DIR / family) + borrowed_headers(family)
            + _headers(KERNEL_DIR / COMMON))


def compiler() -> str | None:
    """Path of the C++ compiler torch will use (``$CXX`` or ``c++``), None if there is none."""
    return shutil.which(os.environ.get("CXX") or "c++")


_VERSIONS: dict[str, str] = {}


def compiler_version(cxx: str) -> str:
    """First line of ``cxx --version``, asked once per process."""
    if cxx in _VERSIONS:
        return _VERSIONS[cxx]
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise BuildError(f"the C++ compiler {cxx} does not run: {err}") from err
    first = (out.stdout or out.stderr).strip().splitlines()
    if out.returncode != 0 or not first:
        raise BuildError(f"`{cxx} --version` failed (exit {out.returncode}); is the compiler installed?")
    _VERSIONS[cxx] = first[0]
    return first[0]


def cpu_level() -> str:
    """The widest ISA level this CPU runs: avx512, avx2 or scalar."""
    feats = set(provenance.isa_features())
    if platform.machine() in ("x86_64", "AMD64"):
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= feats:
            return "avx512"
        if {"avx2", "fma", "bmi2", "f16c"} <= feats:
            return "avx2"
    return "scalar"


def isa() -> str:
    """The ISA level to build for: ``$EFFNB_ISA`` if set (never above the CPU's), else the CPU's."""
    want = os.environ.get("EFFNB_ISA", "").strip().lower() or cpu_level()
    if want not in LEVELS:
        raise BuildError(f"EFFNB_ISA={want!r} is not one of {', '.join(LEVELS)}; unset it to build for this CPU")
    if LEVELS.index(want) > LEVELS.index(cpu_level()):
        raise BuildError(f"EFFNB_ISA={want} but this CPU only runs up to {cpu_level()}; "
                         f"use EFFNB_ISA={cpu_level()} or lower")
    return want


def arch_flags(level: str | None = None) -> list[str]:
    """Named ISA levels (x86-64-v3 = AVX2+FMA, v4 = AVX-512) rather than -march=native.

    One build serves every CPU with the same features, and the level is part of
    the key, so another CPU gets its own build instead of an illegal instruction.
    VNNI is not part of v4: it is added when the CPU has it, at the avx512 level
    (or AVX-VNNI at avx2 on CPUs that have that); so is VPOPCNTDQ (quant's binary kernel).
    """
    level = level or isa()
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    feats = set(provenance.isa_features())
    if level == "avx512":
        return ["-march=x86-64-v4", "-mprefer-vector-width=256"] + (
            ["-mavx512vnni"] if "avx512_vnni" in feats else []) + (
            ["-mavx512vpopcntdq"] if "avx512_vpopcntdq" in feats else [])
    if level == "avx2":
        return ["-march=x86-64-v3"] + (["-mavxvnni"] if "avx_vnni" in feats and cpu_level() == "avx2" else [])
    return ["-march=x86-64-v2"] if "sse4_2" in feats else []


def flags() -> dict:
    """Compiler flags; ``$EFFNB_CXXFLAGS`` adds more (part of the key, so it is its own build).
    Example: ``EFFNB_CXXFLAGS=-DEFFNB_QDOT32_EMULATE`` compiles quant's VNNI code path
    with an AVX2 stand-in, to test it on a CPU without VNNI."""
    extra = os.environ.get("EFFNB_CXXFLAGS", "").split()
    return {"cflags": ["-O3", "-fopenmp", f"-I{KERNEL_DIR / COMMON}", *arch_flags(), *extra],
            "ldflags": ["-fopenmp"]}


def key(family: str, cxx: str | None = None) -> str:
    """Short hash of the family's inputs, torch, compiler, CPU features, ISA level and flags."""
    import torch
    cxx = cxx or compiler()
    if cxx is None:
        raise BuildError("no C++ compiler: neither $CXX nor `c++` is on PATH")
    h = hashlib.sha256()
    for src in inputs(_check_family(family)):
        h.update(src.relative_to(KERNEL_DIR).as_posix().encode() + b"\0" + src.read_bytes() + b"\0")
    flag_text = json.dumps(flags(), sort_keys=True).replace(str(KERNEL_DIR), "<kernels>")
    for part in (torch.__version__, compiler_version(cxx), " ".join(provenance.isa_features()), isa(),
                 flag_text, f"{sys.version_info[:2]}"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def build_dir(family: str, k: str) -> Path:
    return cache_dir() / "ext" / f"{family}-{k}"


def _lib_name(family: str, k: str) -> str:
    return f"effnb_{family}_{k}"


# ---------------------------------------------------------------- schemas

_libraries: dict[str, object] = {}   # family -> its torch.library.Library (kept alive: it owns the schemas)


def declare(family: str, schemas: dict[str, str]):
    """Declare a family's op schemas once, in Python (``{"name": "(Tensor x) -> Tensor"}``).

    The C++ files only register implementations, so an op exists (and can get a
    fake kernel and ``opcheck``) even where the library is not built. Idempotent:
    a second call for the same family returns the same library.
    """
    import torch
    if family not in _libraries:
        lib = torch.library.Library("effnb", "FRAGMENT")
        for name, schema in schemas.items():
            lib.define(f"{name}{schema}")
        _libraries[family] = lib
    return _libraries[family]


# ---------------------------------------------------------------- loading

def _set(family: str, **state) -> bool:
    _state[family] = {"backend": FALLBACK, "reason": "", "path": None, "key": None, "build_s": None,
                      "isa_path": None, **state}
    return _state[family]["backend"] != FALLBACK


def _finished(out: Path) -> dict | None:
    """The marker of a complete build in ``out`` (None if absent, unreadable or its library is gone)."""
    try:
        info = json.loads((out / MARKER).read_text())
        return info if (out / info["library"]).is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _isa_path(lib: Path) -> str:
    """The path string the family's library was built with (EFFNB_ISA_PATH in kernels/common/effnb.h)."""
    fn = ctypes.CDLL(str(lib)).effnb_isa_path
    fn.restype = ctypes.c_char_p
    return fn().decode()


def load(family: str) -> bool:
    """Load the finished build of one family for this machine; True when its ops are ready.

    Never compiles. Returns False (and :func:`status` says why) when there is
    no compiler, no finished build for this key, or the library fails to load.
    The answer is kept for the process (a fallback too: no hashing on a hot path);
    :func:`build` clears it. Schemas may be declared before or after loading.
    """
    conditions = _conditions()
    if family in _state and _state[family].get("conditions") == conditions:
        return _state[family]["backend"] != FALLBACK
    if _state.get(family, {}).get("backend", FALLBACK) != FALLBACK:
        return True  # a loaded library stays loaded whatever changed since
    _state.pop(family, None)
    ok = _load(family)
    _state[family]["conditions"] = conditions
    return ok


def _conditions() -> tuple:
    """What decides a fallback: the compiler, the cache, the ISA level, the flags, the sources' folder."""
    return (compiler(), str(cache_dir()), os.environ.get("EFFNB_ISA", ""), os.environ.get("EFFNB_CXXFLAGS", ""),
            str(KERNEL_DIR))


def _load(family: str) -> bool:
    cxx = compiler()
    if cxx is None:
        return _set(family, reason="no C++ compiler ($CXX or `c++` on PATH); using the fallback kernels")
    try:
        k = key(family, cxx)
    except BuildError as err:
        return _set(family, reason=str(err))
    if family in _loaded and _loaded[family]["key"] != k:  # torch cannot unload a library
        old = _loaded[family]
        return _set(family, **old, reason=f"this process runs the older build {old['key']}; restart Python "
                                          f"to load the current one ({k})")
    info = _finished(build_dir(family, k))
    if info is None:
        return _set(family, key=k, reason=f"kernel family {family} is not built for this machine (key {k}): "
                                          "run `make ext` or `python -m effnb.ext build`")
    lib = build_dir(family, k) / info["library"]
    try:
        import torch
        if family not in _loaded:
            torch.ops.load_library(str(lib))
        path = _isa_path(lib)
    except Exception as err:  # noqa: BLE001 - any failure means "use the fallback"
        return _set(family, key=k, reason=f"could not load {lib}: {err}")
    _loaded[family] = {"backend": f"cpp-{path}", "path": str(lib), "key": k, "build_s": info.get("build_s"),
                       "isa_path": path}
    ok = _set(family, reason="loaded the cached build", **_loaded[family])
    sync_threads()
    return ok


def status(family: str | None = None) -> dict:
    """Per family: ``backend`` (cpp-<path> or torch-fallback), why, the library and its key."""
    if family is None:
        return {f: status(f) for f in families()}
    if _state.get(family, {}).get("backend", FALLBACK) == FALLBACK:  # a loaded library needs no second look
        load(family)
    return dict(_state[family])


def backend(family: str) -> str:
    """What this process runs for ``family``: ``cpp-<isa path>`` or ``torch-fallback`` (cached)."""
    return status(family)["backend"]


def omp_threads(family: str) -> int:
    """OpenMP threads the family's library would use now (it must follow effnb.threads.set_threads)."""
    if not load(family):
        raise BuildError(f"kernel family {family} is not loaded: {status(family)['reason']}")
    return int(ctypes.CDLL(_state[family]["path"]).effnb_omp_threads())


def sync_threads(n: int | None = None) -> None:
    """Give every loaded family ``n`` OpenMP threads (default: torch's count).

    The libraries link the system's libgomp while torch carries its own copy, so
    ``torch.set_num_threads`` alone leaves our kernels at the count they started with.
    """
    if n is None:
        import torch
        n = torch.get_num_threads()
    for st in _state.values():
        if st.get("path"):
            ctypes.CDLL(st["path"]).effnb_set_omp_threads(int(n))


# ---------------------------------------------------------------- the build lock

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_stale(path: Path, now: float | None = None) -> tuple[bool, dict]:
    """(stale?, lock contents): stale when its pid on this host is dead or it is too old."""
    info = files.read_json(path) or {}
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

def build_family(family: str, verbose: bool = False, timeout: float = LOCK_WAIT_S) -> Path:
    """Compile one family for this machine unless an up-to-date build exists; return its build dir."""
    say = print if verbose else (lambda *_: None)
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler: install g++ (or set $CXX); the chapters use the fallback kernels meanwhile")
    k = key(family, cxx)
    out = build_dir(family, k)
    if _finished(out):
        say(f"{family}: up to date: {out}")
        return out
    if family in _loaded and _loaded[family]["key"] != k:
        raise BuildError(f"kernel family {family} changed while this Python process has the old build loaded "
                         "(torch cannot unload it): run `python -m effnb.ext build` in a terminal, then "
                         "restart this Python process")
    out.mkdir(parents=True, exist_ok=True)
    if not _acquire(out / LOCK, timeout, print):
        return out
    try:
        if not _finished(out):  # finished by someone else between our checks?
            # torch keeps its own lock file here; one left by a killed build would make it wait forever.
            (out / "lock").unlink(missing_ok=True)
            _compile(family, k, out, cxx, verbose)
    finally:
        (out / LOCK).unlink(missing_ok=True)
    return out


def build(which: list[str] | None = None, verbose: bool = False, timeout: float = LOCK_WAIT_S) -> dict[str, Path]:
    """Build every family (or ``which``); a failing family does not stop the others.

    Returns {family: build dir}. Raises :class:`BuildError` naming every family
    that failed (with the compiler's message) after the others were built and loaded.
    """
    done, failed = {}, {}
    for family in which or families():
        _state.pop(family, None)  # whatever load() concluded before this build is out of date
        try:
            done[family] = build_family(_check_family(family), verbose, timeout)
            if not load(family):
                raise BuildError(f"built but not loadable: {status(family)['reason']}")
        except StaleLockError:
            raise
        except BuildError as err:
            failed[family] = str(err)
    if failed:
        raise BuildError("\n".join(f"kernel family {f!r} did not build: {msg}" for f, msg in failed.items()))
    return done


def _compile(family: str, k: str, out: Path, cxx: str, verbose: bool) -> Path:
    from torch.utils import cpp_extension
    fl = flags()
    srcs = sources(family)
    # ninja ships in the venv; make sure torch finds it even when the venv is not activated
    env_path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env_path])
    t0 = time.perf_counter()
    try:
        lib = cpp_extension.load(name=_lib_name(family, k), sources=[str(s) for s in srcs],
                                 extra_cflags=list(fl["cflags"]), extra_ldflags=list(fl["ldflags"]),
                                 build_directory=str(out), is_python_module=False, verbose=verbose)
    except Exception as err:  # noqa: BLE001 - the compiler's message is what the user needs
        text = str(err).strip().splitlines()
        errors = [line for line in text if "error" in line.lower()][:12]
        tail = "\n".join(errors or text[-25:])
        raise BuildError(f"compiling {[s.relative_to(KERNEL_DIR).as_posix() for s in srcs]} with {cxx} "
                         f"failed:\n{tail}") from err
    finally:
        os.environ["PATH"] = env_path
    lib = Path(lib) if lib else out / f"{_lib_name(family, k)}.so"
    info = {"family": family, "key": k, "library": lib.name, "build_s": round(time.perf_counter() - t0, 2),
            "compiler": compiler_version(cxx), "torch": __import__("torch").__version__,
            "isa_features": provenance.isa_features(), "isa": isa(), "flags": fl,
            "inputs": [p.relative_to(KERNEL_DIR).as_posix() for p in inputs(family)],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    files.atomic_write(out / MARKER, json.dumps(info, indent=1))  # a reader sees no marker or a whole one
    return lib


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m effnb.ext",
        description="Build or inspect effnb's C++ kernel families (kernels/<family>/*.cpp, one library "
                    f"each). Builds are cached under $EFFNB_CACHE/ext/<family>-<key>/ (now {cache_dir() / 'ext'}); "
                    "the key covers the family's sources and headers, kernels/common, torch, compiler, CPU "
                    "features, ISA level ($EFFNB_ISA) and flags, so an unchanged build returns at once.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile every family (or those named) unless up to date; exit 1 "
                                     "naming each family that fails to compile")
    b.add_argument("family", nargs="*", help=f"families to build (default all: {', '.join(families())})")
    b.add_argument("-v", "--verbose", action="store_true", help="show the compiler's commands and output")
    b.add_argument("--timeout", type=float, default=LOCK_WAIT_S,
                   help="seconds to wait for another process's build (default %(default)s)")
    sub.add_parser("status", help="print which backend each family gets and why (JSON)")
    args = parser.parse_args(argv)
    if args.cmd == "status":
        print(json.dumps(status(), indent=1))
        return 0
    if compiler() is None:
        print("effnb.ext: no C++ compiler (install g++ or set $CXX): the chapters use their fallback "
              "kernels (Numba/torch) and say so in every result", file=sys.stderr)
        return 0
    t0 = time.perf_counter()
    try:
        build(args.family or None, verbose=args.verbose, timeout=args.timeout)
        code = 0
    except BuildError as err:
        print(f"effnb.ext: C++ kernels NOT built:\n{err}", file=sys.stderr)
        code = 1
    for family, st in status().items():
        if not args.family or family in args.family:
            print(f"effnb.ext: {family:8s} {st['backend']:18s} {st['path'] or st['reason']}")
    print(f"effnb.ext: checked in {time.perf_counter() - t0:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
