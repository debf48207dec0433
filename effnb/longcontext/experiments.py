"""Chapter 10's measurements on SmolLM2: what each KV-cache policy holds, costs and loses.

Why scored this way: a causal model's prefill of the first ``P`` tokens is the
same whatever cache follows it, so one full-attention prefill per length gives
every compressed policy its starting cache (:meth:`from_dense`), and the last
``scored`` tokens of the document, read through that cache, give its
perplexity. Only the hybrid (sliding-window attention in most layers) changes
the prefill itself, so it gets its own, which is also the prefill race.
"""
from __future__ import annotations

import math
import time
import warnings

import torch
import torch.nn.functional as F

from .. import bench
from ..lm import corpus
from . import kvquant
from . import ops as cache_ops
from .policies import (DenseCache, HeavyHitterCache, HybridCache, QuantizedCache, SinkWindowCache, attend,
                       banded_attention, serving, smoothing_factors)


def document_ids(tokenizer, min_tokens: int, name: str = "topic:specialnames") -> torch.Tensor:
    """Token ids of one of the corpus' long documents (Python's own reference text)."""
    docs = {d["name"]: d["text"] for d in corpus.long_documents()}
    if name not in docs:
        raise ValueError(f"no long document {name!r}; pass one of {sorted(docs)}")
    ids = torch.tensor(tokenizer.encode(docs[name]))
    if ids.numel() < min_tokens:
        raise ValueError(f"{name} has {ids.numel():,} tokens, fewer than the {min_tokens:,} asked for; "
                         "pass shorter lengths or another document")
    return ids


def middle_layers(n_layers: int, share: float = 1 / 3) -> list[int]:
    """The middle ``share`` of the layers: where LongGen keeps full attention."""
    k = max(1, round(share * n_layers))
    lo = (n_layers - k) // 2
    return list(range(lo, lo + k))


@torch.inference_mode()
def _score(model, cache, ids, prefix: int, first_logits) -> torch.Tensor:
    """NLL (nats) of ``ids[prefix:]``: the first from the prefill's last logits, the rest from one chunk
    read through ``cache`` (which then holds the chunk too; truncate it back for timing)."""
    nll = [F.cross_entropy(first_logits.float()[None], ids[prefix:prefix + 1], reduction="none")]
    with serving(model):
        h = model.hidden(ids[None, prefix:-1], cache)[0]
    nll.append(F.cross_entropy(model.logits(h).float(), ids[prefix + 1:], reduction="none"))
    return torch.cat(nll)


@torch.inference_mode()
def _prefill(model, cache, ids):
    with serving(model):
        t0 = time.perf_counter()
        logits = model(ids[None], cache, last_only=True)[0, -1]
        return logits, time.perf_counter() - t0


@torch.inference_mode()
def calibrate_smoothing(model, ids, alpha: float = 0.5):
    """SmoothAttention's factors from the keys of a calibration prompt (not the scored document)."""
    dense = DenseCache(model.cfg, ids.numel())
    _prefill(model, dense, ids)
    return smoothing_factors(dense, ids.numel(), alpha)


def policy_specs(sink: int, window: int, group: int):
    """The policies built from a dense prefill: name -> ``build(dense, prompt_length, smooth)``. H2O
    gets the window's budget (sinks + window tokens), half of it for the most recent tokens."""
    budget = sink + window
    return {
        "int8": lambda d, n, s: QuantizedCache.from_dense(d, n, bits=8, group=group),
        "int4": lambda d, n, s: QuantizedCache.from_dense(d, n, bits=4, group=group),
        "int4 + SmoothAttention": lambda d, n, s: QuantizedCache.from_dense(d, n, bits=4, group=group, smooth=s),
        f"sink {sink} + window {window}": lambda d, n, s: SinkWindowCache.from_dense(d, n, sink=sink, window=window),
        f"H2O {budget}": lambda d, n, s: HeavyHitterCache.from_dense(d, n, (n - min(64, n), n), budget=budget,
                                                                     recent=window // 2, sink=sink),
    }


@torch.inference_mode()
def _step_time(model, cache, length: int, repeats: int) -> bench.Timing:
    tok = torch.tensor([[1]])

    def step():
        with serving(model):
            model(tok, cache, last_only=True)
        cache.truncate(length)
    return _quiet_measure(step, repeats)


def _quiet_measure(fn, repeats: int) -> bench.Timing:
    """bench.measure without its spread warning: the tables carry the spread as a column."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bench.SpreadWarning)
        return bench.measure(fn, warmup=1, repeats=repeats)


def cache_study(model, ids, lengths, scored: int, smooth, sink: int = 4, window: int = 1024,
                group: int = 32, repeats: int = 3, progress: bool = False) -> list[dict]:
    """Per length ``N`` and policy: bytes held after a prefill of ``N - scored`` tokens, perplexity of the
    last ``scored`` tokens, and (full, int8/int4, hybrid) the time of one decode step; the full and hybrid
    prefill times. Rows are dicts (one per length and policy)."""
    from tqdm.auto import tqdm
    rows = []
    full_layers = middle_layers(model.cfg.n_layers)
    for n in tqdm(list(lengths), desc="cache policies", disable=not progress):
        prefix = n - scored
        if prefix < 2 * sink + 64:
            raise ValueError(f"length {n} leaves {prefix} prompt tokens before the {scored} scored ones; "
                             "pass longer lengths or fewer scored tokens")
        doc = ids[:n]
        dense = DenseCache(model.cfg, n, watch=[(prefix - min(64, prefix), prefix)])
        first, t_full = _prefill(model, dense, doc[:prefix])
        made = {"full": dense}
        for name, build in policy_specs(sink, window, group).items():
            made[name] = build(dense, prefix, smooth)
        hybrid = HybridCache(model.cfg, full_layers, sink, window)
        h_first, t_hybrid = _prefill(model, hybrid, doc[:prefix])
        made[hybrid.name] = hybrid
        for name, cache in made.items():
            held = cache.nbytes()
            nll = _score(model, cache, doc, prefix, h_first if cache is hybrid else first)
            cache.truncate(prefix)
            row = {"context": n, "policy": name, "kv_bytes": held, "nll": float(nll.mean()),
                   "ppl": math.exp(float(nll.mean())), "nll_tokens": nll.numpy(),
                   "prefill_s": t_full if name == "full" else (t_hybrid if cache is hybrid else float("nan")),
                   "step_s": float("nan"), "step_spread": float("nan")}
            if name in ("full", "int8", "int4", "int4 + SmoothAttention") or cache is hybrid:
                t = _step_time(model, cache, prefix, repeats)
                row["step_s"], row["step_spread"] = t.median, t.spread
            rows.append(row)
        del made, dense, hybrid
    return rows


def decode_attention_race(cfg, contexts, repeats: int = 5, group: int = 32, seed: int = 0) -> list[dict]:
    """One new token's attention over every layer's cache (random keys and values in the shape of
    ``cfg``): SDPA over float32, dequantize-then-SDPA (the torch route to a quantized cache) and the
    fused kernel on int8 and int4 codes. Each timed call is a whole step (all layers); calls rotate
    through copies of the caches so the working set is >= 4x the last-level cache (cold, as in a real
    decode, where the weights pass through the cache between two steps)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in contexts:
        shape = (cfg.n_kv_heads, n, cfg.head_dim)
        base = [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(cfg.n_layers)]
        q = torch.randn(cfg.n_heads, cfg.head_dim, generator=g)
        qg = q.view(cfg.n_kv_heads, -1, cfg.head_dim)
        per_step = {"SDPA fp32": 2 * cfg.n_layers * math.prod(shape) * 4}
        layers = {"SDPA fp32": base}
        for bits in (8, 4):
            layers[f"int{bits}"] = [tuple(kvquant.quantize_kv(x, bits, group) for x in kv) for kv in base]
            per_step[f"int{bits}"] = cfg.n_layers * kvquant.kv_bytes(n, cfg.n_kv_heads, cfg.head_dim, bits, group)

        def copies(key):
            held = layers[key]
            return [held] + [[tuple(tuple(p.clone() for p in part) if isinstance(part, tuple) else part.clone()
                                    for part in kv) for kv in held] for _ in range(bench.cold_copies(per_step[key]) - 1)]

        def sdpa_step(held):
            return lambda: [F.scaled_dot_product_attention(qg, k, v) for k, v in held]

        def fused_step(held, bits):
            return lambda: [cache_ops.kv_decode(q, *kq, *vq, n, bits) for kq, vq in held]

        def torch_step(held, bits):
            return lambda: [F.scaled_dot_product_attention(qg, kvquant.dequantize_kv(*kq, bits, group),
                                                           kvquant.dequantize_kv(*vq, bits, group)) for kq, vq in held]
        plan = {"SDPA fp32": ("SDPA fp32", [sdpa_step(h) for h in copies("SDPA fp32")])}
        for bits in (8, 4):
            held = copies(f"int{bits}")
            plan[f"effnb int{bits}"] = (f"int{bits}", [fused_step(h, bits) for h in held])
            plan[f"dequantize + SDPA int{bits}"] = (f"int{bits}", [torch_step(h, bits) for h in held])
        for name, (key, fns) in plan.items():
            t = _quiet_measure(fns, repeats)
            rows.append({"context": n, "impl": name, "seconds": t.median, "spread": t.spread,
                         "bytes": per_step[key], "working_set": per_step[key] * len(fns)})
        del base, layers, plan
    return rows


def race_table(rows: list[dict], read_gbps: float, backend: str):
    """The race as a table: ms per step, GB/s of cache read, % of the read probe, and each
    implementation against SDPA fp32 and against the fastest peer (any implementation not ours)."""
    import pandas as pd
    df = pd.DataFrame(rows)
    out = []
    for n, t in df.groupby("context", sort=True):
        sdpa = float(t.loc[t["impl"] == "SDPA fp32", "seconds"].iloc[0])
        peers = t[~t["impl"].str.startswith("effnb")]
        fastest = peers.loc[peers["seconds"].idxmin()]
        for _, r in t.iterrows():
            gbps = r["bytes"] / r["seconds"] / 1e9
            out.append({"tokens": int(n), "implementation": r["impl"],
                        "backend": backend if r["impl"].startswith("effnb") else "torch",
                        "ms per step": 1e3 * r["seconds"], "IQR %": 100 * r["spread"],
                        "cache MiB": r["bytes"] / 2**20, "GB/s": gbps, "% of read probe": 100 * gbps / read_gbps,
                        "vs SDPA fp32": sdpa / r["seconds"], "fastest peer": fastest["impl"],
                        "vs fastest peer": float(fastest["seconds"]) / r["seconds"]})
    return pd.DataFrame(out)


def layer_attention_times(cfg, n: int, sink: int, window: int, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds of one layer's prefill attention over ``n`` tokens, full causal vs sinks + window
    (random inputs in the shape of ``cfg``): the part of a prefill the hybrid changes. The IQR of each,
    relative to its median, comes back as ``<name> spread`` (no warning printed)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, cfg.n_heads, n, cfg.head_dim, generator=g)
    k, v = (torch.randn(1, cfg.n_kv_heads, n, cfg.head_dim, generator=g) for _ in range(2))
    full = _quiet_measure(lambda: attend(q, k, v, 0), repeats)
    banded = _quiet_measure(lambda: banded_attention(q, k, v, sink, window), repeats)
    return {"full": full.median, "banded": banded.median, "full spread": full.spread, "banded spread": banded.spread}
