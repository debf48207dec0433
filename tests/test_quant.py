"""effnb.quant: packing, the C++ kernels against the torch reference, the module API, the variants."""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effnb import provenance
from effnb import quant as Q

SCHEMES = ["w8a16", "w8a8", "w4a16-g32", "w4a16-g64", "w4a16-g128", "w4a8-g32", "w4a8-g64",
           "w4a8-g128", "w4a16-g64-asym", "w4a8-g128-asym", "w4a16", "w4a8-g256", "w4a8-g512-asym", "w4a8-g96"]
CPP = Q.backend() == "cpp"


def scale_of(x, w):
    """The size of the largest |x| @ |W|^T term: the yardstick for rounding differences."""
    return float((x.abs().double() @ w.abs().double().T).max()) + 1e-30


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


def test_pack_roundtrip():
    u = torch.randint(0, 16, (5, 192), dtype=torch.uint8)
    assert torch.equal(Q.unpack_int4(Q.pack_int4(u)), u)
    # the documented layout: byte j of a 64-block = weight j (low nibble), weight 32 + j (high)
    p = Q.pack_int4(u)
    assert int(p[2, 32 + 3]) == int(u[2, 64 + 3]) | (int(u[2, 64 + 35]) << 4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), k=st.integers(1, 300), scheme=st.sampled_from(SCHEMES), seed=st.integers(0, 99))
def test_dequantize_error_is_at_most_half_a_step(n, k, scheme, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3
    p = Q.quantize(w, scheme)
    d = Q.dequantize(p)
    assert d.shape == w.shape
    if p.scheme.wbits == 8:
        step = p.scales[:, None].expand(n, k)
    else:
        step = p.scales.float().repeat_interleave(p.group, 1)[:, :k]
    # symmetric int4 can clip the lowest code only by rounding; both schemes: <= half a step (+ fp16 slack)
    assert bool(((d - w).abs() <= 0.5 * step * 1.01 + 1e-6).all())


# ---------------------------------------------------------------- kernels against the reference

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 9), n=st.integers(1, 40), k=st.integers(1, 300), scheme=st.sampled_from(SCHEMES),
       seed=st.integers(0, 999))
def test_linear_matches_reference(m, n, k, scheme, seed):
    kernel_vs_reference(m, n, k, seed, lambda w: Q.quantize(w, scheme), Q.linear, Q.linear_ref)


def kernel_vs_reference(m, n, k, seed, pack, run, ref):
    """Random W [n, k] and x [m, k]: the kernel agrees with the float64 reference up to fp32 rounding."""
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    p = pack(w)
    y, r = run(x, p), ref(x, p)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert float((y - r).abs().max()) <= 1e-5 * scale_of(x, w)
    return w, p


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8-g64", "w4a8-g32", "w4a16-g128-asym", "w8a16"])
@pytest.mark.parametrize("m", [1, 5, 17, 64])
def test_linear_awkward_and_batched(scheme, m):
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



@pytest.mark.skipif(not CPP or "avx2" not in provenance.isa_features(), reason="needs the AVX2 build")
def test_vnni_code_path_with_an_avx2_stand_in():
    """The VNNI path (vpdpbusd into int32 lanes, no int16 sums) cannot run on a CPU without VNNI.
    Compiled with an AVX2 stand-in for the one instruction, its accumulation logic must pass
    the kernel tests above; a VNNI machine runs the real instruction through the same tests."""
    env = {**os.environ, "EFFNB_CXXFLAGS": "-DEFFNB_QDOT32_EMULATE"}
    build = subprocess.run([sys.executable, "-m", "effnb.ext", "build"], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    path = subprocess.run([sys.executable, "-c", "import torch; from effnb import ext; ext.load(); "
                           "print(torch.ops.effnb.quant_path())"], env=env, capture_output=True, text=True)
    assert path.stdout.strip() == "avx2-emulated-vnni", path.stdout + path.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          f"{__file__}::test_linear_matches_reference", f"{__file__}::test_linear_awkward_and_batched",
                          f"{__file__}::test_dgq_kernel_matches_reference", f"{__file__}::test_dgq_kernel_batched_and_bad_inputs"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout

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


@pytest.mark.skipif(not CPP, reason="C++ kernels not built")
def test_cpp_op_rejects_wrong_tensors():
    p = Q.quantize(torch.randn(8, 64), "w4a16-g64")
    ops = torch.ops.effnb
    with pytest.raises(RuntimeError, match="float32"):
        ops.quant_w4_linear(torch.randn(1, 64).double(), p.q, p.scales, p.zeros, 64, False)
    with pytest.raises(RuntimeError, match="scales"):
        ops.quant_w4_linear(torch.randn(1, 64), p.q, p.scales.float(), p.zeros, 64, False)
    with pytest.raises(RuntimeError, match="group"):
        ops.quant_w4_linear(torch.randn(1, 64), p.q, p.scales, p.zeros, 48, False)
    with pytest.raises(RuntimeError, match="columns"):
        ops.quant_w4_linear(torch.randn(1, 65), p.q, p.scales, p.zeros, 64, False)


def test_fallback_path_equals_reference(monkeypatch):
    p = Q.quantize(torch.randn(9, 70), "w4a8-g32")
    x = torch.randn(3, 70)
    monkeypatch.setattr(Q, "backend", lambda: "fallback")
    assert torch.equal(Q.linear(x, p), Q.linear_ref(x, p))


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



@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 9), n=st.integers(1, 30), k=st.integers(1, 400), group=st.sampled_from([64, 128, 256]),
       seed=st.integers(0, 999))
def test_dgq_kernel_matches_reference(m, n, k, group, seed):
    w, p = kernel_vs_reference(m, n, k, seed, lambda w: Q.dgq_pack(w, group), Q.dgq_linear, Q.dgq_linear_ref)
    assert torch.allclose(Q.dgq_dequantize(p), Q.dgq_quantize(w, group)["weight"], atol=1e-6)


def test_dgq_kernel_batched_and_bad_inputs():
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(37, 333, generator=g), torch.randn(64, 333, generator=g) * 40
    x[0] = 0.0
    p = Q.dgq_pack(w, 64)
    y, r = Q.dgq_linear(x, p), Q.dgq_linear_ref(x, p)
    assert float((y - r).abs().max()) <= 1e-5 * scale_of(x, w) and bool((y[0] == 0).all())
    assert p.nbytes == 37 * (384 // 2 + 384 // 64 + 4)  # codes, integer group scales, channel scale
    with pytest.raises(ValueError, match="multiple of 64"):
        Q.dgq_pack(w, 32)
    with pytest.raises(ValueError, match="features"):
        Q.dgq_linear(torch.randn(2, 10), p)
    with pytest.raises(TypeError, match="dgq_pack"):
        Q.dgq_linear(x, Q.quantize(w, "w4a8-g64"))
    if CPP:
        with pytest.raises(RuntimeError, match="kint must be"):
            torch.ops.effnb.quant_dgq_linear(x, p.q, p.kint[:, :1].contiguous(), p.scale, 64)
        with pytest.raises(RuntimeError, match="multiple of 64"):
            torch.ops.effnb.quant_dgq_linear(x, p.q, p.kint, p.scale, 32)

def test_qserve_progressive_stays_in_int8():
    w = torch.randn(16, 300, generator=torch.Generator().manual_seed(3))
    out = Q.qserve_quantize(w, group=128)
    assert int(out["q8"].abs().max()) <= 127 and int(out["u4"].max()) <= 15
    assert float((out["weight"] - w).norm() / w.norm()) < 0.15


# ---------------------------------------------------------------- the onnxruntime MatMulNBits peer

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
    name = Q.ort_name(32, 4)
    assert name in facs and Q.ort_name(32, 0) in facs
    out = facs[name]((2, 16, 64))()
    assert out.shape == (2, 16)
    assert Q.weight_bytes(name, 16, 64, 32) == 16 * 2 * (16 + 4)


def test_our_providers_in_benchmark_factories():
    facs = Q.peer_factories(group=64, ours=("w4a8", "dgq"), peers=False)
    assert list(facs) == ["ours w4a8-g64", "ours dgq-w4a8-g64"]
    for fac in facs.values():
        assert fac((3, 16, 128))().shape == (3, 16)
    assert Q.weight_bytes("ours dgq-w4a8-g64", 16, 128, 64) == 16 * (64 + 2 + 4)
    assert Q.weight_bytes("ours w4a8-g64", 16, 128, 64) == 16 * (64 + 2 * 2)
