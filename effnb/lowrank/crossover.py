"""Where Linformer starts to beat the low-rank Transformer (LRT), measured and counted.

Greenformers (Cahyawijaya, after Winata et al.'s LRT) recommends LRT for sequences up to 512 tokens and Linformer beyond. LRT
shrinks every linear (cost linear in ``n``) and keeps ``n^2`` attention; Linformer keeps the linears and
makes attention linear in ``n``. So LRT wins at short ``n``, Linformer at long ``n``, and the crossing
depends on the rank, ``k`` and the model's widths. :func:`layer_race` times the four variants on the real
MiniLM-L6 encoder; :func:`flops` counts them; :func:`crossover` puts the measured crossing beside the
counted one and the paper's 512.

What is timed: the 6-layer encoder stack, ``bert.encoder(hidden_states)``, on random hidden states, at
every ``n``. MiniLM's position embeddings stop at 512 tokens, so the whole model cannot run longer
sequences; timing the stack at EVERY ``n`` keeps the x values comparable (the embedding lookup is
``O(n * hidden)`` and the same for all variants).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import perf
from .factorize import factorize_model, worth_factorizing
from .linformer import linformer_model

VARIANTS = ("dense", "lrt", "linformer", "lrt+linformer")
PAPER_N = 512                     # Greenformers' recommended boundary
HIDDEN, FFN, HEADS, LAYERS = 384, 1536, 12, 6   # MiniLM-L6


def _linear(n: int, out_f: int, in_f: int, rank: int | None) -> float:
    """2 FLOPs per multiply-add; a factorized linear only where its factors are smaller (as factorize_model)."""
    if rank is not None and worth_factorizing(out_f, in_f, rank):
        return 2.0 * n * rank * (out_f + in_f)
    return 2.0 * n * out_f * in_f


def _linears(n: int, rank: int | None, hidden: int, ffn: int) -> float:
    """Q, K, V, attention output and the FFN's two linears."""
    return 4 * _linear(n, hidden, hidden, rank) + _linear(n, ffn, hidden, rank) + _linear(n, hidden, ffn, rank)


def flops(n: int, variant: str, rank: int = 128, k: int = 256, hidden: int = HIDDEN, ffn: int = FFN,
          batch: int = 1) -> float:
    """Matmul FLOPs of ONE encoder layer on ``batch`` sequences of ``n`` tokens.

    Linears: Q, K, V, attention output (``hidden x hidden``) and the FFN's two (``hidden x ffn``).
    Attention: ``Q K^T`` and ``P V``, ``2 n^2 hidden`` each (dense) or ``2 n k hidden`` each plus the two
    projections ``E K``, ``F V`` at ``2 k n hidden`` each (Linformer). Softmax, GELU, LayerNorm and biases
    are left out: ``O(n hidden)`` or ``O(heads n^2)``, a few % at MiniLM's widths."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    lin = _linears(n, rank if variant in ("lrt", "lrt+linformer") else None, hidden, ffn)
    if variant in ("linformer", "lrt+linformer"):
        att = 4.0 * n * k * hidden + 4.0 * k * n * hidden
    else:
        att = 4.0 * n * n * hidden
    return batch * (lin + att)


def counted_crossover(rank: int = 128, k: int = 256, hidden: int = HIDDEN, ffn: int = FFN) -> float:
    """The ``n*`` where the counted FLOPs of LRT and Linformer are equal.

    ``lrt(n) = n L_r + 4 n^2 h`` and ``linformer(n) = n L + 8 n k h`` (``L``, ``L_r``: linear FLOPs per
    token, dense and factorized), so ``n* = (L - L_r) / (4 h) + 2 k``: beyond it Linformer does less work."""
    return (_linears(1, None, hidden, ffn) - _linears(1, rank, hidden, ffn)) / (4.0 * hidden) + 2.0 * k


def memory(n: int, variant: str, k: int = 256, batch: int = 1, heads: int = HEADS, bytes_per: int = 4) -> int:
    """Bytes of one layer's fp32 attention scores as the maths defines them: ``B H n n`` (dense, LRT) or
    ``B H n k`` (Linformer). A count, not a measurement: torch's fused CPU SDPA works in blocks and never
    holds all ``n x n`` at once, the eager path and the paper's accounting do."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    cols = k if "linformer" in variant else n
    return int(batch * heads * n * cols * bytes_per)


def layer_race(seq_lens: Sequence[int] = (128, 256, 512, 1024, 2048, 4096), rank: int = 128, k: int = 256,
               batch: int = 1, repeats: int = 5, rounds: int = 2, threads: int | None = None,
               bert=None, seed: int = 0) -> perf.Benchmark:
    """Dense MiniLM-L6 (baseline) against LRT at ``rank``, Linformer at ``k`` and both, one forward of the
    6-layer encoder stack on ``batch`` random ``[n, 384]`` hidden states (module doc: why the stack).

    Unit: seconds. The variants exist to do LESS work, so GFLOP/s would rank them backwards (a variant
    that skips FLOPs can finish first at a lower rate); each provider still carries its own FLOP count,
    so the frame's ``gflops`` column says how well each uses the machine. ``threads`` (default: torch's
    current count) is set with ``torch.set_num_threads`` before each provider is measured and stays set.
    ``bert`` defaults to the pretrained MiniLM (:func:`effnb.models.minilm.load_minilm`)."""
    from ..threads import validate_threads
    seq_lens = [int(n) for n in seq_lens]
    threads = validate_threads(threads) if threads is not None else torch.get_num_threads()
    if bert is None:
        from ..models.minilm import load_minilm
        bert = load_minilm()[0].auto_model
    bert.eval()
    lrt, report = factorize_model(bert, rank=rank)
    n_max = max(seq_lens)
    models = {"dense": bert, "lrt": lrt, "linformer": linformer_model(bert, k, n_max, seed),
              "lrt+linformer": linformer_model(lrt, k, n_max, seed)}
    cfg = bert.config
    hidden, ffn, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers

    def provider(key: str):
        encoder = models[key].eval().encoder

        def make(n: int):
            torch.set_num_threads(threads)
            g = torch.Generator().manual_seed(seed + n)   # the same input for every provider at this n
            x = torch.randn(batch, n, hidden, generator=g)

            def call():
                with torch.inference_mode():
                    return encoder(x).last_hidden_state
            return call
        return make

    def count(key: str):
        return lambda n: layers * flops(n, key, rank, k, hidden, ffn, batch)

    labels = {"dense": "dense MiniLM (sdpa)", "lrt": f"LRT rank {rank}", "linformer": f"Linformer k={k}",
              "lrt+linformer": f"LRT {rank} + Linformer {k}"}
    providers = [perf.Provider(key, labels[key], provider(key), ours=key != "dense", backend="torch",
                               flops=count(key)) for key in VARIANTS]
    dense_kept = int((~report["factorized"]).sum())
    notes = ["encoder stack only, on random hidden states at every n: MiniLM's position embeddings stop at 512",
             "Linformer's projections are untrained random Gaussians: time and memory only",
             f"LRT keeps {dense_kept} of {len(report)} linears dense where rank {rank} would not shrink them"]
    spec = perf.Benchmark(name=f"MiniLM-L6 encoder, batch {batch}, {threads} threads", x="n", x_values=seq_lens,
                          providers=providers, baseline="dense", unit="s", repeats=repeats, rounds=rounds,
                          notes=notes)
    spec.lowrank = {"rank": rank, "k": k, "hidden": hidden, "ffn": ffn}   # what crossover() needs to count
    return spec


def _times(result) -> "object":
    """``[n x provider]`` median seconds from a :class:`perf.Result` or any frame with provider/size/median_s."""
    df = getattr(result, "df", result)
    return df.pivot_table(index="size", columns="provider", values="median_s", aggfunc="min").sort_index()


def crossover(result, rank: int | None = None, k: int | None = None, slow: str = "lrt",
              fast: str = "linformer") -> dict:
    """Where ``fast`` (Linformer) starts to beat ``slow`` (LRT): measured, counted and the paper's 512.

    ``measured_n``: the crossing interpolated linearly in ``log n`` on ``log(t_fast / t_slow)`` between the
    last measured n where ``fast`` is slower and the first where it is faster (NaN, with ``reason``, when
    it is faster everywhere or nowhere in the range). ``first_faster_n``: that first measured n.
    ``counted_n``: :func:`counted_crossover` at the same rank and k (read from a :func:`layer_race`
    result when not passed). ``table``: per n both times, their ratio and both FLOP counts."""
    import pandas as pd
    meta = getattr(getattr(result, "spec", None), "lowrank", {})
    rank = rank if rank is not None else meta.get("rank")
    k = k if k is not None else meta.get("k")
    if rank is None or k is None:
        raise ValueError("pass rank= and k= (they are read from a layer_race result, not found here)")
    hidden, ffn = meta.get("hidden", HIDDEN), meta.get("ffn", FFN)
    t = _times(result)
    missing = sorted({slow, fast} - set(t.columns))
    if missing:
        raise ValueError(f"result has no provider {missing}; it has {list(t.columns)}")
    t = t[[slow, fast]].dropna()
    ns = [int(n) for n in t.index]
    log_ratio = [math.log(b / a) for a, b in zip(t[slow], t[fast])]   # < 0: fast wins
    table = pd.DataFrame({"n": ns, f"{slow} s": t[slow].to_numpy(), f"{fast} s": t[fast].to_numpy(),
                          f"{slow} / {fast}": (t[slow] / t[fast]).to_numpy(),
                          f"{slow} GFLOP": [flops(n, slow, rank, k, hidden, ffn) / 1e9 for n in ns],
                          f"{fast} GFLOP": [flops(n, fast, rank, k, hidden, ffn) / 1e9 for n in ns]})
    out = {"measured_n": math.nan, "first_faster_n": None, "reason": "", "counted_n": math.nan,
           "paper_n": PAPER_N, "rank": rank, "k": k, "table": table}
    if {slow, fast} == {"lrt", "linformer"}:
        out["counted_n"] = counted_crossover(rank, k, hidden, ffn)
    wins = [i for i, r in enumerate(log_ratio) if r < 0]
    if not ns:
        out["reason"] = "no n measured for both providers"
    elif not wins:
        out["reason"] = f"{fast} is slower than {slow} at every measured n ({ns[0]}..{ns[-1]})"
    elif wins[0] == 0:
        out["first_faster_n"] = ns[0]
        out["reason"] = f"{fast} is already faster at the smallest measured n={ns[0]}: the crossing is below it"
    else:
        i = wins[0]
        a, b = log_ratio[i - 1], log_ratio[i]
        la, lb = math.log(ns[i - 1]), math.log(ns[i])
        out["first_faster_n"] = ns[i]
        out["measured_n"] = math.exp(la + (lb - la) * a / (a - b))
        later = [j for j in range(i, len(ns)) if log_ratio[j] >= 0]
        out["reason"] = (f"first crossing between n={ns[i - 1]} and n={ns[i]}" +
                         (f"; {slow} is faster again at n={[ns[j] for j in later]} (noise?)" if later else ""))
    return out
