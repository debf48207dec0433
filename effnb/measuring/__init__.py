"""Chapter 01's technique family: count the work, measure the time, model it.

Three pieces, each used by ``notebooks/01_measuring.ipynb``:

* Workloads (GEMM, GEMV, 1x1 and depthwise 3x3 convolution, STREAM triad)
  with their FLOP count and their *compulsory* byte count (every operand read
  once, every result written once). FLOPs over bytes is the arithmetic
  intensity that places a kernel on the roofline; the measured time says how
  close it came to the limit that binds it.
* A tiny decoder-only transformer with a key/value cache and greedy decoding,
  whose generation latency we measure on a grid of prompt and output lengths.
* The idealized-runtime model of Narayanan et al. (2023): latency = fixed +
  per-prompt-token x prompt + per-output-token x outputs, fitted by least
  squares and judged on lengths it never saw (held-out MAPE).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

FP32 = 4  # bytes per element: every workload here is float32


# --------------------------------------------------------------------------
# FLOP and byte counts
# --------------------------------------------------------------------------

def _positive_ints(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive whole number, got {v!r}")


def gemm_counts(m: int, n: int, k: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of C[m,n] = A[m,k] @ B[k,n]: one multiply and one add per term."""
    _positive_ints(m=m, n=n, k=k, dtype_bytes=dtype_bytes)
    return 2.0 * m * n * k, float(dtype_bytes) * (m * k + k * n + m * n)


def gemv_counts(m: int, n: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of y[m] = W[m,n] @ x[n]: the weight matrix dominates the traffic."""
    _positive_ints(m=m, n=n, dtype_bytes=dtype_bytes)
    return 2.0 * m * n, float(dtype_bytes) * (m * n + n + m)


def conv2d_counts(batch: int, c_in: int, c_out: int, h: int, w: int, kernel: int = 1, groups: int = 1,
                  dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of a stride-1, 'same'-padded NCHW convolution.

    Each output element sums ``c_in / groups * kernel**2`` products. A
    depthwise convolution (``groups == c_in == c_out``) does ``c_in`` times
    fewer FLOPs than a dense one of the same kernel, on the same activations.
    """
    _positive_ints(batch=batch, c_in=c_in, c_out=c_out, h=h, w=w, kernel=kernel, groups=groups,
                   dtype_bytes=dtype_bytes)
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide c_in={c_in} and c_out={c_out}")
    per_out = (c_in // groups) * kernel * kernel
    flops = 2.0 * batch * c_out * h * w * per_out
    elems = batch * c_in * h * w + c_out * per_out + batch * c_out * h * w
    return flops, float(dtype_bytes) * elems


def triad_counts(n: int, dtype_bytes: int = FP32) -> tuple[float, float]:
    """(FLOPs, bytes) of STREAM triad a = b + s*c: two reads, one write, two FLOPs per element."""
    _positive_ints(n=n, dtype_bytes=dtype_bytes)
    return 2.0 * n, 3.0 * dtype_bytes * n


# --------------------------------------------------------------------------
# Workloads: what to run, and what it costs on paper
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """One kernel at one size: its paper cost and a factory for fresh inputs.

    ``make()`` allocates new inputs and returns a no-argument callable that
    runs the kernel once (the shape :func:`effnb.bench.bench` expects).
    ``cold`` asks the benchmark to rotate through copies bigger than the
    last-level cache, as a decode pass streaming its weights does.
    """
    family: str
    size: str
    flops: float
    bytes: float
    make: Callable[[], Callable[[], Any]]
    cold: bool = False

    @property
    def intensity(self) -> float:
        """FLOPs per compulsory byte: where the kernel sits on the roofline's x axis."""
        return self.flops / self.bytes


def _torch():
    import torch
    return torch


def gemm(n: int) -> Workload:
    """Square fp32 matrix product (torch.mm): the compute-bound end of the roofline."""
    flops, nbytes = gemm_counts(n, n, n)
    torch = _torch()

    def make():
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        return lambda: torch.mm(a, b, out=out)
    return Workload("gemm", f"{n}", flops, nbytes, make)


def gemv(n: int) -> Workload:
    """Square fp32 matrix-vector product, cold: every call reads a different weight matrix."""
    flops, nbytes = gemv_counts(n, n)
    torch = _torch()

    def make():
        w, x = torch.randn(n, n), torch.randn(n)
        out = torch.empty(n)
        return lambda: torch.mv(w, x, out=out)
    return Workload("gemv", f"{n}", flops, nbytes, make, cold=True)


def conv(batch: int, channels: int, hw: int, *, depthwise: bool) -> Workload:
    """A 1x1 dense or a 3x3 depthwise convolution (torch conv2d, NCHW fp32) on one activation shape.

    Both read and write the same activation tensor, so their time compares
    the two layers a MobileNet-style block alternates between.
    """
    kernel, groups = (3, channels) if depthwise else (1, 1)
    flops, nbytes = conv2d_counts(batch, channels, channels, hw, hw, kernel, groups)
    torch = _torch()
    import torch.nn.functional as F

    def make():
        x = torch.randn(batch, channels, hw, hw)
        w = torch.randn(channels, channels // groups, kernel, kernel)
        pad = kernel // 2

        def run():
            with torch.inference_mode():
                return F.conv2d(x, w, padding=pad, groups=groups)
        return run
    family = "dwconv3x3" if depthwise else "conv1x1"
    return Workload(family, f"{batch}x{channels}x{hw}x{hw}", flops, nbytes, make)


def triad(mib: int) -> Workload:
    """STREAM triad in torch over three fp32 arrays of ``mib`` MiB each (as effnb.roofline sizes its probes)."""
    _positive_ints(mib=mib)
    n = (mib << 20) // FP32
    flops, nbytes = triad_counts(n)
    torch = _torch()

    def make():
        a, b, c = torch.empty(n), torch.randn(n), torch.randn(n)
        return lambda: torch.add(b, c, alpha=3.0, out=a)
    return Workload("triad", f"3x{mib} MiB", flops, nbytes, make)


def suite(*, gemm_sizes: Sequence[int] = (), gemv_sizes: Sequence[int] = (), conv_channels: Sequence[int] = (),
          conv_hw: int = 28, conv_batch: int = 1, stream_mib: int | None = None) -> list[Workload]:
    """The chapter's workloads; every size is checked before anything is allocated."""
    for name, seq in (("gemm_sizes", gemm_sizes), ("gemv_sizes", gemv_sizes), ("conv_channels", conv_channels)):
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Iterable):
            raise ValueError(f"{name} must be a list of positive whole numbers, got {seq!r}")
        for v in seq:
            _positive_ints(**{name: v})
    _positive_ints(conv_hw=conv_hw, conv_batch=conv_batch)
    if stream_mib is not None:
        _positive_ints(stream_mib=stream_mib)
    out = [gemm(n) for n in gemm_sizes] + [gemv(n) for n in gemv_sizes]
    for c in conv_channels:
        out += [conv(conv_batch, c, conv_hw, depthwise=False), conv(conv_batch, c, conv_hw, depthwise=True)]
    if stream_mib is not None:
        out.append(triad(stream_mib))
    return out


def measure_workloads(workloads: Sequence[Workload], limits: dict, *, repeats: int = 5, warmup: int = 2,
                      progress: bool = False):
    """Time every workload (effnb.bench) and place it against the machine's limits.

    Returns one row per workload: the bench columns (median and interquartile
    band) plus flops, bytes, intensity, and from :func:`effnb.roofline.bound`
    the binding limit and the percentage of it achieved.
    """
    import pandas as pd

    from .. import bench, roofline

    if not workloads:
        raise ValueError("no workloads to measure: pass at least one size")
    with warnings.catch_warnings():  # bench imports tqdm.auto, which warns in a kernel without ipywidgets
        warnings.simplefilter("ignore")
        import tqdm.auto  # noqa: F401
    frames = []
    for w in workloads:
        df = bench.bench({w.family: (lambda _s, w=w: w.make())}, [w.size],
                         flops=lambda _s, w=w: w.flops, bytes_moved=lambda _s, w=w: w.bytes,
                         cold=w.cold, repeats=repeats, warmup=warmup, progress=progress, desc=w.family)
        df = df.rename(columns={"provider": "family"})
        df["name"] = f"{w.family} {w.size}"
        df["flops"], df["bytes"], df["intensity"] = w.flops, w.bytes, w.intensity
        b = roofline.bound(w.flops, w.bytes, float(df["median_s"].iloc[0]), limits)
        df["binding"], df["pct_of_limit"] = b["binding"], float(b["pct_of_limit"])
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def conv_pairs(channels: Sequence[int], hw: int, batch: int = 1, *, rounds: int = 5, repeats: int = 3):
    """Depthwise 3x3 vs 1x1 conv GFLOP/s on the same activations, measured in alternating rounds.

    Each round times the 1x1 and then the depthwise layer (``repeats``
    samples each, the fastest kept), so both see the same state of a shared
    machine and their ratio, the depthwise layer's computational efficiency
    relative to the dense one, is not skewed by load that came and went
    between them. Returns one row per (shape, round): size, round,
    conv1x1_gflops, dwconv3x3_gflops, fraction.
    """
    import pandas as pd

    from .. import bench

    _positive_ints(hw=hw, batch=batch, rounds=rounds)
    if repeats < 3:
        raise ValueError(f"repeats={repeats}: pass repeats >= 3")
    if isinstance(channels, (str, bytes)) or not len(channels):
        raise ValueError(f"channels must be a non-empty list of channel counts, got {channels!r}")
    for c in channels:
        _positive_ints(channels=c)
    rows = []
    for c in channels:
        dense, depth = conv(batch, c, hw, depthwise=False), conv(batch, c, hw, depthwise=True)
        fd, fw = dense.make(), depth.make()
        for r in range(rounds):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", bench.SpreadWarning)
                td = float(bench.measure(fd, warmup=1, repeats=repeats).times.min())
                tw = float(bench.measure(fw, warmup=1, repeats=repeats).times.min())
            gd, gw = dense.flops / td / 1e9, depth.flops / tw / 1e9
            rows.append({"size": dense.size, "round": r, "conv1x1_gflops": gd, "dwconv3x3_gflops": gw,
                         "fraction": gw / gd})
    return pd.DataFrame(rows)


def depthwise_fraction(pairs):
    """Per activation shape, the median over rounds of :func:`conv_pairs` (GFLOP/s and their ratio)."""
    need = {"size", "conv1x1_gflops", "dwconv3x3_gflops", "fraction"}
    if not need <= set(pairs.columns):
        raise ValueError(f"expected the frame from conv_pairs() with columns {sorted(need)}")
    return pairs.groupby("size", sort=False)[["conv1x1_gflops", "dwconv3x3_gflops", "fraction"]].median()


# --------------------------------------------------------------------------
# A tiny decoder-only transformer with a KV cache
# --------------------------------------------------------------------------

def _build_decoder_classes():
    """Define the torch modules lazily so importing effnb.measuring stays cheap."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """Pre-norm attention + MLP; writes its keys/values into the cache slice it is given."""

        def __init__(self, d_model: int, n_heads: int, d_ff: int):
            super().__init__()
            self.n_heads = n_heads
            self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.up, self.down = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

        def forward(self, x, cache_k=None, cache_v=None, start: int = 0):
            b, t, d = x.shape
            h = self.n_heads
            q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            if cache_k is not None:  # append this chunk, attend over everything so far
                cache_k[:, :, start:start + t] = k
                cache_v[:, :, start:start + t] = v
                k, v = cache_k[:, :, :start + t], cache_v[:, :, :start + t]
            if t == 1:  # one new token sees the whole past: no mask
                a = F.scaled_dot_product_attention(q, k, v)
            elif start == 0:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # a chunk after a prefix: row i sees keys 0..start+i
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class TinyDecoder(nn.Module):
        """Decoder-only transformer with random weights: the cost of generation, not its quality."""

        def __init__(self, vocab: int, d_model: int, n_layers: int, n_heads: int, d_ff: int, max_len: int,
                     seed: int):
            super().__init__()
            self.vocab, self.d_model, self.n_layers, self.n_heads, self.max_len = \
                vocab, d_model, n_layers, n_heads, max_len
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Embedding(max_len, d_model)
            self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab, bias=False)
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():  # unit embeddings, small matrices: activations stay well scaled
                for name, p in self.named_parameters():
                    if p.dim() >= 2:
                        std = 1.0 if name in ("embed.weight", "pos.weight") else 0.02
                        p.copy_(torch.randn(p.shape, generator=g) * std)
            self.eval()

        def new_cache(self, batch: int = 1):
            """Key/value buffers for ``max_len`` positions, allocated once and reused across calls."""
            shape = (self.n_layers, batch, self.n_heads, self.max_len, self.d_model // self.n_heads)
            return torch.empty(shape), torch.empty(shape)

        def forward(self, tokens, cache=None, start: int = 0):
            """Logits for ``tokens`` [batch, t] placed at positions start..start+t-1."""
            t = tokens.shape[1]
            if start + t > self.max_len:
                raise ValueError(f"positions up to {start + t} exceed max_len={self.max_len}; "
                                 f"build the model with a larger max_len")
            pos = torch.arange(start, start + t, device=tokens.device)
            x = self.embed(tokens) + self.pos(pos)
            for i, blk in enumerate(self.blocks):
                ck, cv = (cache[0][i], cache[1][i]) if cache is not None else (None, None)
                x = blk(x, ck, cv, start)
            return self.head(self.norm(x))

    return Block, TinyDecoder


_CLASSES = None


def tiny_decoder(*, vocab: int = 512, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int | None = None, max_len: int = 1024, seed: int = 0):
    """Build the chapter's small decoder-only transformer (random weights, eval mode)."""
    global _CLASSES
    d_ff = 4 * d_model if d_ff is None else d_ff
    _positive_ints(vocab=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff, max_len=max_len)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if _CLASSES is None:
        _CLASSES = _build_decoder_classes()
    return _CLASSES[1](vocab, d_model, n_layers, n_heads, d_ff, max_len, seed)


def flops_per_token(model) -> float:
    """Matrix FLOPs one token costs in a forward pass: 2 per weight of every linear layer.

    The same for a prompt token in prefill and for a generated token in
    decode; attention scores (which grow with context) are left out, as they
    are small next to the projections at these lengths.
    """
    from torch import nn
    return 2.0 * sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def _check_generate(model, prompt, new_tokens: int):
    _positive_ints(new_tokens=new_tokens)
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be a [batch, length>=1] tensor of token ids, got shape {tuple(prompt.shape)}")
    total = prompt.shape[1] + new_tokens
    if total > model.max_len:
        raise ValueError(f"prompt ({prompt.shape[1]}) + new_tokens ({new_tokens}) = {total} exceeds "
                         f"max_len={model.max_len}; shorten them or build the model with a larger max_len")


def generate(model, prompt, new_tokens: int, cache=None):
    """Greedy decoding with the KV cache: one prefill pass, then one step per new token.

    Returns the ``new_tokens`` generated ids [batch, new_tokens]. Pass a
    ``cache`` from ``model.new_cache()`` to reuse its buffers across calls.
    """
    import torch
    _check_generate(model, prompt, new_tokens)
    cache = model.new_cache(prompt.shape[0]) if cache is None else cache
    out = []
    with torch.inference_mode():
        logits = model(prompt, cache, 0)                       # prefill: all prompt tokens at once
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        pos = prompt.shape[1]
        for _ in range(new_tokens - 1):                        # decode: one token per step
            logits = model(nxt, cache, pos)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(nxt)
            pos += 1
    return torch.cat(out, dim=1)


def generate_nocache(model, prompt, new_tokens: int):
    """Greedy decoding that recomputes the whole sequence every step: the reference for the cache."""
    import torch
    _check_generate(model, prompt, new_tokens)
    seq = prompt
    with torch.inference_mode():
        for _ in range(new_tokens):
            nxt = model(seq)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[:, prompt.shape[1]:]


def length_grid(prompts: Sequence[int], outputs: Sequence[int]) -> list[tuple[int, int]]:
    """Every (prompt length, output tokens) pair of two lists."""
    for v in (*prompts, *outputs):
        _positive_ints(length=v)
    return [(int(p), int(o)) for p in prompts for o in outputs]


def measure_generation(model, train: Sequence[tuple[int, int]], held_out: Sequence[tuple[int, int]], *,
                       rounds: int = 5, seed: int = 0):
    """Greedy-generation latency at each (prompt, outputs) pair, training and held-out.

    ``rounds`` rounds; each round times every pair once, in a fresh random
    order, so a burst of load from other processes or a slow drift of the
    machine hits different pairs in different rounds instead of one pair's
    every sample. Returns a DataFrame: prompt, outputs, split, best_s,
    median_s, q25_s, q75_s, spread. ``best_s`` (the fastest round) estimates
    the *idealized* runtime, which by definition excludes contention: on a
    shared machine other processes only ever add time.
    """
    import time

    import pandas as pd
    import torch

    _positive_ints(rounds=rounds)
    if not train or not held_out:
        raise ValueError("need at least one training and one held-out (prompt, outputs) pair")
    pairs = [(int(p), int(o), "train") for p, o in train] + [(int(p), int(o), "held-out") for p, o in held_out]
    for p, o, _ in pairs:
        _positive_ints(prompt=p, outputs=o)
    longest = max(p + o for p, o, _ in pairs)
    if longest > model.max_len:
        raise ValueError(f"a pair needs {longest} positions but the model has max_len={model.max_len}; "
                         f"build the model with a larger max_len or shorten the grid")
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, model.vocab, (1, p), generator=g) for p, _, _ in pairs]
    cache = model.new_cache(1)
    for k, (p, o, _) in enumerate(pairs):  # untimed first call: lazy init, first touch of the cache
        generate(model, prompts[k], o, cache)
    times = np.empty((rounds, len(pairs)))
    for r in range(rounds):
        for k in rng.permutation(len(pairs)):
            t0 = time.perf_counter()
            generate(model, prompts[k], pairs[k][1], cache)
            times[r, k] = time.perf_counter() - t0
    rows = []
    for k, (p, o, split) in enumerate(pairs):
        t = times[:, k]
        q25, med, q75 = np.quantile(t, [0.25, 0.5, 0.75])
        rows.append({"prompt": p, "outputs": o, "split": split, "best_s": float(t.min()), "median_s": float(med),
                     "q25_s": float(q25), "q75_s": float(q75), "spread": float((q75 - q25) / med)})
    return pd.DataFrame(rows).sort_values(["split", "prompt", "outputs"], ascending=[False, True, True],
                                          ignore_index=True)


# --------------------------------------------------------------------------
# The idealized-runtime model
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeModel:
    """latency = fixed_s + per_prompt_s * prompt + per_output_s * outputs."""
    fixed_s: float
    per_prompt_s: float
    per_output_s: float

    def predict(self, prompt, outputs) -> np.ndarray:
        return self.fixed_s + self.per_prompt_s * np.asarray(prompt, float) + \
            self.per_output_s * np.asarray(outputs, float)


def fit_runtime(prompt, outputs, seconds, *, relative: bool = True) -> RuntimeModel:
    """Least-squares fit of the idealized-runtime model to measured latencies.

    With ``relative=True`` each row is divided by its measured time, so the
    fit minimises squared *relative* error: the quantity MAPE judges. A plain
    fit lets the longest runs dominate and can leave short runs tens of
    percent off. Needs at least three points with two distinct prompt lengths
    and two distinct output counts; otherwise the coefficients are not identified.
    """
    p, o, s = (np.asarray(v, float).ravel() for v in (prompt, outputs, seconds))
    if not (len(p) == len(o) == len(s)):
        raise ValueError(f"prompt, outputs and seconds differ in length ({len(p)}, {len(o)}, {len(s)})")
    if len(s) < 3:
        raise ValueError(f"need at least 3 measurements to fit 3 coefficients, got {len(s)}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("seconds must be finite and positive")
    X = np.column_stack([np.ones_like(p), p, o])
    if np.linalg.matrix_rank(X) < 3:
        raise ValueError("the fit needs at least two distinct prompt lengths and two distinct output counts")
    wt = 1.0 / s if relative else np.ones_like(s)
    coef, *_ = np.linalg.lstsq(X * wt[:, None], s * wt, rcond=None)
    return RuntimeModel(*(float(c) for c in coef))


def mape(predicted, measured) -> float:
    """Mean absolute percentage error, in percent."""
    pr, me = np.asarray(predicted, float), np.asarray(measured, float)
    if pr.shape != me.shape or pr.size == 0:
        raise ValueError(f"predicted {pr.shape} and measured {me.shape} must be non-empty and the same shape")
    if np.any(me <= 0):
        raise ValueError("measured values must be positive for a percentage error")
    return float(100.0 * np.mean(np.abs(pr - me) / me))


def plot_runtime_fit(df, model: RuntimeModel, column: str = "best_s", ax=None):
    """Predicted vs measured latency (``column`` of ``df``), training and held-out, with the y = x line."""
    import matplotlib.pyplot as plt

    from .. import provenance

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5))
    pred = model.predict(df["prompt"], df["outputs"]) * 1e3
    meas = df[column].to_numpy() * 1e3
    for split, marker in (("train", "o"), ("held-out", "s")):
        m = (df["split"] == split).to_numpy()
        ax.scatter(meas[m], pred[m], marker=marker, label=split, zorder=3)
    lo, hi = min(meas.min(), pred.min()) * 0.8, max(meas.max(), pred.max()) * 1.2
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(f"idealized-runtime fit [{provenance.hardware_id()}]")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return ax


__all__ = ["gemm_counts", "gemv_counts", "conv2d_counts", "triad_counts", "Workload", "gemm", "gemv", "conv",
           "triad", "suite", "measure_workloads", "conv_pairs", "depthwise_fraction", "tiny_decoder", "flops_per_token", "generate",
           "generate_nocache", "length_grid", "measure_generation", "RuntimeModel", "fit_runtime", "mape",
           "plot_runtime_fit"]
