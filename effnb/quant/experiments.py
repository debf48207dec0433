"""The chapter's measurements: the cold speed race (one ``effnb.perf`` benchmark per weight shape)
and what each scheme costs MiniLM in quality.

Provider keys are short and stable (``fp32``, ``int4pack``, ``ort4``, ``w4a8``, ``dgq``); the
labels readers see name the group and the format. ``runs`` below is a dict
``{"4096x4096": perf.Result, ...}``: one benchmark per shape, x = tokens M.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch

from .. import bench, perf, roofline
from ..models.minilm import embed, load_minilm
from . import ops
from .formats import random_dgq, random_packed
from .gptq import calibrate
from .modules import quantize_module, replace_linears
from .peers import (ort_available, ort_backend, ort_matmulnbits, ort_name, ort_pack, torch_backend,
                    torch_int4pack)
from .variants import finequant_scheme

OURS = ("w8a16", "w8a8", "w4a16", "w4a8", "dgq")
LOWBIT = ("w2a8-ternary", "w1a4-binary")           # chapter 03's kernels: schemes without a group
TORCH_PEER_KEYS = ("fp32", "bf16", "int8pack", "int4pack", "dynamic")
FOUR_BIT_PEERS = ("int4pack", "ort4", "ort0")   # peers that store 4-bit weights, as our W4 kernels do
INT8_PEERS = ("int8pack", "dynamic")            # peers that store int8 weights, as our W8 kernels do
TORCH_PEERS = {"fp32": "torch fp32", "bf16": "torch bf16", "int8pack": "torch int8pack (w8a16)",
               "int4pack": "torch int4pack g{group} (w4a16)", "dynamic": "torch dynamic int8 (w8a8)"}
BF16_INPUTS = ("bf16", "int8pack", "int4pack")  # peers whose activations are 2 bytes


def ort_key(level: int) -> str:
    return f"ort{level}"


def scheme_of(key: str, group: int) -> str:
    """Our provider key -> the scheme it runs: int4 keys take the benchmark's group ('w4a8' -> 'w4a8-g128')."""
    return key if key.startswith("w8") or key in LOWBIT else f"{key}-g{group}"


def is_ours(key: str) -> bool:
    return key in OURS or key in LOWBIT


def label(key: str, group: int) -> str:
    """What a reader sees for provider ``key`` (tables, legends, claims)."""
    if key in TORCH_PEERS:
        return TORCH_PEERS[key].format(group=group)
    if key.startswith("ort"):
        return ort_name(group, int(key[3:]))
    return f"ours dgq-w4a8-g{group}" if key == "dgq" else f"ours {scheme_of(key, group)}"


# providers whose products are u8 x s8 dot products into int32 (vpdpbusd or maddubs): held to the int8
# roof (ops.peak_int8), not the fp32 one; binary's popcount has no probe (its % of roof stays empty), nor
# have torch's bf16-activation peers (BF16_INPUTS): oneDNN runs them on bf16 dot products (AVX512-BF16,
# AMX) that outran the fp32 FMA roof by 37% at M = 64 on the Zen 5, so fp32 is no roof for them
INT8_STEP = {"w8a8", "w4a8", "dgq", "w2a8-ternary", "dynamic", "ort4"}
INT8_ROOF = "int8_gops"


def compute_roof(key: str) -> str:
    """The limits key of provider ``key``'s compute roof (see :class:`effnb.perf.Provider`)."""
    if key in INT8_STEP:
        return INT8_ROOF
    if key in BF16_INPUTS:
        return "bf16_gflops"
    return "popcount_gops" if key == "w1a4-binary" else "peak_gflops"


def backend_of(key: str) -> str:
    """The code that runs provider ``key``: our family's backend (cpp-<isa path> or torch-fallback) or the library."""
    if is_ours(key):
        return ops.backend()
    return ort_backend() if key.startswith("ort") else torch_backend()


def weight_bytes(key: str, n: int, k: int, group: int = 128) -> float:
    """Bytes of weight data (codes, scales, zeros) provider ``key`` reads per call."""
    per_row = {"fp32": 4.0 * k, "bf16": 2.0 * k, "int8pack": k + 2.0, "dynamic": k + 4.0,
               "int4pack": k / 2 + 4.0 * (k // group)}
    if key in per_row:
        return n * per_row[key]
    if key.startswith("ort"):
        return n * -(-k // group) * (group / 2 + 4.0)
    if key == "dgq":
        return float(random_dgq(1, k, group).nbytes) * n
    if is_ours(key):
        return float(random_packed(scheme_of(key, group), 1, k).nbytes) * n
    raise KeyError(f"unknown provider {key!r}")


def bytes_moved(key: str, size, group: int = 128) -> float:
    """Every byte a call must move: weight data + activations in + results out."""
    m, n, k = size
    act = 2 if key in BF16_INPUTS else 4
    return weight_bytes(key, n, k, group) + act * m * k + act * m * n


def peer_factories(group: int = 128, ours=OURS, peers=True, threads: int | None = None, ort_levels=(4,)) -> dict:
    """Benchmark providers: key -> factory(size) -> no-argument callable; size = (M, N, K).

    Peers are called as their authors intend: fp32 and bf16 ``F.linear``,
    ``torch._weight_int8pack_mm`` (bf16 activations, int8 weight, per-channel scales),
    ``torch._weight_int4pack_mm_for_cpu`` (bf16 activations, weight packed by
    ``_convert_weight_to_int4pack_for_cpu``, bf16 scales and zeros per group) and
    torch's dynamic int8 quantization of an ``nn.Linear``; and, when ``onnx`` and
    ``onnxruntime`` import, onnxruntime's ``MatMulNBits`` (4-bit blocks of ``group``,
    fp32 activations, a one-node model from ``ort_matmulnbits`` with
    ``intra_op_num_threads=threads``) at each of ``ort_levels``: accuracy level 4 (the
    default; MLAS quantizes the activations to int8, its W4A8 path) and/or 0 (fp32
    activations, every weight dequantized: much slower). Every call of a factory
    returns a distinct copy of the weights (cloned from one random original, which is
    much faster than drawing each), so a cold benchmark really streams them from memory.
    ``ours`` names our kernels: ``w8a16``, ``w8a8``, ``w4a16``, ``w4a8`` (int4 at ``group``)
    and ``dgq`` for DGQ's W4A8 kernel (``dgq_linear``), and the :data:`LOWBIT` schemes. ``peers``
    is True (all), False (none) or the keys to include (``fp32``, ``int8pack``, ``ort4``, ...).
    """
    F = torch.nn.functional
    base: dict = {}

    def once(key, make):
        if key not in base:
            base[key] = make()
        return base[key]

    def x_of(m, k, dtype=torch.float32):
        return torch.randn(m, k, generator=torch.Generator().manual_seed(m * 7 + k)).to(dtype)

    out = {}
    if peers:
        def fp32(size):
            m, n, k = size
            w = once(("fp32", n, k), lambda: torch.randn(n, k)).clone()
            x = x_of(m, k)
            return lambda: F.linear(x, w)

        def bf16(size):
            m, n, k = size
            w = once(("bf16", n, k), lambda: torch.randn(n, k).to(torch.bfloat16)).clone()
            x = x_of(m, k, torch.bfloat16)
            return lambda: F.linear(x, w)

        def int8pack(size):
            m, n, k = size
            q = once(("i8", n, k), lambda: torch.randint(-127, 128, (n, k), dtype=torch.int8)).clone()
            s, x = (torch.rand(n) * 1e-2).to(torch.bfloat16), x_of(m, k, torch.bfloat16)
            return lambda: torch._weight_int8pack_mm(x, q, s)

        def int4pack(size):
            m, n, k = size
            packed, sz = once(("i4", n, k), lambda: torch_int4pack(n, k, group))
            packed, sz = packed.clone(), sz.clone()
            x = x_of(m, k, torch.bfloat16)
            return lambda: torch._weight_int4pack_mm_for_cpu(x, packed, group, sz)

        def dynamic(size):
            m, n, k = size
            lin = torch.nn.Linear(k, n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(once(("fp32", n, k), lambda: torch.randn(n, k)))
            with warnings.catch_warnings():  # torch.ao's deprecation notice: still the op torch ships
                warnings.simplefilter("ignore")
                mod = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                             dtype=torch.qint8)
            x = x_of(m, k)
            return lambda: mod(x)

        out.update({"fp32": fp32, "bf16": bf16, "int8pack": int8pack, "int4pack": int4pack, "dynamic": dynamic})
        if ort_available() and (peers is True or any(ort_key(level) in peers for level in ort_levels)):
            sessions: dict = {}
            calls: dict = {}

            def ort_f(size, level):
                # one session per distinct weight copy; the copies are shared across M
                # (a session does not depend on M), so a cold sweep builds each only once
                m, n, k = size
                key = (level, n, k)
                cap = bench.cold_copies(int(weight_bytes(ort_key(level), n, k, group)))
                pool = sessions.setdefault(key, [])
                i = calls.get((key, m), 0) % cap
                calls[(key, m)] = i + 1
                if i >= len(pool):
                    pk = once(("ort", n, k), lambda: ort_pack(torch.randn(n, k), group))
                    pool.append(ort_matmulnbits(pk, threads=threads, accuracy_level=level))
                run, x = pool[i], x_of(m, k).numpy()
                return lambda: run(x)
            for level in ort_levels:
                out[ort_key(level)] = lambda size, level=level: ort_f(size, level)
    if peers is not True:
        out = {key: fac for key, fac in out.items() if key in set(peers or ())}
    for key in ours:
        if key == "dgq":
            continue
        scheme = scheme_of(key, group)

        def ours_f(size, scheme=scheme):
            m, n, k = size
            p = once((scheme, n, k), lambda: ops.prepack(random_packed(scheme, n, k))).clone()
            x = x_of(m, k)
            return lambda: ops.linear(x, p)
        out[key] = ours_f
    if "dgq" in ours:
        def dgq_f(size):
            m, n, k = size
            p = once(("dgq", n, k), lambda: random_dgq(n, k, group)).clone()
            x = x_of(m, k)
            return lambda: ops.dgq_linear(x, p)
        out["dgq"] = dgq_f
    return out


def benchmark(shape, batch_sizes, group: int = 128, cold: bool = True, repeats: int = 5, warmup: int = 2,
              ours=OURS, peers=True, rounds: int = 1, threads: int | None = None,
              ort_levels=(4,)) -> perf.Benchmark:
    """Every provider of :func:`peer_factories` on a weight of ``shape`` [N, K] at each M in
    ``batch_sizes``, as one :class:`effnb.perf.Benchmark` (``.run()`` measures it).

    GB/s count each provider's own bytes (:func:`bytes_moved`), FLOPs are 2MNK for all;
    the baseline is fp32 ``F.linear`` (our first kernel without peers). With ``rounds`` > 1
    each provider keeps its fastest sweep: on a shared machine another process can only
    add time, so a moment of interference cannot decide which provider wins.
    """
    n, k = (int(v) for v in shape)
    facs = peer_factories(group, ours, peers, threads, ort_levels)
    providers = [perf.Provider(key, label(key, group), lambda m, fac=fac: fac((m, n, k)), ours=is_ours(key),
                               backend=backend_of(key), compute_roof=compute_roof(key),
                               bytes_moved=lambda m, key=key: bytes_moved(key, (m, n, k), group))
                 for key, fac in facs.items()]
    return perf.Benchmark(name=f"{'cold' if cold else 'warm'} {n}x{k}, {threads or torch.get_num_threads()} threads",
                          x="M", x_values=[int(m) for m in batch_sizes], providers=providers,
                          baseline="fp32" if "fp32" in facs else providers[0].key, cold=cold,
                          flops=lambda m: 2.0 * m * n * k, unit="GB/s", repeats=repeats, rounds=rounds,
                          warmup=warmup)


# ---------------------------------------------------------------- reading the runs

def among(res: perf.Result, peers, baseline: str) -> perf.Result:
    """The same measurements with only ``peers`` competing (``baseline`` one of them): its
    ``table()`` then names the fastest of those peers, e.g. the 4-bit ones the targets name."""
    keep = {p.key for p in res.spec.providers if p.ours or p.key in set(peers) | {baseline}}
    spec = dataclasses.replace(res.spec, baseline=baseline, providers=[p for p in res.spec.providers
                                                                       if p.key in keep])
    return perf.Result(spec, res.df[res.df["provider"].isin(keep)], res.rounds[res.rounds["provider"].isin(keep)])


def machine_limits(threads: int, refresh: bool = False) -> dict:
    """The machine's limits (:func:`effnb.roofline.machine`) with the int8 roof the u8 x s8 kernels
    are held to (:func:`ops.peak_int8`, absent without the C++ family), probed once per call."""
    limits = roofline.machine(threads, refresh=refresh, progress=False)
    peak = ops.peak_int8()
    return {**limits, INT8_ROOF: peak} if peak else limits


def read_beside(shapes, limits: dict, keys=("w4a8", "w8a8"), group: int = 128, repeats: int = 9):
    """Our one-token kernels, cold, in turns with a read probe, per shape (:func:`effnb.roofline.read_beside`):
    GB/s of each, each kernel's share of the probe beside it and of the speed table's roof, the probe's own
    share of that roof (how much memory delivered in these minutes), and each side's timing spread."""
    import pandas as pd
    roof = float(limits["read_gbps"])
    facs = peer_factories(group, keys, peers=False)
    rows = []
    for n, k in shapes:
        size = (1, n, k)
        kernels = {key: ([facs[key](size) for _ in range(bench.cold_copies(int(weight_bytes(key, n, k, group))))],
                         bytes_moved(key, size, group)) for key in keys}
        rates = roofline.read_beside(kernels, repeats=repeats)
        probe, probe_spread = rates.pop(roofline.READ_PROBE)
        del kernels
        for key, (g, spread) in rates.items():
            rows.append({"shape": f"{n}x{k}", "key": key, "provider": label(key, group), "backend": backend_of(key),
                         "GB/s": g, "probe GB/s": probe, "% of probe": 100.0 * g / probe,
                         "% of roof": 100.0 * g / roof, "probe % of roof": 100.0 * probe / roof,
                         "spread": spread, "probe spread": probe_spread})
    return pd.DataFrame(rows)


def beside_phrase(beside, target: float = 70.0, key: str = "w4a8") -> str:
    """What the probe beside the kernels (:func:`read_beside`) says about the bandwidth target, from its numbers."""
    rows = beside[beside["key"] == key]
    lo, hi = float(rows["probe % of roof"].min()), float(rows["probe % of roof"].max())
    span = f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}-{hi:.0f}%"
    worst = rows.loc[rows["% of roof"].idxmin()]
    at, probe, share = worst["shape"], float(worst["probe % of roof"]), float(worst["% of probe"])
    head = f"In this run the read probe timed in turns with our kernels reached {span} of that roof."
    if probe < target:
        return (f"{head} Where our {key.upper()} came lowest ({at}) the probe itself read at {probe:.0f}%, under the "
                f"{target:.0f}% the target asks: in those minutes the probe missed the target too, and our kernel took "
                f"{share:.0f}% of what the probe read.")
    return (f"{head} Where our {key.upper()} came lowest ({at}) the probe read at {probe:.0f}%, so memory could "
            f"deliver the {target:.0f}% the target asks, and our kernel took {share:.0f}% of what the probe read.")


def ceiling_phrase(table, limits: dict, target: float, min_m: int = 16, name: str = "W8A8") -> str:
    """How far any kernel on the int8 step could get past the fastest peer where ours is batched.

    ``table`` is a :func:`speed_table` of our ``name`` (rows: shape ``NxK``, M, ms, vs fastest peer).
    At each row with M >= ``min_m``, the peer's GOP/s (2MNK over its time) against the int8 roof gives
    the ratio a kernel AT that roof would reach (the ceiling). The sentence names our lowest point and
    its ceiling; under ``target`` no kernel built on this step can meet the target there. Other missed
    points whose ceiling is above the target are named as our kernel's gap."""
    roof = limits.get(INT8_ROOF)
    rows = table[table["M"] >= min_m]
    if not roof or rows.empty:
        return "This run has no int8 roof or no batched row, so the ceiling against the peer is not known."
    nk = rows["shape"].astype(str).str.split("x", expand=True).astype(float)
    ours = 2.0 * rows["M"] * nk[0] * nk[1] / (rows["ms"] * 1e-3) / 1e9       # GOP/s
    ratio = rows["vs fastest peer"].astype(float)
    ceil = float(roof) * ratio / ours                                       # roof over the peer's GOP/s
    w = ratio.idxmin()
    where = lambda i: f"{rows.at[i, 'shape']}, M = {int(rows.at[i, 'M'])}"
    head = (f"Our {name} came lowest at {where(w)} ({ratio[w]:.2f}x): it ran at {100 * ours[w] / roof:.0f}% of the "
            f"int8 roof and the fastest peer ({rows.at[w, 'fastest peer']}) at {100 * ours[w] / ratio[w] / roof:.0f}%,"
            f" so a kernel at the roof itself would be {ceil[w]:.2f}x that peer")
    if ratio[w] >= target:
        return f"{head}; ours meets the {target:g}x target there."
    if ceil[w] >= target:
        return f"{head}, above the {target:g}x target: the roof allows it, and the gap is our kernel's."
    ours_gap = [i for i in rows.index if ratio[i] < target <= ceil[i]]
    tail = "" if not ours_gap else (
        " Elsewhere the roof allows it and ours fell short, so there the gap is our kernel's: "
        + "; ".join(f"{where(i)} ({ratio[i]:.2f}x, ceiling {ceil[i]:.2f}x)" for i in ours_gap) + ".")
    return f"{head}, under the {target:g}x target: no kernel built on this step can meet it there.{tail}"


def settle_roofs(runs: dict, limits: dict, threads: int):
    """No row of ``runs`` above its roof (:func:`effnb.perf.settle`): a row that beats the read, fp32
    or int8 roof has the machine probed again, then lifts the roof to itself; ``(limits, phrase, info)``."""
    return perf.settle(runs, limits, lambda: machine_limits(threads, refresh=True))


def speed_table(runs: dict, limits: dict | None = None, peers=None, baseline: str | None = None):
    """``Result.table`` of every shape in one frame (with the shape, our provider key and M as a number):
    each of ours against ``baseline`` (default the benchmark's) and the fastest peer (of ``peers``,
    default all), % of the roof: the int8 kernels' of the int8 roof, probed here when ``limits`` lacks it."""
    import pandas as pd
    if limits is not None and INT8_ROOF not in limits:
        limits = {**limits, INT8_ROOF: ops.peak_int8()}
    frames = []
    for shape, res in runs.items():
        r = res
        if peers is not None or baseline not in (None, res.spec.baseline):
            rivals = [p.key for p in res.spec.providers if not p.ours] if peers is None else peers
            r = among(res, [p for p in rivals if p in res.keys()], baseline or res.spec.baseline)
        t = r.table(limits)
        key_of = {p.label: p.key for p in r.spec.providers}
        t.insert(0, "shape", shape)
        t.insert(2, "key", t["ours"].map(key_of))
        t[r.spec.x] = [int(v) for v in t[r.spec.x]]
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def ratio(runs: dict, of: str, over: str, m: int):
    """Speed-up of ``of`` over ``over`` at ``m`` tokens, one value per shape (``Result.ratio`` of each run)."""
    import pandas as pd
    return pd.Series({shape: float(res.ratio(of, over)[res.spec.x_label(m)]) for shape, res in runs.items()})


def measurements(runs: dict, limits: dict):
    """Every provider's row of every run: time, GB/s (all bytes moved), % of the read bandwidth,
    GFLOP/s and the timing spread (a spread above a few percent marks a row another process hit)."""
    import pandas as pd
    rows = [res.df.assign(shape=shape) for shape, res in runs.items()]
    df = pd.concat(rows, ignore_index=True)
    return pd.DataFrame({"shape": df["shape"], "M": df["size"], "key": df["provider"], "provider": df["label"],
                         "backend": df["backend"],
                         "ms": 1e3 * df["median_s"], "GB/s": df["gbps"],
                         "% read bw": 100.0 * df["gbps"] / float(limits["read_gbps"]),
                         "GFLOP/s": df["gflops"], "spread": df["spread"]})


def time_pivot(meas):
    """Milliseconds per call, one row per provider, one column per (shape, M): the measurements
    table (:func:`measurements`, one row per provider, shape and M) folded to fit a page."""
    t = meas.pivot_table(index="provider", columns=["shape", "M"], values="ms", aggfunc="first", sort=False)
    return t.style.format(lambda v: f"{v:.3f} ms" if v == v else "-")


def ratio_pivot(speed):
    """Each of our kernels against the fastest peer, one column per (shape, M): "1.31x (peer)",
    above 1 when ours is faster. ``speed`` is :func:`speed_table`'s frame."""
    cell = speed.assign(text=[f"{r:.2f}x ({p})" for r, p in zip(speed["vs fastest peer"], speed["fastest peer"])])
    return cell.pivot_table(index="ours", columns=["shape", "M"], values="text", aggfunc="first", sort=False)


def dequant_share(runs: dict, weight_only: str = "w4a16", integer: str = "w4a8"):
    """QServe's dequantization overhead, % of the weight-only kernel's time that the integer one
    saves on the same int4 bytes: 1 - t(integer) / t(weight_only), per M (rows) and shape (columns)."""
    import pandas as pd
    share = pd.DataFrame({shape: 100.0 * (1.0 - 1.0 / res.ratio(integer, weight_only)) for shape, res in runs.items()})
    share.index = [int(m) for m in share.index]
    share.index.name = "M"
    return share


# ---------------------------------------------------------------- quality on real data

def fidelity(ref: torch.Tensor, emb: torch.Tensor) -> dict:
    """Cosine of each sentence's embedding to fp32's, and top-1 retrieval agreement: for each
    sentence, is its nearest other sentence the same as with fp32 embeddings?"""
    cos = torch.nn.functional.cosine_similarity(ref, emb, dim=-1)

    def top1(e):
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.argmax(1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1_agreement": float((top1(ref) == top1(emb)).float().mean())}


def quality(texts: list[str], schemes, variants: dict | None = None, finequant: bool = True,
            batch_size: int = 64, max_seq_length: int = 128, gptq_schemes=(), calib_texts=None):
    """MiniLM with every Linear quantized by each scheme: fidelity to fp32 and bits per weight.

    ``gptq_schemes`` are int4 schemes quantized again with GPTQ rounding, from Hessians
    collected on ``calib_texts`` (keep them apart from ``texts``: calibrating on the test
    sentences would flatter the result)."""
    import copy

    import pandas as pd
    if gptq_schemes and not calib_texts:
        raise ValueError("gptq_schemes need calib_texts: sentences for the calibration pass, apart from texts")
    base = load_minilm(max_seq_length)
    ref = embed(base, texts, batch_size)
    hess = calibrate(base, lambda m: embed(m, calib_texts, batch_size)) if gptq_schemes else None
    rows = []
    jobs = [(s, s, None) for s in schemes] + [(f"{s} GPTQ", s, hess) for s in gptq_schemes]
    if finequant:
        jobs.append(("FineQuant adaptive w4a16", finequant_scheme(16), None))
    for name, scheme, h in jobs:
        model = copy.deepcopy(base)
        report = quantize_module(model, scheme, skip=(), hessians=h)
        bits = 8.0 * sum(r["bytes_quant"] for r in report) / sum(r["bytes_fp32"] / 4 for r in report)
        groups = sorted({r["scheme"] for r in report})
        rows.append({"scheme": name, "bits_per_weight": bits, **fidelity(ref, embed(model, texts, batch_size)),
                     "layers": len(report), "chosen": ", ".join(groups) if len(groups) < 4 else f"{len(groups)} kinds"})
    for name, make in (variants or {}).items():
        model = copy.deepcopy(base)
        replace_linears(model, make)
        rows.append({"scheme": name, "bits_per_weight": float("nan"), **fidelity(ref, embed(model, texts, batch_size)),
                     "layers": None, "chosen": ""})
    return pd.DataFrame(rows)
