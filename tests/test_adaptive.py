"""Chapter 14's CATS kernel against its reference, on every ISA path, and its benchmark's providers."""
import math

import pytest
import torch

from conftest import assert_cpp_under_test, rerun_at_isa
from effnb import ext, threads
from effnb.adaptive import benchmarks, ops, reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIMS, FFNS, ROWS = [1, 7, 16, 33, 576], [1, 5, 64, 1536], [1, 3]
KEEP = ["none", "one", "middle", "all"]   # how many neurons the threshold keeps, over the whole batch


def ffn_case(n, dim, ffn, seed=0):
    """x and the layer's (gate, up, down_t), scaled like a trained layer's."""
    g = torch.Generator().manual_seed(seed)
    w = benchmarks.random_ffn(dim, ffn, g)
    return torch.randn(n, dim, generator=g), w.gate, w.up, w.down_t


def threshold_keeping(x, gate, keep):
    """A threshold keeping none, one, about half or all of the batch's neurons, halfway between two
    magnitudes (the widest gap in the middle half), so fp32 rounding cannot move a neuron across it."""
    if keep == "all":
        return -1.0
    mags = reference.gate_activations(x, gate).abs().flatten().sort().values
    if keep == "none":
        return float(mags[-1]) + 1.0
    if keep == "one" or mags.numel() < 4:
        return float(mags[-2] + mags[-1]) / 2 if mags.numel() > 1 else float(mags[-1]) / 2
    q = mags.numel()
    lo = q // 4
    gaps = mags[lo + 1:3 * q // 4 + 1] - mags[lo:3 * q // 4]
    cut = lo + int(gaps.argmax())
    return float(mags[cut] + mags[cut + 1]) / 2


def expected_kept(x, gate, keep):
    return {"none": 0, "one": 1, "all": x.shape[0] * gate.shape[0]}.get(keep)


def assert_matches(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the kernel

def test_cpp_is_under_test():
    """Wherever a compiler exists the C++ family must be loaded: a broken build must not pass as the fallback."""
    assert_cpp_under_test(ops.FAMILY, ops.backend())


@pytest.mark.parametrize("keep", KEEP)
@pytest.mark.parametrize("ffn", FFNS)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("n", ROWS)
def test_cats_matches_reference(n, dim, ffn, keep):
    x, gate, up, down_t = ffn_case(n, dim, ffn, seed=n * 100_000 + dim * 100 + ffn)
    t = threshold_keeping(x, gate, keep)
    want_kept = expected_kept(x, gate, keep)
    if want_kept is not None:
        assert int(reference.active_count(x, gate, t).sum()) == want_kept
    assert_matches(ops.cats_ffn(x, gate, up, down_t, t), reference.cats_ffn_ref(x, gate, up, down_t, t))


def test_keeping_every_neuron_is_the_dense_ffn():
    x, gate, up, down_t = ffn_case(3, 576, 1536)
    assert_matches(ops.cats_ffn(x, gate, up, down_t, -1.0), reference.dense_ffn_ref(x, gate, up, down_t))


def test_every_thread_count_gives_the_same_bits():
    """Each output column sums the active neurons in the same order however the blocks are dealt."""
    if not ops.available():
        pytest.skip("the thread count is the C++ kernel's")
    x, gate, up, down_t = ffn_case(2, 576, 1536, seed=3)
    t = threshold_keeping(x, gate, "middle")
    before = ext.omp_threads(ops.FAMILY)
    outs = []
    try:
        for n in (1, threads.available_cores()):
            ext.sync_threads(n)
            outs.append(ops.cats_ffn(x, gate, up, down_t, t))
    finally:
        ext.sync_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_opcheck():
    if not ops.available():
        pytest.skip("opcheck runs the C++ kernel")
    for n, dim, ffn in [(1, 33, 64), (3, 7, 5)]:
        x, gate, up, down_t = ffn_case(n, dim, ffn)
        for t in (-1.0, threshold_keeping(x, gate, "middle")):
            torch.library.opcheck(torch.ops.effnb.adaptive_cats_ffn.default, (x, gate, up, down_t, t))


def _args():
    return ffn_case(2, 33, 64)


# (what to change in (x, gate, up, down_t, threshold), the C++ message, the Python message)
BAD = [
    (lambda a: (a[0].double(), *a[1:]), "x is Double; pass x as Float", r"x is torch.float64; pass x.float\(\)"),
    (lambda a: (a[0], a[1].half(), *a[2:]), "gate is Half", r"gate is torch.float16; pass gate.float\(\)"),
    (lambda a: (a[0][0], *a[1:]), r"x has shape \[33\]; pass \(n, dim\)", r"x is 1-D \(33,\); pass a 2-D"),
    (lambda a: (a[0].t().contiguous().t(), *a[1:]), "x is strided; pass x.contiguous", r"pass x.contiguous\(\)"),
    (lambda a: (a[0], a[1], a[2][:, ::2], *a[3:]), "up is strided", r"up is strided; pass up.contiguous\(\)"),
    (lambda a: (a[0], a[1], a[2][:-1].contiguous(), *a[3:]), r"up has shape \[63, 33\]; pass \(ffn, dim\)",
     r"up has shape \(63, 33\); pass \(ffn, dim\) = \(64, 33\)"),
    (lambda a: (*a[:3], a[3].t().contiguous(), a[4]), r"down_t has shape \[33, 64\].*down.weight.t\(\)",
     r"down_t has shape \(33, 64\).*down.weight.t\(\).contiguous\(\)"),
    (lambda a: (a[0][:, :-1].contiguous(), *a[1:]), r"gate has shape \[64, 33\]; pass \(ffn, dim\) = \(64, 32\)",
     r"gate has shape \(64, 33\); pass \(ffn, dim\) = \(64, 32\)"),
    (lambda a: (*a[:4], math.nan), "threshold is nan; pass a finite number", "threshold is nan; pass a finite"),
    (lambda a: (*a[:4], math.inf), "threshold is inf; pass a finite number", "threshold is inf; pass a finite"),
]


@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD)
def test_kernel_rejects_bad_inputs(mutate, cpp_message, python_message):
    if not ops.available():
        pytest.skip("the C++ checks need the C++ kernel")
    args = mutate((*_args(), 0.1))
    with pytest.raises(RuntimeError, match=cpp_message):
        torch.ops.effnb.adaptive_cats_ffn(*args)


@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD)
def test_wrapper_rejects_bad_inputs_before_the_kernel(mutate, cpp_message, python_message):
    with pytest.raises(ValueError, match=python_message):
        ops.cats_ffn(*mutate((*_args(), 0.1)))


def test_wrapper_rejects_what_is_not_a_tensor():
    x, gate, up, down_t = _args()
    with pytest.raises(ValueError, match="up must be a torch.Tensor, got list"):
        ops.cats_ffn(x, gate, up.tolist(), down_t, 0.1)
    with pytest.raises(ValueError, match="threshold is '0.1'; pass a finite number"):
        ops.cats_ffn(x, gate, up, down_t, "0.1")


KERNEL_TESTS = ["test_cpp_is_under_test", "test_cats_matches_reference", "test_keeping_every_neuron_is_the_dense_ffn",
                "test_every_thread_count_gives_the_same_bits", "test_opcheck", "test_kernel_rejects_bad_inputs"]


@pytest.mark.parametrize("level", ["avx2", "scalar"])
@pytest.mark.isa_build("adaptive")
def test_kernels_at_a_lower_isa_level(level):
    """The family built with EFFNB_ISA=<level> runs its own code path through the kernel tests above:
    the AVX2 path and the plain C++ path, on any CPU that runs them."""
    rerun_at_isa(ops.FAMILY, level, __file__, KERNEL_TESTS)


# ---------------------------------------------------------------- the fallback

def test_forced_fallback_gives_the_same_answer(monkeypatch):
    x, gate, up, down_t = ffn_case(3, 33, 64)
    t = threshold_keeping(x, gate, "middle")
    ours = ops.cats_ffn(x, gate, up, down_t, t)
    monkeypatch.setattr(ops, "available", lambda: False)
    assert ops.backend() == "torch-fallback"
    assert_matches(ops.cats_ffn(x, gate, up, down_t, t), ours)
    with pytest.raises(ValueError, match="pass x.float"):   # the checks run on the fallback too
        ops.cats_ffn(x.double(), gate, up, down_t, t)


# ---------------------------------------------------------------- the benchmark

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_threshold_for_leaves_that_fraction_inactive(sparsity):
    x, gate, _, _ = ffn_case(1, 576, 1536)
    t = benchmarks.threshold_for(x, gate, sparsity)
    assert int(reference.active_count(x, gate, t)) == 1536 - round(sparsity * 1536)


def test_every_provider_computes_the_same_ffn():
    """With one layer every call runs the same weights: the peers and ours must agree."""
    spec = benchmarks.ffn_benchmark(sparsities=(0.0, 0.7), dim=33, ffn=64, layers=1)
    for s in spec.x_values:
        outs = {p.key: p.make(s)() for p in spec.providers}
        assert_matches(outs["ours"], outs["torch gathered"])
        assert_matches(outs["ours dense"], outs["torch dense"])
    assert {p.key: p.backend for p in spec.providers}["ours"] == ops.backend()


def test_the_benchmark_runs_and_counts_fewer_bytes_when_sparse():
    res = benchmarks.ffn_benchmark(sparsities=(0.0, 0.9), dim=16, ffn=64, layers=2, repeats=3).run(progress=False)
    table = res.table()
    assert sorted(table["sparsity"]) == ["0%", "0%", "90%", "90%"]   # ours and ours dense
    ours = res.df[res.df["provider"] == "ours"].set_index("x")
    assert ours.loc["90%", "gbps"] * ours.loc["90%", "median_s"] < ours.loc["0%", "gbps"] * ours.loc["0%", "median_s"]
