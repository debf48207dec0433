"""Who measured what, where: the machine fingerprint and run record.

Every figure in the book carries this record (in the executed notebook's
metadata and a JSON sidecar), so a reader can tell which machine, code and
parameters produced it. :func:`hardware_id` names the machine in folder names.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from . import memory, threads

ROOT = Path(__file__).resolve().parent.parent

# ISA extensions worth naming: they decide which kernel variant runs.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512bw", "avx512vl",
             "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_vpopcntdq", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16", "neon", "asimd", "sve")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": set()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value.strip()
        elif key in ("flags", "Features") and not info["flags"]:
            info["flags"] = set(value.split())
    return info


def cpu_model() -> str:
    return _cpuinfo()["model"] or "unknown cpu"


def cpu_flags() -> set[str]:
    """All ISA flags the kernel reports for this CPU."""
    return set(_cpuinfo()["flags"])


def isa_features() -> list[str]:
    """The ISA extensions that matter for our kernels, sorted."""
    return sorted(f for f in ISA_FLAGS if f in cpu_flags())


def isa_level() -> str:
    """The widest SIMD level present: names kernel variants and build caches."""
    flags = cpu_flags()
    if {"avx512f", "avx512_vnni"} <= flags:
        return "avx512vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    if "asimd" in flags or "neon" in flags:
        return "neon"
    return "generic"


def _size_to_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.I)
    if not m:
        return 0
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


@functools.lru_cache(maxsize=1)
def caches() -> dict:
    """Per-level cache sizes in bytes, e.g. {'L1d': 32768, 'L2': 524288, 'L3': 33554432}.

    L2 is per core here; L3 is the shared last-level cache that cold-cache
    benchmarks must overflow.
    """
    out = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = _size_to_bytes((index / "size").read_text())
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        out[name] = size
    return out


def llc_bytes() -> int:
    """Size of the last-level cache; 32 MiB when the OS does not say."""
    sizes = [v for k, v in caches().items() if k in ("L2", "L3", "L4")]
    return max(sizes) if sizes else 32 << 20


def memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cuda_available() -> bool:
    """True where torch sees a CUDA GPU: the one device check of effnb."""
    import torch
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def gpu() -> dict | None:
    """The first CUDA device and its driver, or None on a CPU-only machine."""
    try:
        import torch
        if not cuda_available():
            return None
        props = torch.cuda.get_device_properties(0)
        driver = None
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
        return {"name": props.name, "memory_bytes": props.total_memory, "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda, "driver": driver}
    except Exception:  # noqa: BLE001 - a broken CUDA stack means "no GPU" for provenance
        return None


def _slug(text: str) -> str:
    text = re.sub(r"\(.*?\)|\b(processor|cpu|with|radeon graphics|\d+-core)\b", " ", text.lower())
    text = re.sub(r"@.*", "", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")[:32] or "cpu"


def lowered_isa() -> str | None:
    """The level ``$EFFNB_ISA`` asks for when it is below this CPU's (``avx2`` on an AVX-512 machine), else None:
    such a run takes another code path on the same hardware."""
    from . import ext
    want = os.environ.get("EFFNB_ISA", "").strip().lower()
    if want in ext.LEVELS and ext.LEVELS.index(want) < ext.LEVELS.index(ext.cpu_level()):
        return want
    return None


def hardware_id() -> str:
    """A stable, readable machine name, e.g. ``amd-epyc-2c-avx2-24g``.

    Built from the CPU model, usable cores, SIMD level, memory and GPU, so two
    runs on the same kind of machine land in the same ``book/runs/`` folder. A
    run on a lower ISA path (``EFFNB_ISA=avx2`` on an AVX-512 CPU) ends in
    ``-as-avx2``: its runs, roofline and ledger rows stay apart from the CPU's own,
    and the hardware page shows each path's results.
    """
    parts = [_slug(cpu_model()), f"{threads.available_cores()}c", isa_level(),
             f"{round(memory_bytes() / 2**30)}g"]
    g = gpu()
    if g:
        parts.append(_slug(g["name"].replace("NVIDIA", "")))
    low = lowered_isa()
    if low:
        parts.append(f"as-{low}")
    return "-".join(p for p in parts if p)


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_state() -> dict:
    """Commit and dirty flag of the effnb checkout (None outside git)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numba", "numpy", "pandas", "papermill", "scipy", "sklearn", "sktime"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - not installed is fine
            continue
    return out


def fingerprint() -> dict:
    """The machine: what the hardware page shows for each hardware id."""
    return {
        "hardware_id": hardware_id(),
        "cpu_model": cpu_model(),
        "arch": platform.machine(),
        "isa_level": isa_level(),
        "isa_features": isa_features(),
        "cores": threads.available_cores(),
        "caches": caches(),
        "memory_bytes": memory_bytes(),
        "gpu": gpu(),
        "os": f"{platform.system()} {platform.release()}",
    }


def collect(parameters: dict | None = None, seeds: dict | None = None) -> dict:
    """Full record of one run: machine, software, threads, seeds, code state, parameters."""
    return {
        "fingerprint": fingerprint(),
        "versions": versions(),
        "threads": threads.current_threads(),
        "huge_pages": memory.huge_pages(),
        "seeds": seeds or {},
        "git": git_state(),
        "parameters": parameters or {},
        "argv": sys.argv,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
    }
