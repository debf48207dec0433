"""The papers' algorithms on top of the formats: FineQuant's adaptive groups, DGQ, QServe.

Why apart from the formats: each is one paper's recipe for choosing groups,
scales or codes; the packed layouts they produce are those of ``formats``.
"""
from __future__ import annotations

import torch

from .formats import DGQPacked, check_dgq_group, check_weight, pack_int4, round_up
from .modules import FakeQuantLinear

FINEQUANT_GROUPS = (None, 1024, 512, 256, 128, 64, 32)  # None = per output channel
FINEQUANT_RATIO = 4.0        # a group has an outlier when its max |w| exceeds this many times its RMS
FINEQUANT_MAX_SHARE = 0.01   # ... and at most this share of a matrix's weights may sit in such groups
DGQ_CLIP_PCT = 99.9          # DGQ clips each token's activations at this percentile of |x|


# ---------------------------------------------------------------- FineQuant: adaptive granularity

def outlier_share(weight: torch.Tensor, group: int | None, ratio: float = FINEQUANT_RATIO) -> float:
    """Share of weights that sit in a group whose max |w| exceeds ``ratio`` x the group's RMS:
    those weights are quantized on a scale stretched by an outlier."""
    w = check_weight(weight)
    n, k = w.shape
    g = group or k
    kp = round_up(k, g)
    wp = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // g, g)
    rms = wp.pow(2).mean(-1).sqrt()
    bad = wp.abs().amax(-1) > ratio * rms.clamp_min(1e-30)
    return float(bad.float().mean())


def finequant_group(weight: torch.Tensor, ratio: float = FINEQUANT_RATIO, max_share: float = FINEQUANT_MAX_SHARE,
                    groups=FINEQUANT_GROUPS) -> int | None:
    """FineQuant-style adaptive granularity for one matrix: start per channel and halve the
    group until at most ``max_share`` of the weights share a scale with an outlier
    (:func:`outlier_share`); the finest candidate if none qualifies. Returns the group
    (None = per channel). Groups wider than K are skipped."""
    k = weight.shape[1]
    cands = [g for g in groups if g is None or g < k]
    for g in cands:
        if outlier_share(weight, g, ratio) <= max_share:
            return g
    return cands[-1]


def finequant_scheme(abits: int = 16, ratio: float = FINEQUANT_RATIO, max_share: float = FINEQUANT_MAX_SHARE):
    """A per-layer scheme chooser for ``quantize_module``."""
    def pick(name, lin):
        g = finequant_group(lin.weight, ratio, max_share)
        return f"w4a{abits}" + (f"-g{g}" if g else "")
    return pick


# ---------------------------------------------------------------- DGQ: dual-grained int4 -> int8

def dgq_quantize(weight: torch.Tensor, group: int = 64, clip_grid=(1.0, 0.95, 0.9, 0.85, 0.8, 0.75),
                 coarse_grid=(1.0, 0.95, 0.9, 0.85, 0.8)) -> dict:
    """Dual-grained quantization (DGQ), our reading of the paper's recipe.

    W ~= s_c[n] * k[n, g] * q[n, k]: int4 codes q in [-8, 7], an integer group
    scale k in [1, 15] and one fp32 scale per channel, so q * k fits int8 and the
    GEMM can run on int8 with a per-channel scale. Two-phase grid search: phase 1
    picks each group's clipping ratio (fine scale) by squared error, phase 2 each
    channel's coarse scale, re-deriving the integer group scales. Returns codes,
    scales and the dequantized weight.
    """
    w = check_weight(weight)
    n, k = w.shape
    kp = round_up(k, group)
    wg = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // group, group)
    amax = wg.abs().amax(-1).clamp_min(1e-12)
    # phase 1: fine (group) scales, each group's clipping ratio by its own error
    best_err = torch.full_like(amax, float("inf"))
    fine = amax / 7.0
    for c in clip_grid:
        s = c * amax / 7.0
        err = (torch.clamp(torch.round(wg / s[..., None]), -8, 7) * s[..., None] - wg).pow(2).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        fine = torch.where(better, s, fine)
    # phase 2: coarse (channel) scale; group scales become integers k = round(fine / s_c) in [1, 15]
    best_row = torch.full((n,), float("inf"))
    out = None
    for c in coarse_grid:
        sc = c * fine.amax(-1) / 15.0
        kint = torch.clamp(torch.round(fine / sc[:, None]), 1, 15)
        s = sc[:, None] * kint
        q = torch.clamp(torch.round(wg / s[..., None]), -8, 7)
        deq = q * s[..., None]
        err = (deq - wg).pow(2).sum((-1, -2))
        better = err < best_row
        best_row = torch.where(better, err, best_row)
        if out is None:
            out = {"q": q.clone(), "kint": kint.clone(), "sc": sc.clone(), "deq": deq.clone()}
        else:
            b = better
            out["q"][b], out["kint"][b], out["sc"][b], out["deq"][b] = q[b], kint[b], sc[b], deq[b]
    w8 = (out["q"] * out["kint"][..., None]).reshape(n, kp)[:, :k]
    assert float(w8.abs().max()) <= 127
    return {"w8": w8.to(torch.int8), "scale": out["sc"], "group_scale": out["kint"].to(torch.uint8),
            "codes": out["q"].reshape(n, kp).to(torch.int8),
            "weight": out["deq"].reshape(n, kp)[:, :k].contiguous()}


def dgq_pack(weight: torch.Tensor, group: int = 128) -> DGQPacked:
    """Quantize ``weight`` [N, K] with :func:`dgq_quantize` and pack it for the DGQ kernel."""
    check_dgq_group(group)
    out = dgq_quantize(weight, group)
    n, k = weight.shape
    return DGQPacked(n, k, out["codes"].shape[1], group, pack_int4((out["codes"] + 8).to(torch.uint8)),
                     out["group_scale"].contiguous(), out["scale"].float().contiguous())


# ---------------------------------------------------------------- QServe: progressive quantization

def qserve_quantize(weight: torch.Tensor, group: int = 128, level1: int = 119) -> dict:
    """QServe's progressive group quantization: int8 per channel first (range +-``level1``,
    kept below 127 so the second level cannot overflow int8), then the int8 values into
    asymmetric int4 groups with an integer scale and integer zero:
    q8 ~= (u4 - z) * s2, W = s1[n] * q8. Dequantizing int4 -> int8 is then integer
    multiply-subtract, and the GEMM runs on int8 (W4A8)."""
    w = check_weight(weight)
    n, k = w.shape
    s1 = (w.abs().amax(1) / level1).clamp_min(1e-12)
    q8 = torch.clamp(torch.round(w / s1[:, None]), -level1, level1)
    kp = round_up(k, group)
    qg = torch.nn.functional.pad(q8, (0, kp - k)).reshape(n, kp // group, group)
    lo, hi = qg.amin(-1), qg.amax(-1)
    s2 = torch.clamp(torch.ceil((hi - lo) / 15.0), min=1)
    z = torch.clamp(torch.round(-lo / s2), 0, 15)
    u = torch.clamp(torch.round(qg / s2[..., None]) + z[..., None], 0, 15)
    q8r = (u - z[..., None]) * s2[..., None]
    q8r = q8r.reshape(n, kp)[:, :k]
    assert float(q8r.abs().max()) <= 127
    return {"u4": u.to(torch.uint8), "s2": s2.to(torch.uint8), "z": z.to(torch.uint8), "s1": s1,
            "q8": q8r.to(torch.int8), "weight": (q8r * s1[:, None]).contiguous()}


def variant_makers(dgq_group: int = 64, qserve_group: int = 128, clip_pct: float = DGQ_CLIP_PCT) -> dict:
    """Quality-only variants (fake-quantized weights): name -> make(name, linear) -> module."""
    def dgq(name, lin):
        return FakeQuantLinear(dgq_quantize(lin.weight, dgq_group)["weight"], lin.bias, 8, clip_pct)

    def qserve(name, lin):
        return FakeQuantLinear(qserve_quantize(lin.weight, qserve_group)["weight"], lin.bias, 8)
    return {f"DGQ w4a8 g{dgq_group} (int8 GEMM, clip {clip_pct}%)": dgq,
            f"QServe progressive w4a8 g{qserve_group}": qserve}
