"""Peak memory of a call on the CPU, as torch's own allocator counts it.

Why here: tracemalloc does not see torch's allocations and ``ru_maxrss`` never
goes down, so neither can say what one call needs. The profiler's allocation
events carry the allocator's running total of live bytes; their maximum during
the call is its peak.
"""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def quiet_stderr():
    """Kineto logs profiler start/stop, and c10 a once-per-process warning, on file descriptor 2 (into
    notebook cells): hide that C-level chatter while profiling. Python exceptions still propagate."""
    import sys
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def peak_bytes(fn) -> int:
    """Peak bytes torch's CPU allocator holds during ``fn()`` beyond what was live before (blocks
    allocated before profiling started are not counted, not even when freed). Memory that C++
    code allocates outside torch (``std::vector`` scratch) is not seen either."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation:
            peak = max(peak, e.extra_fields.total_allocated)
        stack.extend(e.children)
    return int(peak)


def huge_pages(probe_mib: int = 8) -> dict:
    """Whether large tensors live on 2 MiB pages (transparent huge pages) in this process.

    Why it matters: a kernel that streams weights from memory reads them ~15% faster from
    2 MiB pages than from 4 KiB ones here (fewer TLB misses; the prefetchers stop at each page's
    end). numpy advises huge pages for its large arrays on its own; torch does so only when
    ``THP_MEM_ALLOC_ENABLE=1`` is in the environment before its first allocation, which effnb
    sets (``effnb/__init__.py``, the Makefile) unless told otherwise. Returns the kernel's policy
    (``always``, ``madvise``, ``never``), the variable as torch saw it, and ``torch``: whether a
    fresh ``probe_mib`` MiB tensor really got huge pages (AnonHugePages grew when it was touched).
    """
    import torch
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
        policy = text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        policy = "unknown"

    def anon_huge_kib() -> int | None:
        try:
            for line in open("/proc/self/smaps_rollup"):
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    before = anon_huge_kib()
    t = torch.ones(probe_mib << 18)  # 4-byte floats: probe_mib MiB, every page touched
    after = anon_huge_kib()
    del t
    got = before is not None and after is not None and after - before >= 1024
    return {"policy": policy, "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE", ""), "torch": got}
