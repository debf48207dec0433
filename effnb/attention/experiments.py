"""Chapter 09's races, as declarative benchmarks, and its slope fit.

Inputs are random (queries, keys and values drawn i.i.d. normal, SmolLM2's
head shapes): the time of attention does not depend on the values, and random
unit vectors give k-means clusters of about equal size, which is the regime
the Routing Transformer's n^1.5 relies on (a trained model's clusters are less
even; the chapter measures SmolLM2's own below).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .. import memory, perf
from . import ops, peers, routing
from . import reference


def _qkv(heads: int, n: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed + n)
    return tuple(torch.randn(heads, n, d, generator=g) for _ in range(3))


def routing_race(sizes, heads: int = 9, head_dim: int = 64, repeats: int = 3, flex_sizes=(),
                 naive_max: int = 4096, iters: int = 2, seed: int = 0) -> perf.Benchmark:
    """Causal self-attention over ``n`` tokens: routing (ours, with and without the k-means
    routing in the time) against SDPA, the naive formula (up to ``naive_max``) and FlexAttention
    on the same clusters (at ``flex_sizes``). Throughput counts the pairs each one scores."""
    plans = {}

    def plan_of(n):
        if n not in plans:
            q, k, _ = _qkv(heads, n, head_dim, seed)
            plans[n] = routing.plan(q, k, iters=iters, seed=seed)
        return plans[n]

    def routed(n):
        q, k, v = _qkv(heads, n, head_dim, seed)
        return lambda: routing.routing_attention(q, k, v, iters=iters, seed=seed)

    def attend_only(n):
        q, k, v = _qkv(heads, n, head_dim, seed)
        p = plan_of(n)
        return lambda: routing.attend(q, k, v, p)

    def dense(fn):
        def make(n):
            q, k, v = _qkv(heads, n, head_dim, seed)
            return lambda: fn(q, k, v)
        return make

    def flex(n):
        q, k, v = _qkv(heads, n, head_dim, seed)
        run = peers.flex_routed(q, k, v, plan_of(n))
        t0 = time.perf_counter()
        first = run()                                  # compiles: its time goes to the notes, not the race
        spec.notes.append({"flex_compile_s": time.perf_counter() - t0, "tokens": n})
        if not torch.allclose(first, routing.attend(q, k, v, plan_of(n)), atol=1e-4, rtol=1e-3):
            raise RuntimeError(f"FlexAttention's routed output differs from ours at n={n}: the race would be unfair")
        return run

    causal_flops = lambda n: 2.0 * heads * n * (n + 1) * head_dim            # noqa: E731  QK and PV, lower triangle
    routed_flops = lambda n: 4.0 * head_dim * plan_of(n).pairs()             # noqa: E731
    flex_ok, _ = peers.flex_status()
    providers = [
        perf.Provider("routing", "ours: routing attention (k-means + sort + kernel)", routed, ours=True,
                      backend=ops.backend(), flops=routed_flops),
        perf.Provider("attend", "ours: attention in the clusters (routing precomputed)", attend_only, ours=True,
                      backend=ops.backend(), flops=routed_flops),
        perf.Provider("sdpa", "torch SDPA, causal", dense(peers.sdpa_causal), backend="torch", flops=causal_flops),
        perf.Provider("naive", "naive softmax(QK^T)V", dense(peers.naive_causal), backend="torch",
                      flops=causal_flops, only=lambda n: n <= naive_max),
    ]
    if flex_ok and flex_sizes:
        providers.append(perf.Provider("flex", "FlexAttention, same clusters (compiled)", flex,
                                       backend="torch-inductor", flops=routed_flops,
                                       only=lambda n: n in set(flex_sizes)))
    spec = perf.Benchmark(name=f"causal attention, {heads} heads x {head_dim}", x="tokens", x_values=list(sizes),
                          providers=providers, baseline="sdpa", unit="GFLOP/s", repeats=repeats, warmup=1)
    return spec


def routing_memory(sizes, heads: int = 9, head_dim: int = 64, naive_max: int = 4096, iters: int = 2,
                   seed: int = 0) -> list[dict]:
    """Peak bytes torch's allocator holds during one call (inputs excluded) of routing attention
    (routing included), SDPA and the naive formula, per length: the memory half of "n^1.5 vs n^2"."""
    rows = []
    for n in sizes:
        q, k, v = _qkv(heads, n, head_dim, seed)
        calls = {"routing": lambda: routing.routing_attention(q, k, v, iters=iters, seed=seed),
                 "sdpa": lambda: peers.sdpa_causal(q, k, v)}
        if n <= naive_max:
            calls["naive"] = lambda: peers.naive_causal(q, k, v)
        for key, fn in calls.items():
            rows.append({"tokens": n, "provider": key, "peak_bytes": memory.peak_bytes(fn),
                         "inputs_bytes": 3 * q.nbytes})
    return rows


def loglog_slope(n, seconds) -> float:
    """Exponent b of ``seconds ~ n^b`` fitted over the sizes given."""
    n, s = np.asarray(n, float), np.asarray(seconds, float)
    if n.size < 2:
        raise ValueError("a slope needs at least two sizes; pass more sizes")
    return float(np.polyfit(np.log(n), np.log(s), 1)[0])


def decode_race(contexts, heads: int = 9, kv_heads: int = 3, head_dim: int = 64, block: int = 64,
                keep: float = 0.125, sink: int = 1, repeats: int = 5, seed: int = 0) -> perf.Benchmark:
    """One decode step's attention against a cold cache of ``n`` tokens: block top-k (ours, ``keep``
    of the blocks, ``sink`` of them the first ones), the same kernel over every block, and SDPA over
    the whole cache. Bytes are the keys, values and block means each one reads."""
    def case(n):
        g = torch.Generator().manual_seed(seed + n)
        q = torch.randn(heads, head_dim, generator=g)
        k, v = (torch.randn(kv_heads, n, head_dim, generator=g) for _ in range(2))
        return q, k, v, reference.block_summaries(k, n, block)

    def topk_of(n, share):
        return n // block if share >= 1 else max(0, math.ceil(share * (n // block)) - sink)

    def ours(share):
        def make(n):
            q, k, v, s = case(n)
            t = topk_of(n, share)
            return lambda: ops.topk_decode(q, k, v, s, n, block, t, sink)
        return make

    def sdpa(n):
        q, k, v, _ = case(n)
        qg = q.view(1, kv_heads, heads // kv_heads, head_dim)
        return lambda: torch.nn.functional.scaled_dot_product_attention(qg, k[None], v[None])

    row = kv_heads * head_dim * 4
    full_bytes = lambda n: 2.0 * n * row                                       # noqa: E731

    def topk_bytes(n):
        read = min(topk_of(n, keep) + sink, n // block) * block + n % block
        return 2.0 * read * row + (n // block) * row

    return perf.Benchmark(
        name=f"decode attention, {heads}/{kv_heads} heads x {head_dim}", x="context", x_values=list(contexts),
        providers=[perf.Provider("topk", f"ours: block top-k ({keep:.3g} of {block}-token blocks)", ours(keep),
                                 ours=True, backend=ops.backend(), bytes_moved=topk_bytes),
                   perf.Provider("all", "ours: every block (same kernel)", ours(1.0), ours=True,
                                 backend=ops.backend(), bytes_moved=lambda n: full_bytes(n) + (n // block) * row),
                   perf.Provider("sdpa", "torch SDPA, whole cache", sdpa, backend="torch", bytes_moved=full_bytes)],
        baseline="sdpa", cold=True, working_set=lambda n: int(full_bytes(n)), repeats=repeats)
