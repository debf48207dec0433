"""Chapter 10's quantized KV cache: the int8 / int4 per-group format (round trip, packing, bad inputs)
and the fused decode kernel over it against its float64 reference and against dequantize + SDPA,
on awkward shapes, at every thread count, and at the AVX2 level."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_cpp_under_test, rerun_at_isa
from effnb import ext, threads
from effnb.longcontext import ops, reference
from effnb.longcontext import kvquant

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the format

@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("d, group", [(64, 32), (32, 16), (128, 64), (12, 3)])
def test_round_trip_is_within_half_a_step(bits, d, group):
    x = torch.randn(3, 50, d, generator=torch.Generator().manual_seed(1)) * 3
    codes, scale, mins = kvquant.quantize_kv(x, bits, group)
    assert codes.dtype == torch.uint8 and codes.shape == (3, 50, d * bits // 8)
    assert scale.shape == mins.shape == (3, 50, d // group)
    back = kvquant.dequantize_kv(codes, scale, mins, bits, group)
    step = scale.repeat_interleave(group, dim=-1)
    assert back.dtype == torch.float32 and back.shape == x.shape
    assert bool(((back - x).abs() <= step / 2 + 1e-6 * (1 + x.abs())).all())
    # every group's min and max come back (to rounding): the codes 0 and 2^bits - 1 are used
    xg, bg = x.reshape(3, 50, -1, group), back.reshape(3, 50, -1, group)
    torch.testing.assert_close(bg.amin(-1), xg.amin(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(bg.amax(-1), xg.amax(-1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bits", [4, 8])
def test_constant_groups_come_back_exactly(bits):
    x = torch.randn(2, 5, 64)
    x[:, :, :32] = 0.37
    x[1, 2] = -4.5
    codes, scale, mins = kvquant.quantize_kv(x, bits, 32)
    assert bool((scale[:, :, 0] == 0).all()) and bool((scale[1, 2] == 0).all())
    back = kvquant.dequantize_kv(codes, scale, mins, bits, 32)
    assert torch.equal(back[:, :, :32], x[:, :, :32]) and torch.equal(back[1, 2], x[1, 2])


def test_int4_packs_channel_2j_in_the_low_nibble():
    # one group of 4 channels from 0 to 15: codes are the values themselves
    x = torch.tensor([[[0.0, 15.0, 3.0, 9.0]]])
    codes, scale, mins = kvquant.quantize_kv(x, 4, 4)
    assert scale.item() == 1.0 and mins.item() == 0.0
    assert codes.tolist() == [[[0x0 | 0xF << 4, 0x3 | 0x9 << 4]]]
    assert kvquant.unpack_codes(codes, 4).tolist() == [[[0, 15, 3, 9]]]
    assert torch.equal(kvquant.dequantize_kv(codes, scale, mins, 4, 4), x)


def test_kv_bytes_counts_codes_scales_and_mins_of_keys_and_values():
    x = torch.randn(3, 10, 64)
    for bits in (4, 8):
        held = sum(t.numel() * t.element_size() for t in kvquant.quantize_kv(x, bits, 32))
        assert kvquant.kv_bytes(10, 3, 64, bits, 32) == 2 * held
    assert kvquant.kv_bytes(8192, 3, 64, 4, 32) == 2 * 8192 * 3 * (32 + 16)   # vs fp32's 2 * 8192 * 3 * 256


BAD_QUANTIZE = [
    (lambda: kvquant.quantize_kv(torch.randn(3, 4, 64).double(), 8, 32), r"x is torch.float64; pass x.float\(\)"),
    (lambda: kvquant.quantize_kv(torch.randn(4, 64), 8, 32), r"x is 2-D \(4, 64\); pass one layer's keys"),
    (lambda: kvquant.quantize_kv(torch.randn(3, 4, 64), 8, 24), "group = 24 does not divide d = 64"),
    (lambda: kvquant.quantize_kv(torch.randn(3, 4, 64), 2, 32), "bits is 2; pass 4 or 8"),
    (lambda: kvquant.quantize_kv(torch.randn(3, 4, 64), 8, 0), "group is 0; pass a positive channel count"),
    (lambda: kvquant.quantize_kv(torch.randn(3, 4, 9), 4, 3), "d = 9 is odd"),
    (lambda: kvquant.quantize_kv(torch.full((1, 1, 4), math.nan), 8, 4), "x holds NaN or inf"),
    (lambda: kvquant.quantize_kv([[[1.0]]], 8, 1), "x must be a torch.Tensor, got list"),
    (lambda: kvquant.dequantize_kv(torch.zeros(1, 2, 32, dtype=torch.uint8), torch.zeros(1, 2, 2),
                                   torch.zeros(1, 2, 2), 4, 16), r"pass \(Hkv, n, d // group\) = \(1, 2, 4\)"),
    (lambda: kvquant.dequantize_kv(torch.zeros(1, 2, 32), torch.zeros(1, 2, 1), torch.zeros(1, 2, 1), 8, 32),
     "codes is torch.float32; pass the torch.uint8 tensor"),
    (lambda: kvquant.kv_bytes(10, 3, 64, 3, 32), "bits is 3; pass 4 or 8"),
    (lambda: kvquant.kv_bytes(-1, 3, 64, 8, 32), "n_tokens is -1"),
]


@pytest.mark.parametrize("call, message", BAD_QUANTIZE)
def test_bad_format_inputs_say_what_to_pass(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- the decode kernel

def kv_case(hq, hkv, d, length, bits, group, seed=0, cap_extra=5):
    """q and a quantized cache whose rows past ``length`` hold NaN scales and mins and all-ones codes:
    a kernel that reads them cannot pass."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, d, generator=g)
    k = torch.randn(hkv, length + cap_extra, d, generator=g) * 2
    v = torch.randn(hkv, length + cap_extra, d, generator=g)
    cache = [*kvquant.quantize_kv(k, bits, group), *kvquant.quantize_kv(v, bits, group)]
    for t in cache:
        t[:, length:] = 255 if t.dtype == torch.uint8 else math.nan
    return q, *cache


def assert_matches(got, want):
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-6)


def test_cpp_is_under_test():
    """Wherever a compiler exists the C++ family must be loaded: a broken build must not pass as the fallback."""
    assert_cpp_under_test(ops.FAMILY, ops.backend())


LENGTHS = [1, 2, 15, 16, 17, 255, 256, 257, 1000, 4099]
HEADS = [(9, 3, 64, 32), (4, 4, 32, 16), (8, 2, 128, 64), (4, 1, 64, 16), (3, 3, 128, 32), (2, 2, 32, 32),
         (6, 3, 64, 64), (4, 2, 128, 16)]   # (Hq, Hkv, d, group): Hq / Hkv in {1, 2, 3, 4}
KV_CASES = ([(9, 3, 64, 32, n, b) for n in LENGTHS for b in (4, 8)]
            + [(*h, n, b) for h in HEADS[1:] for n in (1, 17, 257, 1000) for b in (4, 8)])


@pytest.mark.parametrize("hq, hkv, d, group, length, bits", KV_CASES)
def test_kv_decode_matches_reference(hq, hkv, d, group, length, bits):
    args = (*kv_case(hq, hkv, d, length, bits, group), length, bits)
    assert_matches(ops.kv_decode(*args), reference.kv_decode_ref(*args))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("d, group", [(64, 8), (40, 20), (24, 2), (6, 6)])
def test_groups_narrower_than_a_vector_match_reference(d, group, bits):
    """Groups that split a SIMD vector (and head sizes that are no whole number of vectors) take the
    kernel's widen-first path."""
    for length in (5, 300):
        args = (*kv_case(6, 2, d, length, bits, group, seed=3), length, bits)
        assert_matches(ops.kv_decode(*args), reference.kv_decode_ref(*args))


@pytest.mark.parametrize("bits", [4, 8])
def test_dequantize_then_sdpa_is_the_same_attention(bits):
    """The like-for-like torch peer: dequantize the valid rows, then F.scaled_dot_product_attention."""
    hq, hkv, d, length = 9, 3, 64, 1000
    q, kc, ks, km, vc, vs, vm = kv_case(hq, hkv, d, length, bits, 32)
    k = kvquant.dequantize_kv(kc[:, :length], ks[:, :length], km[:, :length], bits, 32)
    v = kvquant.dequantize_kv(vc[:, :length], vs[:, :length], vm[:, :length], bits, 32)
    peer = F.scaled_dot_product_attention(q.reshape(hkv, hq // hkv, d), k, v).reshape(hq, d)
    assert_matches(ops.kv_decode(q, kc, ks, km, vc, vs, vm, length, bits), peer)


def test_a_dominant_key_takes_the_attention():
    """One key far along q: the output is (to rounding) that row's dequantized value."""
    hq, hkv, d, length = 3, 1, 64, 600
    g = torch.Generator().manual_seed(5)
    q = torch.randn(hq, d, generator=g).abs()
    k = torch.randn(hkv, length, d, generator=g) * 0.1
    k[0, 417] = 40.0
    v = torch.randn(hkv, length, d, generator=g)
    kq, vq = kvquant.quantize_kv(k, 8, 32), kvquant.quantize_kv(v, 8, 32)
    want = kvquant.dequantize_kv(*vq, 8, 32)[0, 417].expand(hq, d)
    assert_matches(ops.kv_decode(q, *kq, *vq, length, 8), want)


def test_every_thread_count_gives_the_same_bits():
    """Chunks depend only on the shapes and merge in a fixed order, never on the thread count."""
    if not ops.available():
        pytest.skip("the thread count is the C++ kernels'")
    cases = [(*kv_case(9, 3, 64, 4099, b, 32), 4099, b) for b in (4, 8)]
    before = ext.omp_threads(ops.FAMILY)
    outs = []
    try:
        for n in (1, max(2, threads.available_cores())):
            ext.sync_threads(n)
            outs.append([ops.kv_decode(*args) for args in cases])
    finally:
        ext.sync_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_opcheck():
    if not ops.available():
        pytest.skip("opcheck runs the C++ kernels")
    for bits in (4, 8):
        args = (*kv_case(6, 2, 32, 70, bits, 16), 70, bits)
        torch.library.opcheck(torch.ops.effnb.longcontext_kv_decode.default, args)


# ---------------------------------------------------------------- bad inputs

def _kv_args():
    return (*kv_case(6, 2, 32, 70, 4, 16), 70, 4)   # cap 75, d 32: codes (2, 75, 16), scales (2, 75, 2)


def _with(args, i, value):
    return (*args[:i], value, *args[i + 1:])


# (what to change in the args, the C++ message, the Python message)
BAD_KV = [
    (lambda a: _with(a, 0, a[0].double()), "q is Double; pass q as Float", r"q is torch.float64; pass q.float\(\)"),
    (lambda a: _with(a, 1, a[1].float()), "k_codes is Float; pass k_codes as Byte",
     r"k_codes is torch.float32; pass k_codes.to\(torch.uint8\)"),
    (lambda a: _with(a, 4, a[4][:, ::2]), "v_codes is strided", r"v_codes is strided; pass v_codes.contiguous\(\)"),
    (lambda a: _with(a, 0, a[0][:5].contiguous()), "Hq = 5 is not a multiple of Hkv = 2",
     "Hq = 5 is not a multiple of Hkv = 2"),
    (lambda a: _with(a, 7, 76), "length is 76; pass 1 <= length <= cap = 75", "length is 76; pass 1 <= length"),
    (lambda a: _with(a, 7, 0), "length is 0; pass 1 <= length", "length is 0; pass 1 <= length"),
    (lambda a: _with(a, 8, 8), r"k_codes has shape \[2, 75, 16\]; pass \(Hkv, cap, d \* bits / 8\) = \(2, 75, 32\)",
     r"k_codes has shape \(2, 75, 16\); pass \(Hkv, cap, d \* bits // 8\) = \(2, 75, 32\)"),
    (lambda a: _with(a, 8, 3), "bits is 3; pass 4 or 8", "bits is 3; pass 4 or 8"),
    (lambda a: _with(a, 5, a[5][:, :, :1].contiguous()), r"v_scale has shape \[2, 75, 1\]",
     r"v_scale and v_min have shapes \(2, 75, 1\), \(2, 75, 2\)"),
    (lambda a: _with(a, 3, a[3][:, :-1].contiguous()), r"k_min has shape \[2, 74, 2\]; pass k_scale's shape",
     r"k_scale and k_min have shapes \(2, 75, 2\), \(2, 74, 2\)"),
    (lambda a: _with(_with(a, 2, a[2][..., :1].expand(2, 75, 3).contiguous()), 3,
                     a[3][..., :1].expand(2, 75, 3).contiguous()), "k_scale has 3 groups per row",
     "k_scale has 3 groups per row"),
    (lambda a: _with(a, 4, a[4][:, :-1].contiguous()), r"v_codes has shape \[2, 74, 16\]",
     r"v_codes has shape \(2, 74, 16\)"),
]


@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD_KV)
def test_kernel_rejects_bad_inputs(mutate, cpp_message, python_message):
    if not ops.available():
        pytest.skip("the C++ checks need the C++ kernel")
    with pytest.raises(RuntimeError, match=cpp_message):
        torch.ops.effnb.longcontext_kv_decode(*mutate(_kv_args()))


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD_KV)
def test_wrapper_rejects_bad_inputs(mutate, cpp_message, python_message, fallback, monkeypatch):
    """The Python checks run first, with the kernel loaded or not."""
    if fallback:
        monkeypatch.setattr(ops, "available", lambda: False)
    with pytest.raises(ValueError, match=python_message):
        ops.kv_decode(*mutate(_kv_args()))


def test_wrapper_rejects_what_is_not_a_tensor_or_an_int():
    args = _kv_args()
    with pytest.raises(ValueError, match="v_min must be a torch.Tensor, got list"):
        ops.kv_decode(*_with(args, 6, args[6].tolist()))
    with pytest.raises(ValueError, match="length is 70.0; pass 1 <= length"):
        ops.kv_decode(*_with(args, 7, 70.0))
    with pytest.raises(ValueError, match="bits is True; pass 4 or 8"):
        ops.kv_decode(*_with(args, 8, True))


# ---------------------------------------------------------------- other ISA levels and the fallback

KERNEL_TESTS = ["test_cpp_is_under_test", "test_kv_decode_matches_reference",
                "test_groups_narrower_than_a_vector_match_reference", "test_dequantize_then_sdpa_is_the_same_attention",
                "test_a_dominant_key_takes_the_attention", "test_every_thread_count_gives_the_same_bits",
                "test_opcheck", "test_kernel_rejects_bad_inputs"]


@pytest.mark.parametrize("level", ["avx2"])
@pytest.mark.isa_build("longcontext")
def test_kernels_at_a_lower_isa_level(level):
    """The longcontext family built with EFFNB_ISA=avx2 runs this file's kernel tests on its AVX2 path (8-lane
    vectors, 4-byte int4 unpacking), on any CPU that runs AVX2. The one-lane path builds with
    EFFNB_ISA=scalar; it is left out of `make test` (a second extra build of the family)."""
    rerun_at_isa(ops.FAMILY, level, __file__, KERNEL_TESTS)


def test_forced_fallback_gives_the_same_answer(monkeypatch):
    args = (*kv_case(9, 3, 64, 300, 4, 32), 300, 4)
    ours = ops.kv_decode(*args)
    monkeypatch.setattr(ops, "available", lambda: False)
    assert ops.backend() == "torch-fallback"
    assert_matches(ops.kv_decode(*args), ours)
