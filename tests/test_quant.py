"""effnb.quant: packing, the C++ kernels against the torch reference (on every ISA path this CPU
can run), the op schemas, the module API, the variants, the peers and the benchmark spec."""
import dataclasses
import os

import numpy as np
import pytest
import torch
from conftest import EXPECT_PATH, assert_cpp_under_test, require_cpp, rerun_at_isa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from effnb import ext, perf, provenance
from effnb import quant as Q

SCHEMES = ["w8a16", "w8a8", "w4a16-g32", "w4a16-g64", "w4a16-g128", "w4a8-g32", "w4a8-g64",
           "w4a8-g128", "w4a16-g64-asym", "w4a8-g128-asym", "w4a16", "w4a8-g256", "w4a8-g512-asym", "w4a8-g96"]
EMULATE = "-DEFFNB_QDOT32_EMULATE"


def scale_of(x, w):
    """The size of the largest |x| @ |W|^T term: the yardstick for rounding differences."""
    return float((x.abs().double() @ w.abs().double().T).max()) + 1e-30


def expected_path() -> str:
    """The integer dot-product path the quant family must run in this process: the one an ISA run
    asks for, else what this CPU's build compiles (kernels/quant/quant.h names the paths)."""
    if os.environ.get(EXPECT_PATH):
        return os.environ[EXPECT_PATH]
    level = ext.isa()
    if level == "scalar":
        return "scalar"
    if EMULATE in os.environ.get("EFFNB_CXXFLAGS", "").split():
        return "avx2-emulated-vnni"
    feats = set(provenance.isa_features())
    if level == "avx512" and "avx512_vnni" in feats:
        return "avx512-vnni"
    if level == "avx2" and "avx_vnni" in feats and ext.cpu_level() == "avx2":
        return "avx-vnni"
    return "avx2"


@pytest.fixture(scope="module")
def quant_ops():
    """The C++ ops, which must be loaded wherever a compiler exists (a broken build fails here)."""
    ops = require_cpp("quant", Q.ops.cpp_ops)
    assert_cpp_under_test("quant", Q.backend())
    return ops


def test_the_path_under_test(quant_ops):
    """The kernel tests below run the path this build environment asks for, and results name it."""
    assert Q.backend() == f"cpp-{expected_path()}", ext.status("quant")
    assert ext.status("quant")["isa_path"] == expected_path()


# ---------------------------------------------------------------- schemes and packing

@pytest.mark.parametrize("s,expect", [("w8a16", (8, 16, None, False)), ("W4A8-g64", (4, 8, 64, False)),
                                      ("w4a16-g128-asym", (4, 16, 128, True)), ("w4a16", (4, 16, None, False))])
def test_parse_scheme(s, expect):
    sch = Q.parse_scheme(s)
    assert (sch.wbits, sch.abits, sch.group, sch.asym) == expect


@pytest.mark.parametrize("bad", ["w3a16", "w4a8-g48", "w8a8-g64", "w4a4", "int4", "w4a8-g16", "w8a16-asym"])
def test_bad_scheme_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="scheme"):
        Q.parse_scheme(bad)


def test_panels_roundtrip_and_layout():
    """to_panels, int8: code q[n, k] + 128 at panel n // 32, byte ((k // 4) * 32 + n % 32) * 4 + k % 4. int4:
    byte t of dword j of row n's 32 bytes of 64-block b at [n // 32, b, ((j * 2 + h) * 16 + c) * 4 + t], n % 32
    = 16 h + c; scales and zeros [P, G, 32]. Last panels padded with zeros; to_rows and dequantize read both
    back; only w8a8 and w4a8 in rows qualify."""
    p = Q.quantize(torch.randn(37, 100), "w8a8")
    pp = Q.to_panels(p)
    assert pp.layout == "panels" and pp.q.dtype == torch.uint8 and tuple(pp.q.shape) == (2, 32 * p.kp)
    for n, k in [(0, 0), (5, 7), (36, 99), (33, 64)]:
        assert int(pp.q[n // 32, ((k // 4) * 32 + n % 32) * 4 + k % 4]) == int(p.q[n, k]) + 128
    assert int(pp.q[1, (3 * 32 + 10) * 4 + 1]) == 128  # row 42 of 37: padding
    p4 = Q.quantize(torch.randn(37, 200), "w4a8-g64-asym")
    pp4 = Q.to_panels(p4)
    assert tuple(pp4.q.shape) == (2, p4.kp // 64, 1024) and tuple(pp4.scales.shape) == (2, p4.kp // 64, 32)
    for n, b, j, t in [(0, 0, 0, 0), (5, 1, 7, 3), (36, 3, 4, 2), (20, 2, 0, 1)]:
        h, c = divmod(n % 32, 16)
        assert int(pp4.q[n // 32, b, ((j * 2 + h) * 16 + c) * 4 + t]) == int(p4.q[n, 32 * b + 4 * j + t])
    assert float(pp4.scales[1, 2, 4]) == float(p4.scales[36, 2]) and int(pp4.zeros[0, 3, 9]) == int(p4.zeros[9, 3])
    assert float(pp4.scales[1, 0, 5:].abs().sum()) == 0 and int(pp4.q[1, :, 5 * 4:16 * 4].sum()) == 0  # padding
    for rows, panels in [(p, pp), (p4, pp4)]:
        back = Q.to_rows(panels)
        assert all(torch.equal(a, b) for a, b in zip(back.parts(), rows.parts())) and back.layout == "rows"
        assert torch.equal(Q.dequantize(panels), Q.dequantize(rows))
        assert torch.equal(panels.clone().q, panels.q) and panels.clone().layout == "panels"
    for bad in (pp, Q.quantize(torch.randn(4, 64), "w4a16-g32"), Q.quantize(torch.randn(4, 64), "w8a16"),
                Q.quantize(torch.randn(4, 64), "w2a8-ternary")):
        with pytest.raises(ValueError, match="to_panels takes a w8a8 or w4a8 weight in rows"):
            Q.to_panels(bad)
    assert Q.prepack(Q.quantize(torch.randn(4, 64), "w8a16")).layout == "rows"  # weight-only kernels read rows


def test_pack_roundtrip():
    u = torch.randint(0, 16, (5, 192), dtype=torch.uint8)
    assert torch.equal(Q.unpack_int4(Q.pack_int4(u)), u)
    # the documented layout: byte j of a 64-block = weight j (low nibble), weight 32 + j (high)
    p = Q.pack_int4(u)
    assert int(p[2, 32 + 3]) == int(u[2, 64 + 3]) | (int(u[2, 64 + 35]) << 4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 300), scheme=st.sampled_from(SCHEMES), seed=st.integers(0, 99))
@example(n=6, k=153, scheme="w4a16-g64-asym", seed=64)  # a group's largest weight clipped by the zero's rounding
def test_dequantize_error_is_at_most_half_a_step(n, k, scheme, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3
    p = Q.quantize(w, scheme)
    d = Q.dequantize(p)
    assert d.shape == w.shape
    if p.scheme.wbits == 8:
        step = p.scales[:, None].expand(n, k)
    else:
        step = p.scales.float().repeat_interleave(p.group, 1)[:, :k]
    # half a step, plus the fp16 rounding of the scale (relative 2**-11) over at most 15 steps: the end
    # of a group's range can be clipped by that much (asymmetric: after the zero point is rounded)
    assert bool(((d - w).abs() <= (0.5 + 15 * 2.0**-11) * step + 1e-6).all())


# ---------------------------------------------------------------- kernels against the reference

def kernel_vs_reference(m, n, k, seed, pack, run, ref):
    """Random W [n, k] and x [m, k]: the kernel agrees with the float64 reference up to fp32 rounding."""
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    p = pack(w)
    y, r = run(x, p), ref(x, p)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert float((y - r).abs().max()) <= 1e-5 * scale_of(x, w)
    return w, p


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 300), scheme=st.sampled_from(SCHEMES),
       seed=st.integers(0, 999), prepacked=st.booleans())
def test_linear_matches_reference(quant_ops, m, n, k, scheme, seed, prepacked):
    """prepacked: the layout this build reads fastest (W8A8 and W4A8 panels on AVX-512 VNNI), as QuantLinear uses it."""
    kernel_vs_reference(m, n, k, seed, lambda w: packed(w, scheme, prepacked), Q.linear, Q.linear_ref)


def packed(w, scheme, prepacked=False):
    p = Q.quantize(w, scheme)
    return Q.prepack(p) if prepacked else p


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8-g64", "w4a8-g32", "w4a16-g128-asym", "w8a16"])
@pytest.mark.parametrize("m", [1, 5, 17, 64])
def test_linear_awkward_and_batched(quant_ops, scheme, m):
    """M past the 4-token tile, K not a multiple of anything, zero rows, huge values."""
    g = torch.Generator().manual_seed(m)
    w, x = torch.randn(37, 333, generator=g), torch.randn(m, 333, generator=g) * 50
    x[0] = 0.0
    w[3] = 0.0
    p = Q.quantize(w, scheme)
    y, r = Q.linear(x, p), Q.linear_ref(x, p)
    assert float((y - r).abs().max()) <= 1e-5 * scale_of(x, w)
    assert bool((y[0] == 0).all())  # zero tokens give exact zeros
    # a zero weight row: the zero-point correction cancels up to rounding
    assert float(y[:, 3].abs().max()) <= 1e-5 * scale_of(x, w)


@pytest.mark.parametrize("scheme", ["w4a8-g64-asym", "w4a8-g128", "w4a8-g32-asym", "w4a8-g96-asym",
                                    "w4a8-g288-asym", "w4a8-g512"])
@pytest.mark.parametrize("m", [7, 8, 10, 11, 64])
def test_w4a8_register_tiles(quant_ops, scheme, m):
    """Every branch of the W4A8 block kernel on purpose, not by chance: M >= 8 takes the 2-row x
    3-token tile (N = 37 leaves a last row alone, M % 3 leaves single tokens), M = 7 one row at a
    time; groups of whole 64-blocks flush every 4 blocks (g512), groups of an odd number of
    32-chunks walk chunk by chunk (g32, g96) and flush mid-group after 8 chunks (g288); asymmetric
    zeros exercise the correction per row of the tile. On AVX-512 VNNI builds the groups of whole
    64-blocks run the 512-bit kernel instead (4 rows x 4 tokens, a pair, single tokens; 8 rows at
    M = 1); the AVX2 and emulated-VNNI reruns keep the 256-bit tile under test."""
    kernel_vs_reference(m, 37, 333, m, lambda w: Q.quantize(w, scheme), Q.linear, Q.linear_ref)


@pytest.mark.parametrize("prepacked", [False, True], ids=["rows", "prepacked"])
@pytest.mark.parametrize("scheme", ["w4a8-g64", "w4a8-g128-asym", "w4a8-g256", "w4a8-g1024-asym", "w4a8-g32-asym"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6, 9])
def test_w4a8_small_batches_and_long_groups(quant_ops, scheme, m, prepacked):
    """With AVX-512 VNNI the groups of whole 64-blocks run the 512-bit kernel: rows in blocks of 8
    folded four at a time at M = 1 (N = 37 leaves five rows alone), 4-token tiles folded into one
    vector per row from M = 2, with a pair and a single token after them (M = 2, 3, 6, 9); g1024
    sums 16 blocks per group in int32 lanes (K = 2100: the last group is mostly padding). Other
    builds run it as a check. Prepacked (AVX-512 VNNI): the panel kernel at every M, one token reading the
    nibbles in place (dot_nibbles) for groups of whole 64-blocks and through L1 for g32."""
    kernel_vs_reference(m, 37, 2100, m, lambda w: packed(w, scheme, prepacked), Q.linear, Q.linear_ref)


@pytest.mark.parametrize("ahead", ["1", "0"])
def test_w4a8_one_token_with_and_without_the_block_ahead(quant_ops, monkeypatch, ahead):
    """At M = 1, AVX-512 VNNI builds on AMD also prefetch the next row block (Intel builds do not):
    both settings forced by EFFNB_W4A8_AHEAD, with the last row block at the weight's end (N = 8, 37,
    64), so the prefetch reaches past the buffer. A prefetch cannot change a result; this checks
    that either setting runs and stays correct. Other builds ignore the variable."""
    monkeypatch.setenv("EFFNB_W4A8_AHEAD", ahead)
    for n in (8, 37, 64):
        kernel_vs_reference(1, n, 2100, n, lambda w: Q.quantize(w, "w4a8-g128"), Q.linear, Q.linear_ref)


@pytest.mark.parametrize("prepacked", [False, True], ids=["rows", "prepacked"])
@pytest.mark.parametrize("k", [333, 4096 + 32, 64])
@pytest.mark.parametrize("m", [1, 5, 6, 7, 13, 64])
def test_w8a8_tiles(quant_ops, k, m, prepacked):
    """The W8A8 kernel's branches on purpose: on AVX-512 VNNI, blocks of 4 rows (N = 37 leaves a lone
    last row) against tiles of 6 tokens and a remainder of 1-5, and a last 64-byte step that holds only 32
    bytes (K padded to 4096 + 32); on AVX2, rows against tiles of up to 4 tokens. Saturated int8 codes
    (huge x, |w|) check the sign-bit flip and the 128 x code-sum correction. Prepacked: on AVX-512 VNNI the
    panel kernel at every M (token tiles of 1..8, a partial last panel, a last chunk of 32 weights); elsewhere
    prepack keeps rows."""
    kernel_vs_reference(m, 37, k, m, lambda w: packed(w, "w8a8", prepacked), Q.linear, Q.linear_ref)
    g = torch.Generator().manual_seed(k)
    w, x = torch.randn(37, k, generator=g).sign(), torch.randn(m, k, generator=g).sign() * 1e3
    p = packed(w, "w8a8", prepacked)
    assert p.layout == ("panels" if prepacked and Q.a8_layout() == "panels" else "rows")
    assert float((Q.linear(x, p) - Q.linear_ref(x, p)).abs().max()) <= 1e-5 * scale_of(x, w)


def test_a8_layout_follows_the_build(quant_ops):
    """Panels exactly where the build runs AVX-512 VNNI (panel.h); panel weights on a rows build are a clear
    error, and malformed ones on a panels build too."""
    want = "panels" if Q.backend() == "cpp-avx512-vnni" else "rows"
    print(f"W8A8/W4A8 layout of this build ({Q.backend()}): {Q.a8_layout()}")
    assert Q.a8_layout() == want
    p = Q.to_panels(Q.quantize(torch.randn(40, 128), "w8a8"))
    p4 = Q.to_panels(Q.quantize(torch.randn(40, 128), "w4a8-g64"))
    x = torch.randn(3, 128)
    if want == "rows":
        with pytest.raises(RuntimeError, match="prepack"):
            quant_ops.quant_w8_linear(x, p.q, p.scales, True)
        with pytest.raises(RuntimeError, match="prepack"):
            quant_ops.quant_w4a8_panels(x, p4.q, p4.scales, p4.zeros, 64, 40)
        return
    with pytest.raises(RuntimeError, match="panel weights are for W8A8"):
        quant_ops.quant_w8_linear(x, p.q, p.scales, False)
    with pytest.raises(RuntimeError, match=r"ceil\(N/32\)"):
        quant_ops.quant_w8_linear(x, p.q, p.scales[:32], True)
    with pytest.raises(RuntimeError, match=r"ceil\(N/32\)"):
        quant_ops.quant_w8_linear(x, p.q[:, :-32].contiguous(), p.scales, True)
    with pytest.raises(RuntimeError, match=r"ceil\(N/32\)"):
        quant_ops.quant_w4a8_panels(x, p4.q, p4.scales, p4.zeros, 64, 70)
    with pytest.raises(RuntimeError, match="scales must be"):
        quant_ops.quant_w4a8_panels(x, p4.q, p4.scales[:, :1].contiguous(), p4.zeros, 64, 40)
    with pytest.raises(RuntimeError, match="multiple of the group"):
        quant_ops.quant_w4a8_panels(x, p4.q, p4.scales, p4.zeros, 96, 40)


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8-g32", "w4a8-g96-asym", "w4a8-g128", "w4a8-g1024-asym"])
@pytest.mark.parametrize("m", [16, 23, 64])
def test_batched_column_panels(quant_ops, scheme, m):
    """From 16 tokens the AVX-512 VNNI build runs W8A8 and W4A8 on column panels (kernels/quant/panel.h):
    N = 100 is three panels of 32 columns and a partial one past a grab of four (where the prefetch
    moves on to the next panel), M = 23 leaves a tile of 7 tokens, K = 2100 padded to whole groups
    ends in a short chunk (g96: chunks of 960, a group flushed mid-block pair; g1024: one group per
    chunk). Other builds run it as a check of their own kernels."""
    kernel_vs_reference(m, 100, 2100, m, lambda w: Q.quantize(w, scheme), Q.linear, Q.linear_ref)
    # the same read from panels packed once (AVX-512 VNNI; rows elsewhere)
    kernel_vs_reference(m, 100, 2100, m, lambda w: packed(w, scheme, True), Q.linear, Q.linear_ref)


@pytest.mark.parametrize("prepacked", [False, True], ids=["rows", "prepacked"])
def test_batched_w8a8_survives_int32_wraparound(quant_ops, prepacked):
    """Every weight and activation at the top code: a panel lane's flipped sum 255 * 127 * K passes 2^31
    from K ~ 66,000 and wraps; the kernel must still return the exact dot product (it fits in int32)."""
    for k in (70_000, 131_008):
        w = torch.ones(32, k)
        p = packed(w, "w8a8", prepacked)
        for m in (1, 16):
            x = torch.ones(m, k)
            assert torch.allclose(Q.linear(x, p), Q.linear_ref(x, p), rtol=1e-5), (k, m)


# ---------------------------------------------------------------- ternary and binary weights (chapter 03)

LOW_BIT = ["w2a8-ternary", "w1a4-binary"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 20), n=st.integers(1, 40), k=st.integers(1, 700), scheme=st.sampled_from(LOW_BIT),
       seed=st.integers(0, 2**16))
@example(m=1, n=1, k=1, scheme="w1a4-binary", seed=0)
@example(m=9, n=37, k=129, scheme="w2a8-ternary", seed=1)   # a second 128-block with one real weight
@example(m=9, n=37, k=513, scheme="w1a4-binary", seed=2)    # 512-bit steps and a 256-bit tail
def test_low_bit_kernels_match_reference(quant_ops, m, n, k, scheme, seed):
    """Ternary x int8 and binary x 4-bit kernels against the float64 reference on the same codes: random
    shapes cross every tile remainder (rows, tokens) and every K padding."""
    kernel_vs_reference(m, n, k, seed, lambda w: Q.quantize(w, scheme), Q.linear, Q.linear_ref)


@pytest.mark.parametrize("scheme", LOW_BIT)
@pytest.mark.parametrize("m", [1, 5, 17, 64])
@pytest.mark.parametrize("k", [333, 4096 + 17, 128, 256])
def test_low_bit_awkward_shapes(quant_ops, scheme, m, k):
    """M = 1, 5, 17, 64 against N = 37 (not a multiple of any row tile), K not a multiple of anything or
    exactly one block; a zero token and a zero weight row give exact zeros; an empty batch works."""
    g = torch.Generator().manual_seed(m * k)
    w, x = torch.randn(37, k, generator=g), torch.randn(m, k, generator=g) * 50
    x[0] = 0.0
    w[3] = 0.0
    p = Q.quantize(w, scheme)
    y, r = Q.linear(x, p), Q.linear_ref(x, p)
    assert y.shape == (m, 37) and float((y - r).abs().max()) <= 1e-5 * scale_of(x, w)
    assert bool((y[0] == 0).all())
    if scheme == "w2a8-ternary":
        assert bool((y[:, 3] == 0).all())
    else:  # a zero row has scale 1 and signs +1: its output is the token's 4-bit sum, as the reference's
        assert torch.allclose(y[:, 3], r[:, 3], rtol=1e-5, atol=1e-5 * scale_of(x, w))
    assert Q.linear(torch.randn(0, k), p).shape == (0, 37)


@pytest.mark.parametrize("scheme", LOW_BIT)
@pytest.mark.parametrize("m", [1, 6, 17])
def test_low_bit_saturated(quant_ops, scheme, m):
    """Saturated codes: every weight +-1 (ternary codes 0 and 2, all sign bits), activations at their
    extreme codes (+-127, +-7) over K = 4096 + 160 (int32 and int16 sums near their largest), and one
    huge outlier per token that rounds every other activation to code 0."""
    k = 4096 + 160
    g = torch.Generator().manual_seed(m)
    w = torch.randn(37, k, generator=g).sign()
    for x in (torch.randn(m, k, generator=g).sign() * 1e3, torch.ones(m, k), -torch.ones(m, k)):
        p = Q.quantize(w, scheme)
        assert float((Q.linear(x, p) - Q.linear_ref(x, p)).abs().max()) <= 1e-5 * scale_of(x, w)
    x = torch.randn(m, k, generator=g)
    x[:, 7] = 1e6
    p = Q.quantize(torch.ones(37, k), scheme)
    assert float((Q.linear(x, p) - Q.linear_ref(x, p)).abs().max()) <= 1e-5 * scale_of(x, torch.ones(37, k))


def test_low_bit_ops_reject_wrong_tensors(quant_ops):
    x = torch.randn(2, 300)
    for scheme in LOW_BIT:
        p = Q.quantize(torch.randn(8, 300), scheme)
        op = getattr(quant_ops, f"quant_{p.scheme.kind}_linear")
        with pytest.raises(RuntimeError, match="scales is Half; pass scales as Float"):
            op(x, p.q, p.scales.half())
        with pytest.raises(RuntimeError, match="one value per output row"):
            op(x, p.q, p.scales[:5].contiguous())
        with pytest.raises(RuntimeError, match="multiple of"):
            op(x, p.q[:, :7].contiguous(), p.scales)
        with pytest.raises(RuntimeError, match="packed is Char; pass packed as Byte"):
            op(x, p.q.view(torch.int8), p.scales)
        with pytest.raises(RuntimeError, match="columns"):
            op(torch.randn(2, p.kp + 1), p.q, p.scales)


def expected_binary_path() -> str:
    """The popcount path binary.cpp must compile for this build (kernels/quant/binary.cpp names them)."""
    level = ext.isa()
    if level == "avx512" and "avx512_vpopcntdq" in provenance.isa_features():
        return "avx512-vpopcntdq"
    return "avx2-pshufb" if level in ("avx512", "avx2") else "scalar"


def test_binary_popcount_path(quant_ops):
    """The binary kernel's popcount path follows the build's flags (ext adds -mavx512vpopcntdq where the CPU
    has it) and is named apart from the integer dot-product path."""
    assert Q.ops.binary_path() == expected_binary_path()


def test_low_bit_schemes_parse_and_print():
    t, b = Q.parse_scheme("W2A8-Ternary"), Q.parse_scheme(" w1a4-binary ")
    assert (t.wbits, t.abits, t.group, t.asym, t.kind, t.a8) == (2, 8, None, False, "ternary", True)
    assert (b.wbits, b.abits, b.group, b.asym, b.kind, b.a8) == (1, 4, None, False, "binary", False)
    assert str(t) == "w2a8-ternary" and str(b) == "w1a4-binary"
    assert Q.SCHEME_RE.match("w2a8-ternary") and Q.SCHEME_RE.match("w1a4-binary")


@pytest.mark.parametrize("bad", ["w2a8", "w1a4", "w2a4-ternary", "w1a8-binary", "w2a8-binary", "w4a8-ternary",
                                 "w2a8-g64-ternary", "w2a8-asym-ternary", "w2a8-ternary-asym", "w1a16-binary",
                                 "w8a4", "w1a4-binary-g32"])
def test_bad_low_bit_schemes_are_clear_errors(bad):
    with pytest.raises(ValueError, match="scheme"):
        Q.parse_scheme(bad)
    with pytest.raises(ValueError, match="w2a8-ternary"):
        Q.quantize(torch.randn(4, 64), bad)


def test_ternary_and_bit_packing_roundtrip_and_layout():
    c = torch.randint(0, 3, (5, 384), dtype=torch.uint8)
    p = Q.pack_ternary(c)
    assert p.shape == (5, 96) and torch.equal(Q.unpack_ternary(p), c)
    # the documented layout: byte j of a 128-block = weights j, 32 + j, 64 + j, 96 + j in bits 0-1, 2-3, 4-5, 6-7
    j = 32 + 5
    assert int(p[2, j]) == sum(int(c[2, 128 + 5 + 32 * s]) << (2 * s) for s in range(4))
    bits = torch.randint(0, 2, (3, 512), dtype=torch.uint8)
    pb = Q.pack_bits(bits)
    assert pb.shape == (3, 64) and torch.equal(Q.unpack_bits(pb), bits)
    # bit i of byte j is weight 8 j + i: little-endian 64-bit words hold weights 64 w .. 64 w + 63
    assert int(pb.view(torch.int64)[1, 3]) & (1 << 10) == int(bits[1, 64 * 3 + 10]) << 10
    with pytest.raises(ValueError, match="128"):
        Q.pack_ternary(torch.ones(2, 100, dtype=torch.uint8))
    with pytest.raises(ValueError, match="codes 0, 1, 2"):
        Q.pack_ternary(torch.full((2, 128), 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="256"):
        Q.pack_bits(torch.ones(2, 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bits 0 and 1"):
        Q.pack_bits(torch.full((2, 256), 2, dtype=torch.uint8))


def test_low_bit_quantization_follows_absmean():
    """Ternary: s = mean|w| per row, q = round(clip(w / s, -1, 1)); binary: sign(w) times mean|w|."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 300, generator=g)
    s = w.abs().mean(1, keepdim=True)
    t, b = Q.quantize(w, "w2a8-ternary"), Q.quantize(w, "w1a4-binary")
    assert torch.allclose(t.scales, s[:, 0]) and torch.allclose(b.scales, s[:, 0])
    assert torch.allclose(Q.dequantize(t), torch.round(torch.clamp(w / s, -1, 1)) * s)
    assert torch.allclose(Q.dequantize(b), torch.where(w >= 0, 1.0, -1.0) * s)
    assert bool((Q.unpack_ternary(t.q)[:, 300:] == 1).all())   # padding codes are weight 0
    z = Q.quantize(torch.zeros(2, 40), "w2a8-ternary")
    assert torch.equal(z.scales, torch.ones(2)) and bool((Q.dequantize(z) == 0).all())


def test_low_bit_bytes_count_scales():
    """bits per weight: exactly 2 (ternary) and 1 (binary) plus one fp32 scale per row of K weights."""
    n, k = 16, 4096
    t, b = Q.quantize(torch.randn(n, k), "w2a8-ternary"), Q.quantize(torch.randn(n, k), "w1a4-binary")
    assert t.nbytes == n * (k // 4 + 4) and b.nbytes == n * (k // 8 + 4)
    assert t.bits_per_weight == 2 + 32 / k and b.bits_per_weight == 1 + 32 / k
    assert t.q.dtype == b.q.dtype == torch.uint8 and t.scales.dtype == b.scales.dtype == torch.float32
    r = Q.random_packed("w2a8-ternary", n, 300)
    assert r.nbytes == Q.quantize(torch.randn(n, 300), "w2a8-ternary").nbytes == n * (384 // 4 + 4)
    assert Q.random_packed("w1a4-binary", n, 300).q.shape == (n, 512 // 8)


def test_low_bit_fallback_and_accuracy(monkeypatch):
    """Without the build, linear runs the reference; the fake-quant path models the same arithmetic;
    the layer error is what ternary (about 0.3 relative) and binary (about 0.6) weights cost on Gaussians."""
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 512, generator=g), torch.randn(4, 512, generator=g)
    true = x @ w.T
    for scheme, tol in (("w2a8-ternary", 0.6), ("w1a4-binary", 0.8)):
        p = Q.quantize(w, scheme)
        y = Q.linear(x, p)
        assert float((y - true).norm() / true.norm()) < tol, scheme
        assert torch.allclose(Q.fake_linear(x, p), Q.linear_ref(x, p), rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(Q.ops, "available", lambda: False)
    assert Q.ops.binary_path() == "torch-fallback"
    for scheme in LOW_BIT:
        p = Q.quantize(w[:9, :70], scheme)
        assert torch.equal(Q.linear(x[:, :70], p), Q.linear_ref(x[:, :70], p))


def test_int8_peak_probe_computes_its_sums(quant_ops):
    """The int8 roof probe does the arithmetic it claims (so its GOP/s count real work): each int32 lane
    of a thread's row sums iters x 4 products u x s per chain, u = 3 + c % 4, s = -5 - c % 3; AVX-512 VNNI
    builds step 16 lanes at a time, as their W8A8/W4A8 kernels do (a 256-bit probe was beaten by them)."""
    from effnb.quant import ops
    if not Q.backend().startswith("cpp-") or Q.backend() == "cpp-scalar":
        pytest.skip("the scalar build's probe sums another pattern")
    threads = ext.omp_threads("quant")
    out = torch.full((16 * threads,), -1, dtype=torch.int32)
    torch.ops.effnb.quant_peak_int8(out, 1000)
    chains, lanes = torch.ops.effnb.quant_peak_chains(out), torch.ops.effnb.quant_peak_lanes(out)
    assert lanes in ((8, 16) if Q.backend() == "cpp-avx512-vnni" else (8,)), (lanes, Q.backend())
    lane = 1000 * 4 * sum((3 + c % 4) * (-5 - c % 3) for c in range(chains))
    rows = out.view(threads, 16)
    assert bool((rows[:, :lanes] == lane).all()) and bool((rows[:, lanes:] == 0).all()), rows
    assert ops.peak_int8(iters=100_000, repeats=2) > 0


@pytest.mark.parametrize("group", [64, 128, 256])
@pytest.mark.parametrize("m", [7, 8, 11, 64])
def test_dgq_register_tiles(quant_ops, group, m):
    """DGQ's block kernel: the 2-row tile at M >= 8 with a lone last row (N = 37), single tokens after
    the 3-token tiles, more than 4 blocks per group (g256: two integer-scale multiplies per group)."""
    kernel_vs_reference(m, 37, 600, m, lambda w: Q.dgq_pack(w, group), Q.dgq_linear, Q.dgq_linear_ref)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 9), n=st.integers(1, 30), k=st.integers(1, 400), group=st.sampled_from([64, 128, 256]),
       seed=st.integers(0, 999))
def test_dgq_kernel_matches_reference(quant_ops, m, n, k, group, seed):
    w, p = kernel_vs_reference(m, n, k, seed, lambda w: Q.dgq_pack(w, group), Q.dgq_linear, Q.dgq_linear_ref)
    assert torch.allclose(Q.dgq_dequantize(p), Q.dgq_quantize(w, group)["weight"], atol=1e-6)


def test_dgq_kernel_batched_and_bad_inputs(quant_ops):
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(37, 333, generator=g), torch.randn(64, 333, generator=g) * 40
    x[0] = 0.0
    p = Q.dgq_pack(w, 64)
    y, r = Q.dgq_linear(x, p), Q.dgq_linear_ref(x, p)
    assert float((y - r).abs().max()) <= 1e-5 * scale_of(x, w) and bool((y[0] == 0).all())
    assert p.nbytes == 37 * (384 // 2 + 384 // 64 + 4)  # codes, integer group scales, channel scale
    with pytest.raises(RuntimeError, match="kint must be"):
        quant_ops.quant_dgq_linear(x, p.q, p.kint[:, :1].contiguous(), p.scale, 64)
    with pytest.raises(RuntimeError, match="multiple of 64"):
        quant_ops.quant_dgq_linear(x, p.q, p.kint, p.scale, 32)


def test_cpp_op_rejects_wrong_tensors(quant_ops):
    p = Q.quantize(torch.randn(8, 64), "w4a16-g64")
    with pytest.raises(RuntimeError, match="x is Double; pass x as Float"):
        quant_ops.quant_w4_linear(torch.randn(1, 64).double(), p.q, p.scales, p.zeros, 64, False)
    with pytest.raises(RuntimeError, match="scales is Float; pass scales as Half"):
        quant_ops.quant_w4_linear(torch.randn(1, 64), p.q, p.scales.float(), p.zeros, 64, False)
    with pytest.raises(RuntimeError, match="group"):
        quant_ops.quant_w4_linear(torch.randn(1, 64), p.q, p.scales, p.zeros, 48, False)
    with pytest.raises(RuntimeError, match="columns"):
        quant_ops.quant_w4_linear(torch.randn(1, 65), p.q, p.scales, p.zeros, 64, False)
    with pytest.raises(RuntimeError, match="strided"):
        quant_ops.quant_w4_linear(torch.randn(64, 2).T, p.q, p.scales, p.zeros, 64, False)


def op_case(case: str):
    """(op name, arguments) of one op call on a 24 x 200 weight and 5 tokens."""
    g = torch.Generator().manual_seed(7)
    w, x = torch.randn(24, 200, generator=g), torch.randn(5, 200, generator=g)
    if case == "dgq":
        p = Q.dgq_pack(w, 64)
        return "quant_dgq_linear", (x, p.q, p.kint, p.scale, p.group)
    p = Q.quantize(w, case.removesuffix("-panels"))
    if case.endswith("-panels"):
        p = Q.to_panels(p)
    if p.scheme.kind:
        return f"quant_{p.scheme.kind}_linear", (x, p.q, p.scales)
    if p.scheme.wbits == 8:
        return "quant_w8_linear", (x, p.q, p.scales, p.scheme.a8)
    if p.layout == "panels":
        return "quant_w4a8_panels", (x, p.q, p.scales, p.zeros, p.group, p.n)
    return "quant_w4_linear", (x, p.q, p.scales, p.zeros, p.group, p.scheme.a8)


@pytest.mark.parametrize("case", ["w8a16", "w8a8", "w8a8-panels", "w4a16-g64-asym", "w4a8-g32", "w4a8-g32-panels",
                                  "w4a8-g64-asym-panels", "dgq", "w2a8-ternary", "w1a4-binary"])
def test_opcheck(quant_ops, case):
    """Schema, fake kernel (shape and dtype under FakeTensor and dynamic shapes) and the C++ kernel agree."""
    if case.endswith("-panels") and Q.a8_layout() != "panels":
        case = case.removesuffix("-panels")  # this build reads rows only (the ISA reruns must not skip)
    name, args = op_case(case)
    torch.library.opcheck(getattr(quant_ops, name).default, args)


@pytest.mark.parametrize("case", ["w8a8", "w8a8-panels", "w4a16-g64-asym", "w4a8-g64-asym-panels", "dgq", "w2a8-ternary",
                                  "w1a4-binary"])
def test_fake_kernels_need_no_build(case):
    """The schemas and fake kernels live in Python: shapes propagate even where nothing is compiled."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    Q.ops.available()  # declares the schemas and fakes, built or not
    name, args = op_case(case)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        y = getattr(torch.ops.effnb, name)(*fake)
    assert tuple(y.shape) == (5, 24) and y.dtype == torch.float32


def test_fallback_path_equals_reference(monkeypatch):
    """Forced fallback (as without a compiler): linear and dgq_linear run the references, and say so."""
    w = torch.randn(9, 70)
    p, pd_ = Q.quantize(w, "w4a8-g32"), Q.dgq_pack(torch.randn(9, 130), 64)
    x, xd = torch.randn(3, 70), torch.randn(3, 130)
    p8, p4 = Q.to_panels(Q.quantize(w, "w8a8")), Q.to_panels(Q.quantize(w, "w4a8-g64-asym"))
    monkeypatch.setattr(Q.ops, "available", lambda: False)
    assert Q.backend() == "torch-fallback" and Q.backend_of("w4a8") == "torch-fallback"
    assert torch.equal(Q.linear(x, p), Q.linear_ref(x, p))
    assert Q.a8_layout() == "rows" and torch.equal(Q.linear(x, p8), Q.linear_ref(x, p8))
    assert torch.equal(Q.linear(x, p4), Q.linear_ref(x, p4))
    assert torch.equal(Q.dgq_linear(xd, pd_), Q.dgq_linear_ref(xd, pd_))
    assert Q.linear(torch.randn(0, 70), p).shape == (0, 9)  # an empty batch, as the kernel allows


def test_backend_is_decided_once(monkeypatch):
    """A hot path may ask backend() per call: it must not hash sources or load libraries again."""
    first = Q.backend()
    monkeypatch.setattr(ext, "load", lambda family: pytest.fail("backend() loaded the family again"))
    monkeypatch.setattr(ext, "key", lambda *a: pytest.fail("backend() hashed the family again"))
    assert [Q.backend() for _ in range(3)] == [first] * 3


KERNEL_TESTS = ["test_the_path_under_test", "test_linear_matches_reference", "test_linear_awkward_and_batched",
                "test_low_bit_kernels_match_reference", "test_low_bit_awkward_shapes", "test_low_bit_saturated",
                "test_low_bit_ops_reject_wrong_tensors", "test_binary_popcount_path", "test_w8a8_tiles", "test_int8_peak_probe_computes_its_sums", "test_w4a8_register_tiles", "test_w4a8_small_batches_and_long_groups", "test_dgq_register_tiles", "test_dgq_kernel_matches_reference",
                "test_dgq_kernel_batched_and_bad_inputs", "test_cpp_op_rejects_wrong_tensors", "test_opcheck",
                "test_a8_layout_follows_the_build", "test_batched_w8a8_survives_int32_wraparound"]


@pytest.mark.skipif(ext.compiler() is None, reason="no C++ compiler: only the fallback runs here")
@pytest.mark.isa_build("quant", level="avx2", env={"EFFNB_CXXFLAGS": ""})
def test_avx2_path_on_a_wider_cpu():
    """The plain AVX2 path (maddubs into int16, madd to widen) is what AVX2-only CPUs run; on an
    AVX-512 CPU EFFNB_ISA=avx2 builds it apart so that it is tested here too."""
    if ext.cpu_level() != "avx512":
        pytest.skip(f"this CPU's widest level is {ext.cpu_level()}: the default build above already is that path")
    rerun_at_isa("quant", "avx2", __file__, KERNEL_TESTS, env={"EFFNB_CXXFLAGS": ""})


@pytest.mark.isa_build("quant", level="avx2", env={"EFFNB_CXXFLAGS": EMULATE})
def test_vnni_code_path_with_an_avx2_stand_in():
    """The VNNI path (vpdpbusd into int32 lanes, no int16 sums) cannot run on a CPU without VNNI.
    Compiled for AVX2 with a stand-in for the one instruction, its accumulation logic must pass
    the kernel tests; a VNNI machine also runs the real instruction through them (the default build)."""
    rerun_at_isa("quant", "avx2", __file__, KERNEL_TESTS, env={"EFFNB_CXXFLAGS": EMULATE},
                 expect="avx2-emulated-vnni")


# ---------------------------------------------------------------- the Python API

def test_quantization_is_accurate_enough():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(64, 512, generator=g), torch.randn(4, 512, generator=g)
    true = x @ w.T
    for scheme, tol in [("w8a16", 0.01), ("w8a8", 0.02), ("w4a16-g64", 0.12), ("w4a8-g64", 0.13)]:
        y = Q.linear(x, Q.quantize(w, scheme))
        assert float((y - true).norm() / true.norm()) < tol, scheme


def test_inputs_bf16_3d_and_noncontiguous():
    w = torch.randn(24, 96)
    p = Q.quantize(w, "w4a8-g32")
    x = torch.randn(2, 3, 96)
    assert Q.linear(x, p).shape == (2, 3, 24)
    assert torch.equal(Q.linear(x[1], p), Q.linear(x, p)[1])  # the 2-D fp32 fast path agrees with prep_x's
    xt = torch.randn(96, 5).T  # non-contiguous
    assert torch.allclose(Q.linear(xt, p), Q.linear(xt.contiguous(), p))
    xb = x.bfloat16()
    assert torch.allclose(Q.linear(xb, p), Q.linear(xb.float(), p))
    assert Q.linear(torch.randn(0, 96), p).shape == (0, 24)


def test_bad_inputs_are_clear_errors():
    p = Q.quantize(torch.randn(8, 64), "w8a8")
    with pytest.raises(ValueError, match="K=64"):
        Q.linear(torch.randn(2, 63), p)
    with pytest.raises(TypeError):
        Q.linear(torch.ones(2, 64, dtype=torch.int32), p)
    with pytest.raises(TypeError):
        Q.linear(torch.randn(2, 64), "not packed")
    with pytest.raises(ValueError):
        Q.quantize(torch.randn(8), "w8a8")
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(torch.full((2, 32), float("nan")), "w4a16-g32")
    with pytest.raises(TypeError):
        Q.quantize(torch.ones(2, 32, dtype=torch.int64), "w8a8")


def test_random_packed_shapes_match_quantize():
    for s in ("w8a8", "w4a16-g128", "w4a8-g64-asym"):
        a, b = Q.random_packed(s, 16, 200), Q.quantize(torch.randn(16, 200), s)
        assert a.nbytes == b.nbytes and a.q.shape == b.q.shape and a.scales.dtype == b.scales.dtype


# ---------------------------------------------------------------- modules and variants

def test_quantize_module_replaces_linears_and_reports_bytes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32))
    x = torch.randn(3, 64)
    ref = model(x)
    report = Q.quantize_module(model, "w8a16")
    assert [r["layer"] for r in report] == ["0", "2"]
    assert report[0]["bytes_fp32"] == 4 * 64 * 128 and report[0]["bytes_quant"] < report[0]["bytes_fp32"] / 3
    assert isinstance(model[0], Q.QuantLinear)
    y = model(x)
    assert float(((y - ref).norm() / ref.norm()).detach()) < 0.02
    big = model(torch.randn(100, 64))  # past kernel_max_m: the torch path, same arithmetic
    assert big.shape == (100, 32)
    with pytest.raises(ValueError):
        Q.quantize_module(torch.nn.Sequential(torch.nn.Linear(4, 4)), "w5a16")


def test_kernel_and_torch_paths_of_quantlinear_agree():
    p = Q.quantize(torch.randn(48, 160), "w4a8-g32")
    x = torch.randn(7, 160)
    assert torch.allclose(Q.linear(x, p), Q.fake_linear(x, p), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- GPTQ and calibration

def correlated_inputs(rows, k, seed=0):
    """Inputs that mostly live in a subspace of a quarter of the channels, with channels of very
    different sizes: the correlations GPTQ exploits (a transformer's activations have them)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(rows, k // 4, generator=g) @ torch.randn(k // 4, k, generator=g)
    x = low + 0.05 * torch.randn(rows, k, generator=g)
    return x * torch.logspace(-0.5, 0.5, k)[torch.randperm(k, generator=g)]


@pytest.mark.parametrize("scheme", ["w4a16-g64", "w4a8-g32-asym", "w4a16"])
def test_gptq_lowers_the_output_error_in_the_same_format(scheme):
    n, k = 40, 200
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
    x = correlated_inputs(2000, k)
    rtn, gq = Q.quantize(w, scheme), Q.quantize(w, scheme, hessian=x.double().T @ x.double())
    assert (gq.q.shape, gq.scales.shape, gq.zeros.shape) == (rtn.q.shape, rtn.scales.shape, rtn.zeros.shape)
    err = lambda p: float((x @ w.T - x @ Q.dequantize(p).T).norm())
    assert err(gq) < 0.8 * err(rtn)
    xt = x[:5]
    assert float((Q.linear(xt, gq) - Q.linear_ref(xt, gq)).abs().max()) <= 1e-5 * scale_of(xt, w)
    assert bool((Q.dequantize(gq)[:, k:] == 0).all()) and Q.unpack_int4(gq.q).max() <= 15


def test_gptq_bad_inputs_are_clear_errors():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="hessian must be"):
        Q.quantize(w, "w4a16-g32", hessian=torch.eye(63))
    with pytest.raises(ValueError, match="int4"):
        Q.quantize(w, "w8a16", hessian=torch.eye(64))
    with pytest.raises(ValueError, match="NaN"):
        Q.quantize(w, "w4a16-g32", hessian=torch.full((64, 64), float("nan")))
    dead = torch.zeros(64, 64)  # an input channel that is always zero is fine: its weights are dropped
    dead[:32, :32] = torch.eye(32)
    p = Q.quantize(w, "w4a16-g32", hessian=dead)
    assert bool((Q.dequantize(p)[:, 32:] == 0).all())


def test_calibrate_collects_xtx_and_removes_its_hooks():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(2, 5, 8)
    h = Q.calibrate(model, lambda m: m(x))
    flat = x.reshape(-1, 8).double()
    assert torch.allclose(h["0"], flat.T @ flat)
    assert h["2"].shape == (16, 16)
    assert not model[0]._forward_hooks and not model[2]._forward_hooks
    ref = model(x)
    report = Q.quantize_module(model, "w4a16-g32", hessians=h)
    with torch.no_grad():
        assert len(report) == 2 and float((model(x) - ref).norm() / ref.norm()) < 0.2
    with pytest.raises(ValueError, match="no hessian"):
        Q.quantize_module(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w4a16-g32", hessians={})
    with pytest.raises(ValueError, match="never called"):
        Q.calibrate(torch.nn.Sequential(torch.nn.Linear(8, 8)), lambda m: None)


def test_finequant_refines_only_with_outliers():
    g = torch.Generator().manual_seed(1)
    smooth = torch.rand(64, 1024, generator=g) * 2 - 1  # uniform: no outliers, max/rms = sqrt(3)
    assert Q.finequant_group(smooth) is None
    spiky = smooth.clone()
    spiky[:, ::97] = 30.0
    assert Q.finequant_group(spiky) is not None
    assert Q.outlier_share(spiky, 32) < Q.outlier_share(spiky, None)


def test_dgq_is_int8_compatible_and_accurate():
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2))
    out = Q.dgq_quantize(w, group=64)
    assert out["w8"].dtype == torch.int8 and int(out["group_scale"].min()) >= 1
    recon = out["w8"].float() * out["scale"][:, None]
    assert torch.allclose(recon, out["weight"], atol=1e-5)
    assert float((out["weight"] - w).norm() / w.norm()) < 0.15


def test_qserve_progressive_stays_in_int8():
    w = torch.randn(16, 300, generator=torch.Generator().manual_seed(3))
    out = Q.qserve_quantize(w, group=128)
    assert int(out["q8"].abs().max()) <= 127 and int(out["u4"].max()) <= 15
    assert float((out["weight"] - w).norm() / w.norm()) < 0.15


# ---------------------------------------------------------------- the peers and the benchmark spec

needs_ort = pytest.mark.skipif(not Q.ort_available(), reason="onnx and onnxruntime are not installed")


@needs_ort
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 5), n=st.integers(1, 40), k=st.integers(1, 300), bs=st.sampled_from([32, 64, 128]),
       asym=st.booleans(), seed=st.integers(0, 2**16))
def test_ort_matmulnbits_matches_dequantized_reference(m, n, k, bs, asym, seed):
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    run = Q.ort_matmulnbits(w, bs, threads=1, asym=asym)
    pk = run.packed
    nb = -(-k // bs)
    assert pk["B"].shape == (n, nb, bs // 2) and pk["scales"].shape == (n * nb,)
    assert (pk["zero_points"] is None) == (not asym)
    wq = pk["w"]
    # at most half a quantization step from the original weight
    step = torch.from_numpy(pk["scales"]).view(n, nb).repeat_interleave(bs, 1)[:, :k]
    assert bool(((wq - w).abs() <= 0.5 * step * (1 + 1e-5) + 1e-6).all())
    y = torch.from_numpy(run(x)).double()
    ref = x.double() @ wq.double().T
    assert y.shape == (m, n)
    assert float((y - ref).abs().max()) <= 1e-5 * scale_of(x, wq)


@needs_ort
def test_ort_int8_activations_and_bad_block():
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(24, 200, generator=g), torch.randn(3, 200, generator=g)
    run = Q.ort_matmulnbits(w, 64, threads=1, accuracy_level=4)
    ref = x.double() @ run.packed["w"].double().T
    # accuracy level 4 quantizes activations to int8 per block: close, not exact
    assert float((torch.from_numpy(run(x)).double() - ref).abs().max()) <= 1e-2 * scale_of(x, run.packed["w"])
    with pytest.raises(ValueError, match="block_size"):
        Q.ort_pack(w, 48)


@needs_ort
def test_ort_peer_in_benchmark_factories():
    facs = Q.peer_factories(group=32, ours=(), threads=1, ort_levels=(0, 4))
    assert "ort4" in facs and "ort0" in facs and "dynamic" in facs
    out = facs["ort4"]((2, 16, 64))()
    assert out.shape == (2, 16)
    assert Q.weight_bytes("ort4", 16, 64, 32) == 16 * 2 * (16 + 4)
    assert Q.label("ort4", 32) == Q.ort_name(32, 4)


def test_our_providers_in_benchmark_factories():
    facs = Q.peer_factories(group=64, ours=("w4a8", "dgq"), peers=False)
    assert list(facs) == ["w4a8", "dgq"]
    for fac in facs.values():
        assert fac((3, 16, 128))().shape == (3, 16)
    assert Q.weight_bytes("dgq", 16, 128, 64) == 16 * (64 + 2 + 4)
    assert Q.weight_bytes("w4a8", 16, 128, 64) == 16 * (64 + 2 * 2)
    assert Q.label("w4a8", 64) == "ours w4a8-g64" and Q.label("dgq", 64) == "ours dgq-w4a8-g64"


def test_benchmark_is_a_perf_spec_with_the_fastest_peers():
    """One perf.Benchmark per shape: our kernels name their real backend, the fastest 4-bit peer
    (onnxruntime) and torch's dynamic int8 race with them, each with its own byte count."""
    spec = Q.benchmark((16, 128), [1, 3], group=64, cold=False, repeats=3, warmup=1, threads=1)
    assert isinstance(spec, perf.Benchmark) and spec.baseline == "fp32" and spec.x == "M"
    by_key = {p.key: p for p in spec.providers}
    assert {"fp32", "int4pack", "dynamic", *Q.OURS} <= set(by_key)
    assert ("ort4" in by_key) == Q.ort_available()
    assert all(by_key[k].ours and by_key[k].backend == Q.backend() for k in Q.OURS)
    assert by_key["fp32"].bytes_moved(1) == 4 * 16 * 128 + 4 * 128 + 4 * 16
    assert by_key["int4pack"].bytes_moved(1) < by_key["w8a8"].bytes_moved(1) < by_key["fp32"].bytes_moved(1)
    res = spec.run(progress=False)
    runs = {"16x128": res}
    table = Q.speed_table(runs)
    assert set(table["key"]) == set(Q.OURS) and list(table["M"].unique()) == [1, 3]
    four = Q.speed_table(runs, peers=Q.FOUR_BIT_PEERS, baseline="int4pack")
    assert set(four["fastest peer"]) <= {Q.label(k, 64) for k in Q.FOUR_BIT_PEERS}
    r = Q.ratio(runs, "w4a8", "fp32", 3)
    assert float(r["16x128"]) == pytest.approx(res.time("fp32", 3) / res.time("w4a8", 3))
    share = Q.dequant_share(runs)
    assert list(share.index) == [1, 3] and list(share.columns) == ["16x128"]
    assert len(Q.roofline_points(runs)) == len(spec.providers)


def test_integer_kernels_are_held_to_the_int8_roof():
    """% of roof: u8 x s8 kernels against the int8 roof (probed by speed_table when the limits lack it),
    float ones against fp32 FMA, binary's popcount against nothing (no probe): an int8 kernel measured
    against the fp32 roof read up to 280% of it."""
    spec = Q.benchmark((16, 128), [2], group=64, ours=("w4a16", "w8a8", "w4a8"), peers=False, cold=False,
                       repeats=3, warmup=1, threads=1)
    assert {p.key: p.compute_roof for p in spec.providers} == {"w4a16": "peak_gflops", "w8a8": Q.INT8_ROOF,
                                                              "w4a8": Q.INT8_ROOF}
    assert Q.compute_roof("w1a4-binary") not in {"peak_gflops", Q.INT8_ROOF}
    # torch's bf16-activation peers ran above the fp32 FMA roof (bf16 dot products): no roof of ours holds them
    assert all(Q.compute_roof(k) not in {"peak_gflops", Q.INT8_ROOF} for k in ("bf16", "int8pack", "int4pack"))
    runs = {"16x128": spec.run(progress=False)}
    # a memory roof far above anything, so the compute roofs bind: % of roof = GOP/s / that roof
    limits = {"read_gbps": 1e9, "peak_gflops": 1.0}
    low = Q.speed_table(runs, {**limits, Q.INT8_ROOF: 2.0}).set_index("key")["% of roof"]
    high = Q.speed_table(runs, {**limits, Q.INT8_ROOF: 4.0}).set_index("key")["% of roof"]
    assert low["w8a8"] == pytest.approx(2 * high["w8a8"]) and low["w4a16"] == pytest.approx(high["w4a16"])
    probed = Q.speed_table(runs, limits).set_index("key")["% of roof"]    # the int8 roof probed here
    assert probed["w8a8"] < low["w8a8"] / 10 and probed["w4a16"] == pytest.approx(low["w4a16"], rel=0.05)


def test_settle_roofs_leaves_no_row_above_any_roof():
    """A read probe taken under load put fbgemm at 177% and our W8A8 at 124% of it: after
    ``settle_roofs`` every % of roof and % of read bandwidth is at most 100, the int8 roof included."""
    spec = Q.benchmark((16, 128), [2], group=64, ours=("w4a16", "w8a8"), peers=False, cold=False,
                       repeats=3, warmup=1, threads=1)
    runs = {"16x128": spec.run(progress=False)}
    tiny = {"read_gbps": 1e-6, "peak_gflops": 1e-6, Q.INT8_ROOF: 1e-6, "probe_count": 1}
    probes = []
    limits, phrase, info = perf.settle(runs, tiny, lambda: probes.append(1) or dict(tiny, probe_count=2))
    assert probes == [1] and info["reprobed"] and set(info["lifted"]) == {"read_gbps", "peak_gflops", Q.INT8_ROOF}
    assert "takes the fastest kernel as the roof" in phrase and "16x128" in phrase
    assert limits[Q.INT8_ROOF] == pytest.approx(float(runs["16x128"].df.set_index("provider")["gflops"]["w8a8"]))
    assert (Q.speed_table(runs, limits)["% of roof"] <= 100 + 1e-9).all()
    assert (Q.measurements(runs, limits)["% read bw"] <= 100 + 1e-9).all()
    again = perf.settle(runs, limits, lambda: probes.append(1) or {})
    assert probes == [1] and again[1].startswith("No kernel") and again[0] == limits


def test_cold_benchmark_without_peers_uses_our_first_kernel_as_baseline():
    spec = Q.benchmark((8, 64), [2], group=64, ours=("w4a16", "w4a8"), peers=False, repeats=3, warmup=1)
    assert spec.baseline == "w4a16" and spec.cold
    warm = dataclasses.replace(spec, cold=False)  # cold copies of a tiny weight would be thousands
    table = Q.speed_table({"8x64": warm.run(progress=False)}, baseline="w4a16")
    assert list(table["key"]) == ["w4a16", "w4a8"]


# ---------------------------------------------------------------- shared data and the package's boundaries

def test_stdlib_docstrings_are_real_distinct_and_reproducible():
    from effnb.data.stdlib_text import stdlib_docstrings
    a, b = stdlib_docstrings(30, seed=1), stdlib_docstrings(30, seed=1)
    assert a == b and len(set(a)) == 30 and all(40 <= len(t) <= 400 for t in a)
    with pytest.raises(ValueError, match="pass n"):
        stdlib_docstrings(10**6)


def test_beside_phrase_follows_the_probe():
    import pandas as pd

    def frame(probe_pct):  # shape a is where our W4A8 came lowest against the roof
        return pd.DataFrame([
            {"shape": "a", "key": "w4a8", "% of roof": 60.0, "% of probe": 95.0, "probe % of roof": probe_pct},
            {"shape": "b", "key": "w4a8", "% of roof": 66.0, "% of probe": 90.0, "probe % of roof": 80.0}])
    low = Q.beside_phrase(frame(63.0), target=70.0)
    assert "(a)" in low and "at 63%" in low and "missed the target too" in low and "took 95%" in low
    high = Q.beside_phrase(frame(75.0), target=70.0)
    assert "(a)" in high and "could deliver" in high and "missed" not in high and "75-80%" in high


def test_ceiling_phrase_follows_the_peer_and_the_roof():
    import pandas as pd
    # 1000x1000 at M = 50: 1e8 ops; 0.1 ms is 1000 GOP/s for ours, the peer 1.05x slower (952 GOP/s)
    rows = pd.DataFrame([
        {"shape": "1000x1000", "M": 1, "ms": 0.01, "vs fastest peer": 0.5, "fastest peer": "p1"},
        {"shape": "1000x1000", "M": 50, "ms": 0.1, "vs fastest peer": 1.05, "fastest peer": "fbgemm"},
        {"shape": "1000x1000", "M": 16, "ms": 0.05, "vs fastest peer": 1.3, "fastest peer": "fbgemm"}])
    tight = Q.ceiling_phrase(rows, {Q.INT8_ROOF: 1100.0}, target=1.2)   # the M = 1 row is not batched
    assert "M = 50 (1.05x)" in tight and "91% of the int8 roof" in tight and "(fbgemm) at 87%" in tight
    assert "1.16x that peer, under the 1.2x target" in tight and "can meet" in tight
    # M = 16 met the target; a second miss (1000 GOP/s, the peer 909) whose ceiling 1.21x clears it is ours
    two = pd.concat([rows, pd.DataFrame([{"shape": "1000x2000", "M": 64, "ms": 0.256, "vs fastest peer": 1.1,
                                          "fastest peer": "fbgemm"}])], ignore_index=True)
    both = Q.ceiling_phrase(two, {Q.INT8_ROOF: 1100.0}, target=1.2)
    assert both.startswith("Our W8A8 came lowest at 1000x1000, M = 50") and "M = 16" not in both
    assert "gap is our kernel's: 1000x2000, M = 64 (1.10x, ceiling 1.21x)." in both
    assert "Elsewhere" not in tight
    loose = Q.ceiling_phrase(rows, {Q.INT8_ROOF: 1500.0}, target=1.2)
    assert "1.57x that peer, above" in loose and "gap is our kernel's" in loose
    met = Q.ceiling_phrase(rows, {Q.INT8_ROOF: 1500.0}, target=1.0)
    assert "meets the 1x target" in met and "gap" not in met
    assert "not known" in Q.ceiling_phrase(rows, {}, target=1.2)
    assert "not known" in Q.ceiling_phrase(rows[rows["M"] == 1], {Q.INT8_ROOF: 1100.0}, target=1.2)


def test_read_beside_rows_and_shares(quant_ops):
    df = Q.read_beside([(512, 4096)], {"read_gbps": 50.0}, keys=("w4a8", "w8a8"), repeats=3)
    assert list(df["key"]) == ["w4a8", "w8a8"] and (df["backend"] == Q.backend()).all()
    assert np.allclose(df["% of roof"], 2 * df["GB/s"]) and np.allclose(df["probe % of roof"], 2 * df["probe GB/s"])
    assert np.allclose(df["% of probe"], 100 * df["GB/s"] / df["probe GB/s"])
    assert (df["spread"] >= 0).all() and (df["probe spread"] >= 0).all()
