"""The chapter's races as :class:`effnb.perf.Benchmark` specs: who runs, on what, counting which bytes.

Each builder states the providers once (ours and the peers a user could pick
instead), the baseline and the work per call; ``.run()`` measures them in one
interleaved sitting and the :class:`effnb.perf.Result` gives the ratios to the
baseline and to the fastest peer. Inputs are made once per x and shared by its
providers; cold benchmarks give every call its own copy of the weight.
"""
from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .. import bench, perf, roofline
from .formats import kept, magnitude_mask, sparsify
from .layers import conv1x1, sparsify_module
from .ops import backend, matmul

MOBILENET_1X1 = [  # (H=W, Cin, Cout) of MobileNet-v1's pointwise layers at 224x224 input
    (112, 32, 64), (56, 128, 128), (28, 256, 256), (14, 512, 512), (7, 1024, 1024)]

OURS = "effnb CSR"
DENSE = "torch dense F.linear"


class LinearCase(NamedTuple):
    """One point of the Linear sweep: an (n x k) weight at ``sparsity``, times M rows of activations."""
    n: int
    k: int
    m: int
    sparsity: float

    def label(self) -> str:
        return f"{self.n}x{self.k}, M={self.m}, s={self.sparsity:g}"


def _last(build):
    """``build(x)``, remembered for the last x only: the providers of one x share its inputs."""
    memo: dict = {}

    def get(x):
        if x not in memo:
            memo.clear()
            memo[x] = build(x)
        return memo[x]
    return get


def _on_copy(weight, run):
    """A call of ``run`` on a fresh copy of ``weight``: a cold benchmark makes one per copy it rotates."""
    w = weight.copy() if hasattr(weight, "indptr") else weight.clone()
    return lambda: run(w)


def _quiet(convert):
    """``convert()`` without torch's "sparse CSR/BSR is in beta" notice: the peer is what users get."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        return convert()


def _bsr_works() -> bool:
    """Whether this torch build multiplies a BSR matrix by a dense one on the CPU."""
    try:
        _quiet(lambda: torch.zeros(8, 8).to_sparse_bsr((4, 4)) @ torch.zeros(8, 2))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def linear_benchmark(shapes: list, ms: list, sparsities: list, *, repeats: int = 5, seed: int = 0,
                     bsr: bool = False, rounds: int = 1) -> perf.Benchmark:
    """Sparse Linear against dense ``F.linear`` and torch's and scipy's CSR, cold weights, one x per
    (shape, M, sparsity). Each provider counts its own weight bytes (values, indices, pointers) and its
    own FLOPs (2 M per stored weight). ``bsr=True`` adds torch's BSR, pruned in 4x4 blocks to the same
    sparsity (the unstructured pattern has no empty blocks), where this torch supports it. Ours is the
    default layout: at M = 1 the SpMV reads column blocks where they are fewer bytes than CSR
    (:func:`~effnb.sparse.formats.sparsify` decides per weight), and counts the bytes of what it read.
    ``rounds`` sweeps, each provider keeping its fastest: each sweep builds its weights again."""
    import scipy.sparse as sps
    read: dict = {}   # per case: the bytes our kernel reads (values, indices, pointers of the layout it runs)

    def build(c: LinearCase):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(c.n, c.k, generator=g)
        sw = sparsify(w, c.sparsity, spmv="auto" if c.m == 1 else "csr")   # blocks serve the vector only
        read[c] = sw.read_bytes(c.m)
        wd = sw.to_dense()                  # the pruned weight, dense
        x = torch.randn(c.m, c.k, generator=g)
        b = x[0].contiguous() if c.m == 1 else x.t().contiguous()
        out = SimpleNamespace(x=x, b=b, bn=b.numpy(), sw=sw, wd=wd, tcsr=_quiet(wd.to_sparse_csr),
                              scsr=sps.csr_matrix(wd.numpy()))
        if bsr:
            blocked = w.view(c.n // 4, 4, c.k // 4, 4)
            keep = magnitude_mask(blocked.pow(2).sum((1, 3)), c.sparsity)
            out.bsr = _quiet(lambda: (blocked * keep[:, None, :, None]).view(c.n, c.k).to_sparse_bsr((4, 4)))
            out.bt = x.t().contiguous()
        return out
    get = _last(build)

    def nnz(c):
        return kept(c.n * c.k, c.sparsity)

    def blocks(c):
        return kept((c.n // 4) * (c.k // 4), c.sparsity)

    def ours_bytes(c):
        if c not in read:
            get(c)
        return read[c]

    def provider(key, make, bytes_moved, stored, **kw):
        return perf.Provider(key, key, make, bytes_moved=bytes_moved, flops=lambda c: 2 * c.m * stored(c), **kw)

    providers = [
        provider(DENSE, lambda c: _on_copy(get(c).wd, lambda W: F.linear(get(c).x, W)),
                 lambda c: 4 * c.n * c.k, lambda c: c.n * c.k),
        # through the public entry point: the C++ kernel, or the reference when the family is not built
        provider(OURS, lambda c: _on_copy(get(c).sw, lambda W: matmul(W, get(c).b)),
                 ours_bytes, nnz, ours=True, backend=backend()),
        provider("torch CSR", lambda c: _on_copy(get(c).tcsr, lambda W: W @ get(c).b),
                 lambda c: nnz(c) * (4 + 8) + 8 * (c.n + 1), nnz),
        provider("scipy CSR", lambda c: _on_copy(get(c).scsr, lambda W: W @ get(c).bn),
                 lambda c: nnz(c) * (4 + 4) + 4 * (c.n + 1), nnz, backend="scipy"),
    ]
    if bsr and _bsr_works():
        providers.append(provider("torch BSR 4x4", lambda c: _on_copy(get(c).bsr, lambda W: W @ get(c).bt),
                                  lambda c: blocks(c) * (64 + 8) + 8 * (c.n // 4 + 1), lambda c: 16 * blocks(c)))
    cases = [LinearCase(int(n), int(k), int(m), float(s)) for n, k in shapes for m in ms for s in sparsities]
    return perf.Benchmark(name="sparse Linear vs dense F.linear, cold fp32 weights", x="case", x_values=cases,
                          providers=providers, baseline=DENSE, cold=True, repeats=repeats, rounds=rounds,
                          x_label=LinearCase.label)


def conv_benchmark(shapes: list, sparsity: float, *, repeats: int = 5, seed: int = 0) -> perf.Benchmark:
    """Sparse 1x1 convolutions (unstructured and 1x4) against torch's dense forms of the same layer
    (NCHW and channels-last ``conv2d``, and the GEMM W @ x[Cin, HW]) and our same-code dense kernel, on
    MobileNet-v1 shapes at batch 1, activations warm. GFLOP/s count the dense layer's FLOPs for every
    provider, so they compare times on one scale."""
    def build(shape):
        hw, cin, cout = shape
        g = torch.Generator().manual_seed(seed + list(shapes).index(shape))
        w = torch.randn(cout, cin, 1, 1, generator=g)
        x = torch.randn(1, cin, hw, hw, generator=g)
        sw = sparsify(w, sparsity)
        wd = sw.to_dense()
        cl = torch.channels_last
        return SimpleNamespace(x=x, sw=sw, sg=sparsify(w, sparsity, "1x4"), d4=sparsify(w, None, "dense"),
                               w4=wd.view(cout, cin, 1, 1), x_cl=x.contiguous(memory_format=cl),
                               w_cl=wd.view(cout, cin, 1, 1).contiguous(memory_format=cl),
                               w2=wd, x2=x.view(cin, hw * hw))
    get = _last(build)
    ours = backend()
    providers = [
        perf.Provider("torch dense conv2d", "torch conv2d (NCHW)", lambda s: lambda i=get(s): F.conv2d(i.x, i.w4)),
        perf.Provider("torch conv2d channels_last", "torch conv2d (channels_last)",
                      lambda s: lambda i=get(s): F.conv2d(i.x_cl, i.w_cl)),
        perf.Provider("torch matmul", "torch W @ x[Cin, HW]", lambda s: lambda i=get(s): torch.mm(i.w2, i.x2)),
        perf.Provider("effnb dense same-code", "effnb dense same-code", ours=True, backend=ours,
                      make=lambda s: lambda i=get(s): conv1x1(i.x, i.d4)),
        perf.Provider("effnb sparse 1x1", "effnb sparse 1x1", ours=True, backend=ours,
                      make=lambda s: lambda i=get(s): conv1x1(i.x, i.sw)),
        perf.Provider("effnb 1x4 1x1", "effnb 1x4 1x1", ours=True, backend=ours,
                      make=lambda s: lambda i=get(s): conv1x1(i.x, i.sg)),
    ]
    return perf.Benchmark(name=f"MobileNet-v1 1x1 convs, {sparsity:.0%} sparse, batch 1 (dense-equivalent)",
                          x="1x1 conv (HxWxCin->Cout)", x_values=[tuple(s) for s in shapes], providers=providers,
                          baseline="torch dense conv2d", unit="GFLOP/s", repeats=repeats,
                          flops=lambda s: 2 * s[0] * s[0] * s[1] * s[2],
                          x_label=lambda s: f"{s[0]}x{s[0]}x{s[1]}->{s[2]}")


def group_benchmark(n: int, k: int, ms: list, sparsity: float, *, repeats: int = 5, seed: int = 0) -> perf.Benchmark:
    """1x4 group-sparse and unstructured CSR against the dense kernel that runs the 1x4 kernel's own loops
    (the baseline, as SparseByteNN compares within one engine) and dense ``F.linear``, cold weights."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    layouts = {"effnb dense same-code": sparsify(w, None, "dense"), "effnb 1x4": sparsify(w, sparsity, "1x4"),
               "effnb CSR": sparsify(w, sparsity)}

    def activations(m):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + m))
        return SimpleNamespace(x=x, b=x[0].contiguous() if m == 1 else x.t().contiguous())
    get = _last(activations)

    def ours(key):
        return perf.Provider(key, key, lambda m: _on_copy(layouts[key], lambda W: matmul(W, get(m).b)),
                             ours=True, backend=backend(), bytes_moved=lambda m: layouts[key].read_bytes(m),
                             flops=lambda m: 2 * m * layouts[key].nnz)
    dense = layouts["effnb dense same-code"].to_dense()
    torch_dense = perf.Provider(DENSE, DENSE, lambda m: _on_copy(dense, lambda W: F.linear(get(m).x, W)),
                                bytes_moved=lambda m: 4 * n * k, flops=lambda m: 2 * m * n * k)
    return perf.Benchmark(name=f"{sparsity:.0%} 1x4 groups vs the same-code dense kernel, {n}x{k}, cold",
                          x="M", x_values=list(ms), providers=[*map(ours, layouts), torch_dense],
                          baseline="effnb dense same-code", cold=True, repeats=repeats)


def sparse_twin(net, pattern: str):
    """A copy of a trained ``net`` whose pruned layers run on our kernels (its zeros kept, nothing re-pruned)."""
    twin = copy.deepcopy(net).eval()
    sparsify_module(twin, None, pattern)
    return twin


def _infer(model, x):
    with torch.no_grad():
        return model(x)


def same_predictions(nets: dict, x) -> dict:
    """Per label: whether the sparse twin of ``nets[label] = (net, pattern)`` predicts the same classes."""
    return {label: bool(torch.equal(_infer(sparse_twin(net, p), x).argmax(1), _infer(net.eval(), x).argmax(1)))
            for label, (net, p) in nets.items()}


def cnn_latency_benchmark(nets: dict, x, *, repeats: int = 5) -> perf.Benchmark:
    """One forward pass (warm, gradients off) of each trained net on torch's dense layers and of its
    sparse twin on our kernels; ``nets`` maps a label to (net, pattern)."""
    twin = _last(lambda label: sparse_twin(*nets[label]))
    providers = [perf.Provider("torch", "torch dense layers", lambda lb: lambda n=nets[lb][0].eval(): _infer(n, x)),
                 perf.Provider("effnb", "effnb sparse kernels", lambda lb: lambda n=twin(lb): _infer(n, x),
                               ours=True, backend=backend())]
    return perf.Benchmark(name=f"digits CNN, batch of {len(x)}", x="network", x_values=list(nets),
                          providers=providers, baseline="torch", unit="s", repeats=repeats)


# ---------------------------------------------------------------- reading the Linear sweep

def by_case(result, over: str | None = None):
    """Every provider's speed-up over ``over`` (default the baseline) at each :class:`LinearCase`, tidy,
    from ``Result.ratio``: one row per provider and case."""
    import pandas as pd
    over = over or result.spec.baseline
    cases = {result.spec.x_label(c): c for c in result.spec.x_values}
    rows = [{"provider": key, **cases[label]._asdict(), "speedup": float(r)}
            for key in result.keys() if key != over for label, r in result.ratio(key, over).items()]
    return pd.DataFrame(rows)


def break_even(sparsities, speedup) -> float:
    """Lowest sparsity where the speed-up reaches 1, linearly interpolated; nan if never, 0 if always."""
    s, r = np.asarray(sparsities, float), np.asarray(speedup, float)
    order = np.argsort(s)
    s, r = s[order], r[order]
    if r[0] >= 1:
        return float(s[0])
    for i in range(1, len(s)):
        if r[i] >= 1 > r[i - 1]:
            return float(s[i - 1] + (1 - r[i - 1]) * (s[i] - s[i - 1]) / (r[i] - r[i - 1]))
    return float("nan")


def break_even_table(result, of: str = OURS):
    """Per weight shape and M: the sparsity where ``of`` starts beating the baseline (nan: never)."""
    import pandas as pd
    sp = by_case(result)
    rows = [{"shape": f"{n}x{k}", "M": m, "break_even": break_even(g.sparsity, g.speedup)}
            for (n, k, m), g in sp[sp.provider == of].groupby(["n", "k", "m"], sort=False)]
    return pd.DataFrame(rows)


def bytes_of(result, key: str, x) -> float:
    """The weight bytes provider ``key`` counts at ``x`` (values, indices, pointers)."""
    p = next(q for q in result.spec.providers if q.key == key)
    return float((p.bytes_moved or result.spec.bytes_moved)(x))


def roof_pct(result, key: str, x, limits: dict, bandwidth: str = "read_gbps") -> float:
    """% of this machine's limit that provider ``key`` reached at ``x`` (``Result.table`` says it for ours)."""
    p = next(q for q in result.spec.providers if q.key == key)
    count_f, count_b = p.flops or result.spec.flops, p.bytes_moved or result.spec.bytes_moved
    return roofline.bound(count_f(x), count_b(x), result.time(key, x), limits, bandwidth)["pct_of_limit"]


# ---------------------------------------------------------------- did the timer measure the work?

def _model_seconds(result, p, x, limits: dict) -> float:
    """Provider ``p``'s roofline time at ``x``: its bytes over the read bandwidth or its FLOPs over the peak."""
    count_f, count_b = p.flops or result.spec.flops, p.bytes_moved or result.spec.bytes_moved
    return max(count_b(x) / (limits["read_gbps"] * 1e9) if count_b else 0.0,
               count_f(x) / (limits["peak_gflops"] * 1e9) if count_f else 0.0)


def measured_the_work(result, xs, limits: dict, keys=None) -> tuple[bool, str]:
    """Whether each provider's timings over ``xs`` follow its work, taken as its roofline time: where the
    work spans 2x or more the time must grow with it (:func:`effnb.bench.grows_with_work`), where it
    hardly changes (dense ``F.linear`` across sparsities) the rates must agree (:func:`effnb.bench.agrees_with`).
    ``(ok, reason)``, the first failure named, for a claim's ``valid=``."""
    for p in result.spec.providers:
        if keys is not None and p.key not in keys:
            continue
        mine = [x for x in xs if p.only is None or p.only(x)]
        if len(mine) < 2:
            continue
        work = np.array([_model_seconds(result, p, x, limits) for x in mine])
        secs = np.array([result.time(p.key, x) for x in mine])
        if work.max() / work.min() >= 2:
            ok, why = bench.grows_with_work(secs, work)
        else:
            rate = work / secs
            ok, why = bench.agrees_with(rate.min(), rate.max(), f"{p.label} (same work at every point)")
        if not ok:
            return False, f"{p.label}: {why}"
    return True, ""


def conv_validity(result, sparsity: float, limits: dict, slack: float = 1.5) -> tuple[bool, str]:
    """``(ok, reason)`` for the 1x1 conv race, whose MobileNet shapes do nearly the same work (a growth
    check has no range to work with): torch's dense forms compute the same GEMM and must agree with each
    other at every shape (:func:`effnb.bench.agrees_with`), and none of ours may do its useful FLOPs
    faster than ``slack`` times the machine's measured peak: a kernel that beats the roof was not timed."""
    peers = [p for p in result.spec.providers if not p.ours]
    for x in result.spec.x_values:
        rates = sorted(result.spec.flops(x) / result.time(p.key, x) for p in peers)
        ok, why = bench.agrees_with(rates[0], rates[-1], f"torch's dense forms of {result.spec.x_label(x)}")
        if not ok:
            return False, why
        for p in result.spec.providers:
            kept_ = 1.0 if not p.ours or "dense" in p.key else 1.0 - sparsity
            rate = kept_ * result.spec.flops(x) / result.time(p.key, x) / 1e9
            if rate > slack * limits["peak_gflops"]:
                return False, (f"invalid measurement: {p.label} did its useful FLOPs at {rate:.0f} GFLOP/s at "
                               f"{result.spec.x_label(x)}, above {slack:g}x the measured peak of "
                               f"{limits['peak_gflops']:.0f}: the timer did not measure the work")
    return True, ""
