"""Scheme strings and the packed weights the kernels read: int8 per channel, int4 per group, DGQ,
ternary (2 bits) and binary (1 bit) weights.

Why one module: the byte layout is the contract between Python and
``kernels/quant/quant.cpp``; packing, unpacking and the random stand-ins the
benchmarks use must agree on it, so they live together.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

SCHEME_RE = re.compile(r"^w(?P<wb>[1248])a(?P<ab>4|8|16)(?:-g(?P<g>\d+))?(?P<asym>-asym|-sym)?"
                       r"(?P<kind>-ternary|-binary)?$")
TERNARY_BLOCK = 128   # ternary K is padded to whole blocks of 128 weights (32 bytes)
BINARY_BLOCK = 256    # binary K is padded to whole blocks of 256 weights (32 bytes)


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme string."""
    wbits: int
    abits: int
    group: int | None   # None: per output channel
    asym: bool
    kind: str = ""      # "ternary" (w2a8) or "binary" (w1a4); "" for the integer schemes

    @property
    def a8(self) -> bool:
        return self.abits == 8

    def __str__(self) -> str:
        if self.kind:
            return f"w{self.wbits}a{self.abits}-{self.kind}"
        g = f"-g{self.group}" if self.group else ""
        return f"w{self.wbits}a{self.abits}{g}{'-asym' if self.asym else ''}"


def parse_scheme(scheme: str | Scheme) -> Scheme:
    """'w4a8-g64' -> Scheme(4, 8, 64, False); a clear error for anything else."""
    if isinstance(scheme, Scheme):
        return scheme
    m = SCHEME_RE.match(str(scheme).strip().lower())
    if not m:
        raise ValueError(f"unknown scheme {scheme!r}: use w8a16, w8a8, w4a16-g64, w4a8-g128 "
                         "(int4 groups are multiples of 32; add -asym for a zero point per group), "
                         "w2a8-ternary or w1a4-binary")
    wb, ab, g, asym = int(m["wb"]), int(m["ab"]), m["g"], m["asym"] == "-asym"
    group = int(g) if g else None
    kind = (m["kind"] or "")[1:]
    if kind or wb in (1, 2) or ab == 4:
        want = {"ternary": "w2a8-ternary", "binary": "w1a4-binary"}
        if kind and (wb, ab, g, m["asym"]) == ((2, 8, None, None) if kind == "ternary" else (1, 4, None, None)):
            return Scheme(wb, ab, None, False, kind)
        raise ValueError(f"scheme {scheme!r}: ternary and binary weights come as exactly "
                         f"{want['ternary']} (2-bit weights, int8 activations) or {want['binary']} (sign weights, "
                         "4-bit activations), one scale per output row, no groups or zero points")
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
    """A quantized weight [N, K] ready for :func:`effnb.quant.linear`."""
    scheme: Scheme
    n: int
    k: int
    kp: int                    # K padded (zeros) to whole blocks
    group: int                 # int4 group (kp for per-channel); 0 for int8
    q: torch.Tensor            # int8 [N, kp] or uint8 [N, kp/2] (two int4 per byte), [N, kp/4] (ternary),
                               # [N, kp/8] (binary)
    scales: torch.Tensor       # fp32 [N] (int8, ternary, binary) or fp16 [N, kp/group] (int4)
    zeros: torch.Tensor        # uint8 [N, kp/group], empty when symmetric
    layout: str = "rows"       # "panels": q as :func:`to_panels` packs it (w8a8, w4a8)

    def parts(self) -> tuple:
        return self.q, self.scales, self.zeros

    def clone(self) -> "Packed":
        """A copy with its own storage (a cold benchmark needs distinct bytes per copy)."""
        return Packed(self.scheme, self.n, self.k, self.kp, self.group, self.q.clone(), self.scales.clone(),
                      self.zeros.clone(), self.layout)


@dataclass
class DGQPacked(_WeightBytes):
    """DGQ's dual-grained int4 weight for :func:`effnb.quant.dgq_linear`:
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

    def clone(self) -> "DGQPacked":
        return DGQPacked(self.n, self.k, self.kp, self.group, self.q.clone(), self.kint.clone(), self.scale.clone())


def round_up(k: int, m: int) -> int:
    return -(-k // m) * m


def int4_padded_k(k: int, group: int | None) -> tuple[int, int]:
    """(group, padded K) of an int4 weight: per channel is one group of K rounded up to 64."""
    group = group or round_up(k, 64)
    return group, round_up(k, math.lcm(64, group))


def check_weight(weight: torch.Tensor) -> torch.Tensor:
    """A finite 2-D float weight as contiguous fp32 on the CPU, or a clear error."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D torch tensor [out_features, in_features]")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    if weight.numel() == 0:
        raise ValueError("weight is empty")
    if not torch.isfinite(weight).all():
        raise ValueError("weight has NaN or inf entries; quantization needs finite weights")
    return weight.detach().to("cpu", torch.float32).contiguous()


def check_dgq_group(group: int) -> None:
    if group < 64 or group % 64:
        raise ValueError(f"DGQ group={group}: use a multiple of 64 (64, 128, 256); the kernel takes whole "
                         "64-weight blocks per group")


def quantize(weight: torch.Tensor, scheme: str | Scheme, hessian: torch.Tensor | None = None) -> Packed:
    """Quantize and pack ``weight`` [N, K] (any float dtype) for ``scheme``.

    Codes are rounded to nearest by default. With ``hessian`` (the K x K matrix
    X^T X of the layer's inputs, from :func:`effnb.quant.calibrate`), int4 codes are
    chosen by GPTQ instead (:func:`effnb.quant.gptq_int4`): same format, same kernel,
    smaller output error.
    """
    sch = parse_scheme(scheme)
    w = check_weight(weight)
    n, k = w.shape
    if hessian is not None:
        if sch.wbits != 4:
            raise ValueError(f"scheme {sch}: GPTQ (hessian=) is implemented for int4 weights; "
                             "int8 per channel is close to lossless with plain rounding")
        from .gptq import gptq_int4
        return gptq_int4(w, sch, hessian)
    if sch.kind:
        return quantize_low_bit(w, sch)
    if sch.wbits == 8:
        kp = round_up(k, 32)
        wp = torch.nn.functional.pad(w, (0, kp - k))
        s = wp.abs().amax(1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.clamp(torch.round(wp / s[:, None]), -127, 127).to(torch.int8)
        return Packed(sch, n, k, kp, 0, q.contiguous(), s.contiguous(), torch.empty(0, dtype=torch.uint8))
    group, kp = int4_padded_k(k, sch.group)
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


PANEL = 32   # output columns per panel of an a8 weight in the "panels" layout


def to_panels(p: Packed) -> Packed:
    """A W8A8 or W4A8 weight in the layout the AVX-512 VNNI kernels read in place (kernels/quant/panel.h),
    packed once here instead of on every call. Panel j holds rows 32j..32j+31 (the last padded with zero
    codes). int8: uint8 [P, 32 Kp], [Kp/4][32][4] bytes per panel, each code + 128 (the unsigned side of
    vpdpbusd). int4: uint8 [P, Kp/64, 1024], per 64-weight block [8 dwords][2 halves of 16 rows][16][4]
    bytes, dword j of each row's 32 bytes of the block in :func:`pack_int4`'s nibble layout; its scales and
    zeros [P, Kp/G, 32], a panel's columns side by side per group (the kernel loads 16 at once)."""
    if p.scheme.kind or not p.scheme.a8 or p.layout != "rows":
        raise ValueError(f"to_panels takes a w8a8 or w4a8 weight in rows, got {p.scheme} in {p.layout}")
    npan = -(-p.n // PANEL)
    q = torch.nn.functional.pad(p.q, (0, 0, 0, npan * PANEL - p.n))
    if p.scheme.wbits == 8:
        u = (q.view(npan, PANEL, p.kp // 4, 4).permute(0, 2, 1, 3).to(torch.int16) + 128).to(torch.uint8)
        q = u.reshape(npan, PANEL * p.kp)
        scales, zeros = p.scales, p.zeros
    else:
        q = q.view(npan, 2, 16, p.kp // 64, 8, 4).permute(0, 3, 4, 1, 2, 5).reshape(npan, p.kp // 64, 1024)
        scales, zeros = (_per_panel(t, npan) for t in (p.scales, p.zeros))
    return Packed(p.scheme, p.n, p.k, p.kp, p.group, q.contiguous(), scales, zeros, "panels")


def _per_panel(t: torch.Tensor, npan: int) -> torch.Tensor:
    """[N, G] -> [P, G, 32], padding rows zero (the empty zeros of a symmetric scheme stay empty)."""
    if not t.numel():
        return t
    t = torch.nn.functional.pad(t, (0, 0, 0, npan * PANEL - t.shape[0]))
    return t.view(npan, PANEL, -1).transpose(1, 2).contiguous()


def _per_row(t: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`_per_panel`: [P, G, 32] -> [N, G], padding rows dropped."""
    if not t.numel():
        return t
    return t.transpose(1, 2).reshape(-1, t.shape[1])[:n].contiguous()


def to_rows(p: Packed) -> Packed:
    """Inverse of :func:`to_panels` (``p`` itself when it is in rows already)."""
    if p.layout == "rows":
        return p
    npan = p.q.shape[0]
    if p.scheme.wbits == 8:
        u = p.q.view(npan, p.kp // 4, PANEL, 4).permute(0, 2, 1, 3).reshape(npan * PANEL, p.kp)
        q = (u.to(torch.int16) - 128).to(torch.int8)
        scales, zeros = p.scales, p.zeros
    else:
        q = p.q.view(npan, p.kp // 64, 8, 2, 16, 4).permute(0, 3, 4, 1, 2, 5).reshape(npan * PANEL, p.kp // 2)
        scales, zeros = (_per_row(t, p.n) for t in (p.scales, p.zeros))
    return Packed(p.scheme, p.n, p.k, p.kp, p.group, q[:p.n].contiguous(), scales, zeros)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`."""
    n, half = packed.shape
    b = packed.reshape(n, half // 32, 1, 32)
    return torch.cat([b & 0x0F, b >> 4], dim=2).reshape(n, half * 2)


def quantize_low_bit(w: torch.Tensor, sch: Scheme) -> Packed:
    """Ternary (BitNet b1.58's absmean) or binary (sign) weights of an fp32 weight [N, K].

    Both keep one fp32 scale per output row, s = mean |w| over the row's K weights (1 for an all-zero
    row). Ternary: q = round(clip(w / s, -1, 1)) in {-1, 0, +1}, stored as the code c = q + 1.
    Binary: q = +1 where w >= 0, -1 elsewhere, stored as the bit (q + 1) / 2.
    """
    n, k = w.shape
    s = w.abs().mean(1)
    s = torch.where(s > 0, s, torch.ones_like(s)).contiguous()
    if sch.kind == "ternary":
        kp = round_up(k, TERNARY_BLOCK)
        q = torch.round(torch.clamp(w / s[:, None], -1.0, 1.0))
        c = torch.nn.functional.pad(q + 1, (0, kp - k), value=1.0).to(torch.uint8)  # padding: weight 0
        return Packed(sch, n, k, kp, 0, pack_ternary(c), s, torch.empty(0, dtype=torch.uint8))
    kp = round_up(k, BINARY_BLOCK)
    bits = torch.nn.functional.pad((w >= 0).to(torch.uint8), (0, kp - k))  # padding: bit 0 (its x is 0)
    return Packed(sch, n, k, kp, 0, pack_bits(bits), s, torch.empty(0, dtype=torch.uint8))


def pack_ternary(c: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, Kp] in {0, 1, 2} (Kp a multiple of 128) -> [N, Kp/4] bytes in the kernel's layout.

    Every block of 128 weights is 32 bytes; byte j holds weight j in bits 0-1, weight 32 + j in bits
    2-3, weight 64 + j in bits 4-5 and weight 96 + j in bits 6-7. One 32-byte load, a shift by 0, 2,
    4 or 6 and an AND with 3 give 32 consecutive codes in order (AVX2: vpsrlw + vpand).
    """
    n, kp = c.shape
    if kp % TERNARY_BLOCK:
        raise ValueError(f"pack_ternary needs K a multiple of {TERNARY_BLOCK}, got {kp}")
    if c.numel() and int(c.max()) > 2:
        raise ValueError("pack_ternary takes codes 0, 1, 2 (weight + 1)")
    b = c.to(torch.uint8).reshape(n, kp // 128, 4, 32)
    return (b[:, :, 0] | (b[:, :, 1] << 2) | (b[:, :, 2] << 4) | (b[:, :, 3] << 6)).reshape(n, kp // 4).contiguous()


def unpack_ternary(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: codes [N, Kp] in {0, 1, 2}."""
    n, q = packed.shape
    b = packed.reshape(n, q // 32, 1, 32)
    return torch.cat([(b >> s) & 3 for s in (0, 2, 4, 6)], dim=2).reshape(n, q * 4)


_BIT = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """uint8 bits [N, Kp] in {0, 1} (Kp a multiple of 256) -> [N, Kp/8] bytes: bit i of byte j is weight
    8 j + i, so read as little-endian 64-bit words, bit i of word j is weight 64 j + i."""
    n, kp = bits.shape
    if kp % BINARY_BLOCK:
        raise ValueError(f"pack_bits needs K a multiple of {BINARY_BLOCK}, got {kp}")
    if bits.numel() and int(bits.max()) > 1:
        raise ValueError("pack_bits takes bits 0 and 1")
    b = bits.to(torch.uint8).reshape(n, kp // 8, 8)
    return (b * _BIT).sum(-1, dtype=torch.int32).to(torch.uint8).contiguous()


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: bits [N, Kp] in {0, 1}."""
    n, q = packed.shape
    return ((packed[..., None] & _BIT) != 0).to(torch.uint8).reshape(n, q * 8)


def dequantize(p: Packed) -> torch.Tensor:
    """The fp32 weight [N, K] that ``p`` represents."""
    p = to_rows(p)
    if p.scheme.kind == "ternary":
        w = (unpack_ternary(p.q).float() - 1.0) * p.scales[:, None]
    elif p.scheme.kind == "binary":
        w = (unpack_bits(p.q).float() * 2.0 - 1.0) * p.scales[:, None]
    elif p.scheme.wbits == 8:
        w = p.q.float() * p.scales[:, None]
    else:
        u = unpack_int4(p.q).float().reshape(p.n, p.kp // p.group, p.group)
        z = p.zeros.float()[..., None] if p.zeros.numel() else 8.0
        w = ((u - z) * p.scales.float()[..., None]).reshape(p.n, p.kp)
    return w[:, :p.k].contiguous()


def dgq_dequantize(p: DGQPacked) -> torch.Tensor:
    """The fp32 weight [N, K] that ``p`` represents."""
    q = unpack_int4(p.q).float().reshape(p.n, p.kp // p.group, p.group) - 8.0
    return (q * p.kint.float()[..., None] * p.scale[:, None, None]).reshape(p.n, p.kp)[:, :p.k].contiguous()


def random_packed(scheme: str | Scheme, n: int, k: int, seed: int = 0) -> Packed:
    """Random codes and scales of the right shapes (benchmarks: speed does not depend on values,
    and packing real weights for every cold copy would dominate the run)."""
    sch = parse_scheme(scheme)
    g = torch.Generator().manual_seed(seed)
    if sch.kind:
        w = torch.randn(n, k, generator=g)
        return quantize_low_bit(w, sch)
    if sch.wbits == 8:
        kp = round_up(k, 32)
        q = torch.randint(-127, 128, (n, kp), generator=g, dtype=torch.int8)
        q[:, k:] = 0
        return Packed(sch, n, k, kp, 0, q, torch.rand(n, generator=g) * 1e-2 + 1e-3,
                      torch.empty(0, dtype=torch.uint8))
    group, kp = int4_padded_k(k, sch.group)
    u = torch.randint(0, 16, (n, kp), generator=g, dtype=torch.uint8)
    s = (torch.rand(n, kp // group, generator=g) * 1e-2 + 1e-3).to(torch.float16)
    z = torch.randint(0, 16, (n, kp // group), generator=g, dtype=torch.uint8) if sch.asym \
        else torch.empty(0, dtype=torch.uint8)
    return Packed(sch, n, k, kp, group, pack_int4(u), s, z)


def random_dgq(n: int, k: int, group: int = 128, seed: int = 0) -> DGQPacked:
    """Random DGQ codes and scales of the right shapes (for benchmarks)."""
    check_dgq_group(group)
    g = torch.Generator().manual_seed(seed)
    kp = round_up(k, group)
    u = torch.randint(0, 16, (n, kp), generator=g, dtype=torch.uint8)
    u[:, k:] = 8
    return DGQPacked(n, k, kp, group, pack_int4(u), torch.randint(1, 16, (n, kp // group), generator=g,
                     dtype=torch.uint8), torch.rand(n, generator=g) * 1e-3 + 1e-4)
