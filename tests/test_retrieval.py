"""effnb.retrieval: the packed index, the MaxSim kernels (C++ under test wherever a compiler exists)
against the plain reference, the op schemas, bad inputs, and the re-ranking benchmark spec.

The kernel tests run in this process (the build for this machine) and again in
subprocesses on builds made with EFFNB_ISA=avx2, EFFNB_ISA=scalar and, on an
AVX-512 CPU, AVX-512 without VNNI; each asserts the code path that ran.
"""
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EXPECT_PATH, assert_cpp_under_test, rerun_at_isa
from effnb import ext, provenance
from effnb import retrieval as R

NO_VNNI = "-mno-avx512vnni"


def expected_path() -> str:
    """The path this process's build must run: the one an ISA run asks for, else this CPU's."""
    if os.environ.get(EXPECT_PATH):
        return os.environ[EXPECT_PATH]
    level = ext.isa()
    if level == "avx512":
        vnni = "avx512_vnni" in provenance.isa_features() and NO_VNNI not in os.environ.get("EFFNB_CXXFLAGS", "")
        return "avx512-vnni" if vnni else "avx512"
    return level


def docs_of(lengths, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) for n in lengths]


def yardstick(q, index, cand):
    """sum_i max_j |q_i| . |v_j| per candidate (dequantized |v| for int8): the size rounding scales with."""
    absolute = R.PackedIndex(index.dequantized().abs().contiguous(), index.offsets)
    return R.reference.maxsim_padded(q.abs(), absolute, cand).double()


def fp32_tol(q, index, cand):
    """fp32 rounding bound: (d + m) roundings (the dot, then the sum over query rows) of the yardstick,
    with a factor 4 of slack for the order of the sums."""
    return 4 * 2.0**-24 * (q.shape[0] + q.shape[1]) * yardstick(q, index, cand) + 1e-30


def i8_tol(q8, qscale, index, cand):
    """fp32 rounding of the int8 scores: each pair's score is the same to the bit, only the sum over the m
    query rows is in another order."""
    return 4 * 2.0**-24 * q8.shape[0] * yardstick(q8.float() * qscale[:, None], index, cand) + 1e-30


def check_both(q, docs, cand):
    """Kernel = reference: fp32 to rounding of sum |q||v|, int8 to fp32 rounding of the int8 reference."""
    f = R.PackedIndex.from_list(docs)
    cand = torch.as_tensor(cand, dtype=torch.int64)
    got, ref = R.maxsim(q, f, cand), R.reference.maxsim(q, f, cand)
    assert got.dtype == torch.float32 and got.shape == (len(cand),)
    assert bool(((got.double() - ref.double()).abs() <= fp32_tol(q, f, cand)).all()), (got, ref)
    i8 = R.PackedIndex.from_list(docs, "int8")
    q8, qs = R.quantize_rows(q)
    ref8 = R.reference.maxsim_i8(q8, qs, i8.vectors, i8.scales, i8.offsets, cand)
    got8 = R.maxsim(q, i8, cand)
    yard = i8_tol(q8, qs, i8, cand)
    assert bool(((got8.double() - ref8.double()).abs() <= yard).all()), (got8, ref8)
    return got, got8


# ---------------------------------------------------------------- the kernels

def test_cpp_is_under_test():
    """Wherever a compiler exists the family must be loaded (a broken build must not pass as the
    fallback), and run the path this build environment asks for."""
    assert_cpp_under_test("retrieval", R.backend())
    if ext.compiler() is not None:
        assert R.backend() == f"cpp-{expected_path()}", ext.status("retrieval")


LENGTHS = [0, 1, 2, 17, 300, 0, 5]


@pytest.mark.parametrize("d", [1, 7, 32, 33, 128, 384])
@pytest.mark.parametrize("m", [1, 3, 32])
def test_kernels_match_reference_on_awkward_shapes(m, d):
    """Query rows off the tile of 4, d off every vector width (masked tails), documents of 0, 1, 2, 17 and
    300 rows (odd and even row counts), candidates repeated, unsorted, a subset, and C = 1."""
    docs = docs_of(LENGTHS, d, seed=m * 1000 + d)
    q = torch.randn(m, d, generator=torch.Generator().manual_seed(d))
    got, got8 = check_both(q, docs, [4, 0, 3, 3, 1, 6, 2, 5, 4])
    assert got[1] == 0 and got8[1] == 0                      # the empty document scores 0
    assert got[2] == got[3] and got8[2] == got8[3]           # a repeated candidate gets the same score
    check_both(q, docs, [4])
    check_both(q, docs, list(range(len(docs))))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 37), d=st.integers(1, 140), lengths=st.lists(st.integers(0, 40), min_size=1, max_size=8),
       picks=st.lists(st.integers(0, 100), min_size=0, max_size=12), seed=st.integers(0, 2**16))
def test_kernels_match_reference_on_random_shapes(m, d, lengths, picks, seed):
    docs = docs_of(lengths, d, seed)
    q = torch.randn(m, d, generator=torch.Generator().manual_seed(seed + 1)) * 3
    check_both(q, docs, [p % len(docs) for p in picks])


def test_int8_is_close_to_fp32():
    """The int8 score differs from fp32 by at most the quantization error of each pair's dot product:
    |q.v - q^.v^| <= sq/2 |v|_1 + sv/2 |q^|_1 (half a step per code), summed over the query's max."""
    d = 128
    docs = docs_of([30, 1, 57, 120], d, seed=3)
    q = torch.randn(32, d, generator=torch.Generator().manual_seed(4))
    f, i8 = R.PackedIndex.from_list(docs), R.PackedIndex.from_list(docs, "int8")
    s32, s8 = R.maxsim(q, f), R.maxsim(q, i8)
    q8, qs = R.quantize_rows(q)
    for c in range(len(docs)):
        v = f.doc(c)
        sv = i8.scales[int(i8.offsets[c]):int(i8.offsets[c + 1])]
        qhat = (q8.float() * qs[:, None]).abs().sum(1)
        err = qs[:, None] / 2 * v.abs().sum(1)[None, :] + sv[None, :] / 2 * qhat[:, None]
        bound = float(err.max(dim=1).values.sum()) * 1.001 + 1e-4
        assert abs(float(s8[c]) - float(s32[c])) <= bound, (c, float(s8[c]), float(s32[c]), bound)
        assert abs(float(s8[c]) - float(s32[c])) <= 0.02 * float(s32[c].abs()) + 1e-3   # and small in practice


def test_no_candidates_and_the_default_of_all():
    docs = docs_of([3, 0, 4], 9)
    q = torch.randn(2, 9)
    for dtype in R.DTYPES:
        idx = R.PackedIndex.from_list(docs, dtype)
        assert R.maxsim(q, idx, []).shape == (0,)
        assert torch.equal(R.maxsim(q, idx), R.maxsim(q, idx, torch.arange(3)))


def _op_args():
    docs = docs_of([3, 0, 6, 1], 13, seed=2)
    q = torch.randn(5, 13, generator=torch.Generator().manual_seed(9))
    f, i8 = R.PackedIndex.from_list(docs), R.PackedIndex.from_list(docs, "int8")
    q8, qs = R.quantize_rows(q)
    cand = torch.tensor([2, 0, 1, 2])
    return [("maxsim_f32", (q, f.vectors, f.offsets, cand)),
            ("maxsim_i8", (q8, qs, i8.vectors, i8.scales, i8.offsets, cand))]


def test_every_op_is_declared_once_in_python():
    assert set(R.ops.SCHEMAS) == set(R.OPS) == {name for name, _ in _op_args()}
    cpp = (Path(ext.KERNEL_DIR) / "retrieval" / "retrieval.cpp").read_text()
    assert "m.def(" not in cpp and "TORCH_LIBRARY_FRAGMENT" not in cpp and "TORCH_LIBRARY_IMPL(effnb, CPU" in cpp
    assert cpp.count("EFFNB_ISA_PATH(\"") == 4 and "#include \"effnb.h\"" in cpp


@pytest.mark.parametrize("name, args", _op_args(), ids=[n for n, _ in _op_args()])
def test_fake_kernels_give_the_output_shape(name, args):
    from torch._subclasses.fake_tensor import FakeTensorMode
    R.ops.declare()
    with FakeTensorMode() as mode:
        out = getattr(torch.ops.effnb, name)(*[mode.from_tensor(a) for a in args])
    assert tuple(out.shape) == (4,) and out.dtype == torch.float32


@pytest.mark.parametrize("name, args", _op_args(), ids=[n for n, _ in _op_args()])
def test_opcheck(name, args):
    if not R.available():
        pytest.skip("opcheck needs the C++ kernels (test_cpp_is_under_test fails where a compiler exists)")
    torch.library.opcheck(getattr(torch.ops.effnb, name).default, args)


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0].double(), *a[1:]), "q is Double; pass q as Float"),
    (lambda a: (a[0], a[1].to(torch.int8), *a[2:]), "vectors is Char; pass vectors as Float"),
    (lambda a: (a[0][:, :12].contiguous(), *a[1:]), "the query has d=12 but the index rows have d=13"),
    (lambda a: (a[0].t(), *a[1:]), "q is strided; pass q.contiguous()"),
    (lambda a: (a[0][0].contiguous(), *a[1:]), "the query must be 2-D"),
    (lambda a: (a[0], a[1], a[2].int(), a[3]), "offsets is Int; pass offsets as Long"),
    (lambda a: (a[0], a[1], torch.tensor([0, 3, 2, 9, 10]), a[3]), "offsets must not decrease"),
    (lambda a: (a[0], a[1], torch.tensor([0, 3, 3, 9, 11]), a[3]), "offsets must run from 0 to the index's 10 rows"),
    (lambda a: (*a[:3], torch.tensor([0, 4])), r"cand\[1\] = 4 is not a document; pass numbers in 0..3"),
    (lambda a: (*a[:3], torch.tensor([-1])), "is not a document"),
    (lambda a: (*a[:3], a[3].int()), "cand is Int; pass cand as Long"),
])
def test_f32_op_rejects_bad_inputs(mutate, match):
    if not R.available():
        pytest.skip("the C++ checks need the C++ kernels")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.effnb.maxsim_f32(*mutate(_op_args()[0][1]))


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0].float(), *a[1:]), "q8 is Float; pass q8 as Char"),
    (lambda a: (a[0], a[1].double(), *a[2:]), "qscale is Double"),
    (lambda a: (a[0], a[1][:4].contiguous(), *a[2:]), "one scale per query row"),
    (lambda a: (*a[:3], a[3][:-1].contiguous(), *a[4:]), "one scale per index row"),
    (lambda a: (a[0], a[1], a[2].float(), *a[3:]), "codes is Float; pass codes as Char"),
    (lambda a: (a[0].clone().index_fill_(0, torch.tensor([1]), -128), *a[1:]), r"q8 holds -128; pass .*\[-127, 127\]"),
    (lambda a: (*a[:4], torch.tensor([0, 3, 2, 9, 10]), a[5]), "offsets must not decrease"),
    (lambda a: (*a[:5], torch.tensor([7])), "is not a document"),
])
def test_i8_op_rejects_bad_inputs(mutate, match):
    if not R.available():
        pytest.skip("the C++ checks need the C++ kernels")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.effnb.maxsim_i8(*mutate(_op_args()[1][1]))


KERNEL_TESTS = ["test_cpp_is_under_test", "test_kernels_match_reference_on_awkward_shapes",
                "test_kernels_match_reference_on_random_shapes", "test_int8_is_close_to_fp32",
                "test_no_candidates_and_the_default_of_all", "test_opcheck", "test_f32_op_rejects_bad_inputs",
                "test_i8_op_rejects_bad_inputs"]


@pytest.mark.parametrize("level", ["avx2", "scalar"])
@pytest.mark.isa_build("retrieval", env={"EFFNB_CXXFLAGS": ""})
def test_kernels_at_a_lower_isa_level(level):
    """The family built with EFFNB_ISA=<level> runs its own path through the kernel tests above: the AVX2
    path (maddubs int8, 8-lane fp32) and the plain C++ path, on any CPU that runs them."""
    rerun_at_isa("retrieval", level, __file__, KERNEL_TESTS, env={"EFFNB_CXXFLAGS": ""})


@pytest.mark.isa_build("retrieval", level="avx512", env={"EFFNB_CXXFLAGS": NO_VNNI})
def test_avx512_path_without_vnni():
    """AVX-512 CPUs without VNNI run 16-lane fp32 and the AVX2 int8 step; on a VNNI CPU that build is
    made apart (-mno-avx512vnni) so that it is tested here too (the default build runs VNNI)."""
    if ext.compiler() is not None and ext.cpu_level() == "avx512" and "avx512_vnni" not in provenance.isa_features():
        pytest.skip("this CPU has no VNNI: the default build above already is that path")
    rerun_at_isa("retrieval", "avx512", __file__, KERNEL_TESTS, env={"EFFNB_CXXFLAGS": NO_VNNI})


# ---------------------------------------------------------------- the Python API and the fallback

def test_forced_fallback_gives_the_same_answer(monkeypatch):
    docs = docs_of([4, 0, 9], 10, seed=5)
    q = torch.randn(3, 10, generator=torch.Generator().manual_seed(6))
    idx = [R.PackedIndex.from_list(docs, t) for t in R.DTYPES]
    fast = [R.maxsim(q, i, [2, 1, 0]) for i in idx]
    monkeypatch.setattr(R.ops, "available", lambda: False)
    assert R.backend() == ext.FALLBACK
    for i, y in zip(idx, fast):
        assert torch.allclose(R.maxsim(q, i, [2, 1, 0]), y, atol=1e-4)
    assert R.rerank_race(m=2, d=8, docs=3, doc_len=(1, 3), threads=1).providers[0].backend == ext.FALLBACK


def test_python_api_rejects_bad_inputs_with_what_to_pass():
    idx = R.PackedIndex.from_list(docs_of([2, 3], 6))
    q = torch.randn(2, 6)
    with pytest.raises(ValueError, match="d=5 but the index holds d=6"):
        R.maxsim(torch.randn(2, 5), idx)
    with pytest.raises(ValueError, match="2-D float tensor"):
        R.maxsim(torch.randn(6), idx)
    with pytest.raises(ValueError, match=r"holds 2, not a document of this index; pass numbers in 0..1"):
        R.maxsim(q, idx, [0, 2])
    with pytest.raises(ValueError, match="1-D list or tensor of document numbers"):
        R.maxsim(q, idx, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="PackedIndex.from_list"):
        R.maxsim(q, [torch.randn(2, 6)])
    assert R.maxsim(q.double(), idx, (1,)).dtype == torch.float32     # any float query, any sequence of numbers


def test_padded_reference_matches_the_loop():
    docs = docs_of([5, 0, 1, 12, 3], 11, seed=8)
    q = torch.randn(4, 11, generator=torch.Generator().manual_seed(1))
    for dtype in R.DTYPES:
        idx = R.PackedIndex.from_list(docs, dtype)
        cand = torch.tensor([3, 1, 0, 3, 4])
        assert torch.allclose(R.reference.maxsim_padded(q, idx, cand), R.reference.maxsim(q, idx, cand), atol=1e-5)
        assert R.reference.maxsim_padded(q, idx, torch.tensor([1])).tolist() == [0.0]
    v, real = R.reference.pad_candidates(R.PackedIndex.from_list(docs), torch.tensor([0, 3]))
    assert v.shape == (2, 12, 11) and real.sum(1).tolist() == [5, 12]


# ---------------------------------------------------------------- the index

def test_index_layout_and_nbytes():
    docs = docs_of([3, 0, 5], 7)
    f, i8 = R.PackedIndex.from_list(docs), R.PackedIndex.from_list(docs, "int8")
    assert f.offsets.tolist() == i8.offsets.tolist() == [0, 3, 3, 8] and f.lengths.tolist() == [3, 0, 5]
    assert (f.num_docs, f.dim, i8.num_docs, i8.dim) == (3, 7, 3, 7)
    assert f.nbytes == 8 * 7 * 4 + 4 * 8 and f.scales is None
    assert i8.nbytes == 8 * 7 * 1 + 4 * 8 + 8 * 4 and i8.vectors.dtype == torch.int8
    assert torch.equal(f.doc(2), docs[2]) and f.doc(1).shape == (0, 7)
    assert R.PackedIndex.from_list([torch.empty(0, 4)]).nbytes == 16     # only the two offsets


def test_int8_round_trip_error_bound():
    """Half a quantization step per element: |x - codes * scale| <= max|x| / 254, codes in [-127, 127]."""
    g = torch.Generator().manual_seed(0)
    docs = [torch.randn(40, 33, generator=g) * 10 ** torch.randn(40, 1, generator=g), torch.zeros(2, 33)]
    i8 = R.PackedIndex.from_list(docs, "int8")
    x = torch.cat(docs)
    amax = x.abs().amax(1, keepdim=True)
    assert bool((i8.dequantized() - x).abs().le(amax / 254 * (1 + 1e-5) + 1e-30).all())
    assert int(i8.vectors.min()) >= -127 and int(i8.vectors.max()) <= 127
    assert bool((i8.vectors[:40].abs().amax(1) == 127).all()) and bool((i8.scales[40:] == 0).all())


@pytest.mark.parametrize("docs, dtype, match", [
    ([], "fp32", "pass a list of"),
    ([torch.randn(3, 4), torch.randn(2, 5)], "fp32", "document 1 has d=5 but document 0 has d=4"),
    ([torch.randn(4)], "fp32", r"document 0 is \(4,\); pass each document as a 2-D float tensor"),
    ([torch.ones(2, 3, dtype=torch.int64)], "fp32", "2-D float tensor"),
    ([torch.randn(2, 3), torch.tensor([[1.0, float("nan"), 0.0]])], "int8", "document 1 holds NaN or inf"),
    ([torch.randn(2, 3)], "int4", "pass one of"),
    ([torch.empty(2, 0)], "fp32", "d >= 1"),
])
def test_index_rejects_bad_documents(docs, dtype, match):
    with pytest.raises(ValueError, match=match):
        R.PackedIndex.from_list(docs, dtype)


def test_index_rejects_bad_offsets():
    v = torch.randn(5, 3)
    with pytest.raises(ValueError, match="without decreasing"):
        R.PackedIndex(v, torch.tensor([0, 4, 2, 5]))
    with pytest.raises(ValueError, match="without decreasing"):
        R.PackedIndex(v, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="fp32 scales"):
        R.PackedIndex(v.to(torch.int8), torch.tensor([0, 5]), None, "int8")


# ---------------------------------------------------------------- the benchmark spec

def test_rerank_race_spec_counts_the_work_and_runs():
    spec = R.rerank_race(m=4, d=16, docs=6, doc_len=(0, 9), repeats=3, rounds=1, threads=1, counts=(2, 6))
    assert [p.key for p in spec.providers] == ["ours-fp32", "ours-int8", "loop", "padded"]
    assert spec.baseline == "padded" and [p.ours for p in spec.providers] == [True, True, False, False]
    assert spec.providers[0].backend == R.backend() and spec.x_values == [2, 6]
    vecs = R.bench.corpus(6, 16, (0, 9))
    assert spec.flops(6) == 2 * 4 * 16 * sum(len(v) for v in vecs)
    outs = [p.make(6)() for p in spec.providers]
    for y in outs[1:]:
        assert torch.allclose(y, outs[0], atol=0.05 * float(outs[0].abs().max()) + 1e-3)
    res = spec.run(progress=False)
    assert set(res.keys()) == {"ours-fp32", "ours-int8", "loop", "padded"} and len(res.table()) == 4
    with pytest.raises(ValueError, match="counts"):
        R.rerank_race(docs=5, counts=(3, 9), threads=1)
