"""The chapter's race as a :class:`effnb.perf.Benchmark`: one gated FFN of SmolLM2-135M at batch-1 decode.

At batch 1 the FFN is three memory-bound GEMVs, so CATS pays off only if
skipping a neuron really skips reading its up row and down column. The race
is cold, as in decoding, where each layer's weights were evicted by the
twenty-nine layers read since: every call runs the next of ``layers``
distinct weight sets (SmolLM2 has 30 FFNs, 318 MB of fp32 weights, ten times
a 32 MiB L3). Providers: our CATS kernel, the same code keeping every neuron,
torch's dense FFN, and the fastest plain-torch CATS we found (gather the
active rows with ``index_select``; gathering ``down[:, idx]`` columns, or
summing ``down_t`` rows with ``embedding_bag``, was slower or no faster).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import perf
from . import ops

DIM, FFN, LAYERS = 576, 1536, 30   # SmolLM2-135M: hidden size, intermediate size, layers


class FFNWeights(NamedTuple):
    """One layer's nn.Linear weights: gate, up (ffn, dim), down (dim, ffn), and down_t = down.t() stored."""
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    down_t: torch.Tensor


def random_ffn(dim: int, ffn: int, generator: torch.Generator) -> FFNWeights:
    """Weights scaled like a trained layer's (unit-variance outputs), so silu works in its curved range."""
    gate, up = (torch.randn(ffn, dim, generator=generator) / dim ** 0.5 for _ in range(2))
    down = torch.randn(dim, ffn, generator=generator) / ffn ** 0.5
    return FFNWeights(gate, up, down, down.t().contiguous())


def threshold_for(x: torch.Tensor, gate: torch.Tensor, sparsity: float) -> float:
    """The CATS threshold that leaves ``round(sparsity * ffn)`` of one token's neurons inactive: halfway
    between the magnitudes either side of the cut, so rounding cannot move a neuron across it."""
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x has shape {tuple(x.shape)}; pass one token, (1, dim)")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r}: pass a fraction in [0, 1)")
    mags = F.silu(x.double() @ gate.double().t()).abs().flatten().sort().values
    cut = round(sparsity * mags.numel())
    return float(mags[0]) / 2 if cut == 0 else float(mags[cut - 1] + mags[cut]) / 2


def torch_dense(x: torch.Tensor, w: FFNWeights) -> torch.Tensor:
    """The FFN as the model runs it: three F.linear."""
    return F.linear(F.silu(F.linear(x, w.gate)) * F.linear(x, w.up), w.down)


def torch_gathered(x: torch.Tensor, w: FFNWeights, threshold: float) -> torch.Tensor:
    """CATS in plain torch: the dense gate, then up and down_t gathered at the active neurons (one token)."""
    a = F.silu(F.linear(x, w.gate))
    idx = (a[0].abs() > threshold).nonzero().squeeze(1)
    h = a.index_select(1, idx) * F.linear(x, w.up.index_select(0, idx))
    return h @ w.down_t.index_select(0, idx)


def ffn_benchmark(sparsities=(0.0, 0.5, 0.7, 0.9), dim: int = DIM, ffn: int = FFN, layers: int = LAYERS,
                  repeats: int = 5, seed: int = 0) -> perf.Benchmark:
    """Batch-1 decode of one FFN, cold: ours against torch dense and torch gathered, x = sparsity.

    Each layer gets its own threshold for the token, so exactly the given fraction of its neurons is
    inactive. The CATS providers count the bytes they read (the whole gate, the active fraction of up
    and down); the dense ones all three matrices. The baseline is torch dense; the table's
    "vs fastest peer" compares with whichever torch provider was faster at that sparsity."""
    g = torch.Generator().manual_seed(seed)
    stack = [random_ffn(dim, ffn, g) for _ in range(layers)]
    x = torch.randn(1, dim, generator=g)
    thresholds = {s: [threshold_for(x, w.gate, s) for w in stack] for s in sparsities}
    turn = itertools.count()  # one counter for every call: consecutive calls never share a layer

    def cycling(run):
        def make(s):
            ts = thresholds[s]

            def call():
                k = next(turn) % layers
                return run(stack[k], ts[k])
            return call
        return make

    matrix = 4.0 * dim * ffn
    io = 8.0 * dim                                      # x in, y out

    def cats_bytes(s):
        return matrix * (1 + 2 * (ffn - round(s * ffn)) / ffn) + io

    def dense_bytes(s):
        return 3 * matrix + io

    providers = [
        perf.Provider("ours", "effnb CATS", cycling(lambda w, t: ops.cats_ffn(x, w.gate, w.up, w.down_t, t)),
                      ours=True, backend=ops.backend(), bytes_moved=cats_bytes),
        perf.Provider("ours dense", "effnb CATS, every neuron (same code)",
                      cycling(lambda w, t: ops.cats_ffn(x, w.gate, w.up, w.down_t, -1.0)),
                      ours=True, backend=ops.backend(), bytes_moved=dense_bytes),
        perf.Provider("torch dense", "torch dense (3x F.linear)", cycling(lambda w, t: torch_dense(x, w)),
                      bytes_moved=dense_bytes),
        perf.Provider("torch gathered", "torch CATS (index_select)",
                      cycling(lambda w, t: torch_gathered(x, w, t)), bytes_moved=cats_bytes),
    ]
    return perf.Benchmark(
        name=f"CATS FFN {dim}x{ffn}, batch-1 decode, cold ({layers} layers)", x="sparsity",
        x_values=list(sparsities), providers=providers, baseline="torch dense", cold=True,
        working_set=lambda s: layers * 3 * matrix, repeats=repeats, x_label=lambda s: f"{s:.0%}")
