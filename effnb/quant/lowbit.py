"""Chapter 03's measurements: ternary and binary weights against the formats a reader could pick instead.

Why here and not in the notebook: the race, the byte and bit-operation counts and the language-model
runs are each a few lines over :mod:`.experiments` and :mod:`effnb.lm`, and the tests check them. The
ternary and binary kernels themselves live beside the others in ``kernels/quant/``.
"""
from __future__ import annotations

import copy

import torch

from .. import perf
from .experiments import benchmark
from .formats import parse_scheme, random_packed
from .modules import quantize_module

RACE_OURS = ("w2a8-ternary", "w1a4-binary", "w4a8")      # ours: both low-bit kernels and chapter 02's W4A8
RACE_PEERS = ("fp32", "int8pack", "dynamic", "ort4")    # torch fp32, torch's two int8 ops, the fastest 4-bit peer
HEAD_SCHEME = "w8a8"     # the output layer of a ternary or binary model stays 8-bit (BitNet keeps it wide too)


def race(shape, batch_sizes, group: int = 128, **kwargs) -> perf.Benchmark:
    """Chapter 02's cold benchmark (:func:`.experiments.benchmark`) with the low-bit kernels and the peers
    chapter 03 names: fp32 ``F.linear``, ``torch._weight_int8pack_mm``, torch's dynamic int8 (fbgemm),
    onnxruntime's ``MatMulNBits`` (when installed) and our W4A8 at int4 group ``group``."""
    return benchmark(shape, batch_sizes, group=group, ours=RACE_OURS, peers=RACE_PEERS, **kwargs)


def storage(shapes, schemes=("w8a8", "w4a8-g128", "w4a8-g32", "w2a8-ternary", "w1a4-binary")):
    """Bytes of one weight matrix per scheme, counted from the packed tensors: codes apart from scales
    (and zero points), bits per weight, and how many times smaller than fp32, with and without the scales."""
    import pandas as pd
    rows = []
    for n, k in shapes:
        for scheme in schemes:
            p = random_packed(scheme, int(n), int(k))
            codes = p.q.numel() * p.q.element_size()
            rows.append({"shape": f"{n}x{k}", "scheme": scheme, "code bytes": codes, "scale bytes": p.nbytes - codes,
                         "bits/weight": p.bits_per_weight, "x smaller (codes)": 4.0 * n * k / codes,
                         "x smaller (all)": 4.0 * n * k / p.nbytes})
    return pd.DataFrame(rows)


def flop_saving(scheme: str) -> float:
    """BinaryDM's count (after Bi-Real Net): a multiply-add of a-bit activations by w-bit weights costs
    a*w bit operations, and 64 bit operations count as one FLOP, so fp32 / this = 64 / (a * w)."""
    s = parse_scheme(scheme)
    return 64.0 / (s.wbits * s.abits)


def lm_copies(model, schemes, head_scheme: str = HEAD_SCHEME) -> dict:
    """``{scheme: copy of model}`` with every Linear of the blocks quantized post-training (round to
    nearest, no data) and the output layer in the same scheme, or ``head_scheme`` for the ternary and
    binary ones. Each copy's embedding stays fp32: a decode step reads one row of it."""
    out = {}
    for scheme in schemes:
        s = parse_scheme(scheme)           # fails before any copy
        m = copy.deepcopy(model)
        m._head_t = None             # a transposed fp32 head (LM.transpose_head) is not needed: the head is packed
        head = scheme if s.kind not in ("ternary", "binary") else head_scheme
        quantize_module(m, scheme, skip=("head",))
        quantize_module(m, head, skip=tuple(n for n, mod in m.named_modules()
                                            if isinstance(mod, torch.nn.Linear) and n != "head"))
        out[scheme] = m.eval()
    return out


def lm_quality(models: dict, tokenizer, text: str, context: int, stride: int, progress: bool = False):
    """Perplexity and bits per character of ``text`` for each model (same windows for all), and each
    perplexity's change against the first model's."""
    import pandas as pd
    from ..lm.generate import bits_per_char
    from ..lm.model import weight_bytes
    rows = []
    for name, m in models.items():
        r = bits_per_char(m, tokenizer, text, context, stride, progress)
        rows.append({"model": name, "perplexity": r["perplexity"], "bits/char": r["bits_per_char"],
                     "tokens": r["tokens"], "MB read per token": weight_bytes(m) / 1e6})
    df = pd.DataFrame(rows)
    df["vs first"] = df["perplexity"] / df["perplexity"].iloc[0] - 1.0
    return df



def qat_compare(name: str, schemes, steps: int, distill: float, seed: int, eval_text: str, progress: bool = True,
                **qat_kwargs) -> dict:
    """The byte model ``name`` in fp32, rounded after training (:func:`.qat.ptq`) and trained through the
    rounding (:func:`.qat.qat`, then :func:`.qat.export` to packed layers), each scored in bits per
    character of ``eval_text``; and the fp32 model trained the same way (the committed byte models are
    small and briefly trained, so more training alone helps). Returns the table and each scheme's
    training-loss history."""
    import time

    import pandas as pd
    from ..lm import bytelm
    from ..lm.train import evaluate
    from . import qat as qat_mod
    teacher, _ = bytelm.load(name)
    bpc = lambda m: evaluate(m, eval_text)["bits_per_char"]
    rows = [{"model": "fp32", "bits/char": bpc(teacher), "train s": float("nan")}]
    histories = {}
    for scheme in schemes:
        rows.append({"model": f"{scheme} PTQ", "bits/char": bpc(qat_mod.ptq(teacher, scheme)), "train s": float("nan")})
        t0 = time.perf_counter()
        student, histories[scheme] = qat_mod.qat(teacher, scheme, steps, distill=distill, seed=seed, progress=progress,
                                                 **qat_kwargs)
        seconds = time.perf_counter() - t0
        rows.append({"model": f"{scheme} QAT", "bits/char": bpc(qat_mod.export(student)), "train s": seconds})
    t0 = time.perf_counter()      # the control: the same training without quantization
    control, _ = qat_mod.qat(teacher, "fp32", steps, distill=distill, seed=seed, progress=progress, **qat_kwargs)
    rows.append({"model": "fp32 + same training", "bits/char": bpc(control), "train s": time.perf_counter() - t0})
    table = pd.DataFrame(rows)
    table["vs fp32"] = table["bits/char"] / table["bits/char"].iloc[0] - 1.0
    return {"table": table, "histories": histories}
