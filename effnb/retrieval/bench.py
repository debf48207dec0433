"""The re-ranking race: our MaxSim kernels against plain torch on one candidate set.

x is the number of candidates C (d fixed): re-ranking scores the few documents
a first stage returned, so the question is how the time grows with C, and
whether a fused pass over ragged documents beats padding them into one batched
matmul. Inputs are built once per provider (warm: a small candidate set stays
in cache); the padded peer gathers and pads the candidates inside the timed call,
as it must when the candidates change with every query.
"""
from __future__ import annotations

import torch

from .. import perf
from .. import threads as threads_mod
from . import ops, reference
from .index import PackedIndex


def corpus(docs: int, d: int, doc_len=(20, 180), seed: int = 0) -> list[torch.Tensor]:
    """``docs`` random documents of ``doc_len[0]..doc_len[1]`` unit-norm token vectors (as encoders give)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(doc_len[0], doc_len[1] + 1, (docs,), generator=g).tolist()
    return [torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1) for n in lens]


def rerank_race(m: int = 32, d: int = 128, docs: int = 100, doc_len=(20, 180), repeats: int = 5, rounds: int = 2,
                threads: int = 2, counts=None, seed: int = 0) -> perf.Benchmark:
    """A :class:`effnb.perf.Benchmark` over C candidates (``counts``, default docs/10, docs/3 and docs) of
    a ``docs``-document corpus, a query of ``m`` tokens of dimension ``d``: ours fp32 and int8 against the
    per-document torch loop and the padded batched matmul (the baseline). Every provider runs on
    ``threads`` threads (torch's and our OpenMP's, set by each factory). FLOPs: 2 m d (sum of the
    candidates' lengths) per call, for every provider."""
    n_threads = threads_mod.validate_threads(threads)
    counts = sorted({max(1, docs // 10), max(1, docs // 3), docs} if counts is None else set(counts))
    if not counts or counts[0] < 1 or counts[-1] > docs:
        raise ValueError(f"counts={counts}: pass candidate counts from 1 to docs={docs}")
    vecs = corpus(docs, d, doc_len, seed)
    index = {"fp32": PackedIndex.from_list(vecs), "int8": PackedIndex.from_list(vecs, "int8")}
    g = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(docs, generator=g)                 # a first stage's ranking: any order
    q = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=1)
    lengths = index["fp32"].lengths

    def cand_of(c: int) -> torch.Tensor:
        return order[:c].clone()

    def make(run, dtype):
        def factory(c):
            threads_mod.set_threads(n_threads)
            qc, ic, cc = q.clone(), index[dtype], cand_of(c)
            return lambda: run(qc, ic, cc)
        return factory

    cpp = ops.backend()
    providers = [
        perf.Provider("ours-fp32", "effnb MaxSim fp32", make(ops.maxsim, "fp32"), ours=True, backend=cpp),
        perf.Provider("ours-int8", "effnb MaxSim int8", make(ops.maxsim, "int8"), ours=True, backend=cpp),
        perf.Provider("loop", "torch loop per document", make(reference.maxsim, "fp32")),
        perf.Provider("padded", "torch padded matmul", make(reference.maxsim_padded, "fp32")),
    ]
    return perf.Benchmark(
        name=f"MaxSim re-ranking, m={m}, d={d}, {docs} documents, {n_threads} threads", x="candidates",
        x_values=counts, providers=providers, baseline="padded", unit="GFLOP/s",
        flops=lambda c: 2.0 * m * d * float(lengths[cand_of(c)].sum()), repeats=repeats, rounds=rounds)
