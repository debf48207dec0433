"""Peak memory of a call on the CPU, as torch's own allocator counts it.

Why here: tracemalloc does not see torch's allocations and ``ru_maxrss`` never
goes down, so neither can say what one call needs. The profiler's allocation
events carry the allocator's running total of live bytes; their maximum during
the call is its peak.
"""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_stderr():
    """Kineto logs profiler start/stop, and c10 a once-per-process warning, on file descriptor 2 (into
    notebook cells): hide that C-level chatter while profiling. Python exceptions still propagate."""
    import os
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
