"""effnb.sparse: layouts, kernels (C++ under test wherever a compiler exists), pruning and the chapter's
benchmark specs, each against a plain reference.

The kernel tests below run three times where the CPU allows: in this process
(the build for this machine), and in subprocesses on builds made with
EFFNB_ISA=avx2 and EFFNB_ISA=scalar, each asserting the code path that ran. The
fallback is tested by forcing it, never by a failed build.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import assert_cpp_under_test, rerun_at_isa
from effnb import ext
from effnb import sparse as S

PATTERNS = ["unstructured", "1x4", "dense"]


def ref_matmul(sw, b):
    return sw.to_dense().double() @ b.double()


def close(got, ref, k):
    return torch.allclose(got.double(), ref, atol=1e-4 * max(1, k) ** 0.5, rtol=1e-4)


# ---------------------------------------------------------------- the kernels

@settings(max_examples=60, deadline=None)
@given(numel=st.integers(1, 300), levels=st.integers(1, 6), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 99))
def test_magnitude_mask_keeps_what_a_stable_sort_keeps(numel, levels, sparsity, seed):
    # few distinct magnitudes, so most thresholds fall inside a run of ties
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-levels, levels + 1, (numel,), generator=g).float()
    keep = S.magnitude_mask(w.view(1, -1), sparsity).flatten()
    n_drop = int(round(sparsity * numel))
    expect = torch.ones(numel, dtype=torch.bool)
    expect[torch.argsort(w.abs(), stable=True)[:n_drop]] = False   # lowest first, ties in position order
    assert torch.equal(keep, expect)


def test_cpp_is_under_test():
    """Wherever a compiler exists the C++ family must be loaded: a broken build must not pass as the fallback."""
    assert_cpp_under_test("sparse", S.backend())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 41), k=st.integers(1, 70), p=st.integers(1, 75),
       sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99]), pattern=st.sampled_from(PATTERNS),
       seed=st.integers(0, 2**16))
def test_matmul_matches_reference(n, k, p, sparsity, pattern, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    sw = S.sparsify(w, sparsity if pattern != "dense" else None, pattern)
    b = torch.randn(k, p, generator=g)
    ref = ref_matmul(sw, b)
    assert close(S.matmul(sw, b), ref, k)
    assert close(S.matmul(sw, b[:, 0].contiguous()), ref[:, 0], k)


@pytest.mark.parametrize("n, k, p", [(1, 1, 1), (7, 13, 3), (37, 41, 1), (33, 40, 65), (64, 300, 33), (5, 9, 200)])
@pytest.mark.parametrize("pattern, sparsity", [("unstructured", 0.0), ("unstructured", 0.9), ("1x4", 0.3),
                                               ("1x4", 0.95), ("dense", None)])
def test_awkward_shapes_and_empty_rows_match_reference(n, k, p, pattern, sparsity):
    """Sizes off the vector width and the group of four, strips with tails, empty rows, the large-P loop order."""
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g)
    w[n // 2] = 0.0
    b = torch.randn(k, p, generator=g)
    sw = S.sparsify(w, sparsity, pattern)
    ref = ref_matmul(sw, b)
    assert close(S.matmul(sw, b), ref, k)
    assert close(S.matmul(sw, b[:, 0].contiguous()), ref[:, 0], k)


ROW_NNZ = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 24, 25, 31, 32, 33, 47, 48, 49, 50, 63, 64, 65, 72, 97,
           100]


# the x gathers this build has: AVX-512 builds also have the 16-wide one (kernels/sparse/sparse.cpp)
GATHERS = ["8", "16"] if S.backend() == "cpp-avx512" else ["8"]


@pytest.mark.parametrize("gather", GATHERS)
@pytest.mark.parametrize("spmv", ["blocks", "csr"])
@pytest.mark.parametrize("k, index_dtype", [(100, "auto"), (65536, "auto"), (65536, "int32"), (70000, "auto")])
def test_every_row_length_and_high_columns_match_reference(k, index_dtype, spmv, gather, monkeypatch):
    """One row per nonzero count around the SpMV loops' blocks (AVX2 CSR: 24 = 8 gathered + 16 scalar, then
    8, 4, 1; column blocks: 3 blocks = 1 gathered + 2 scalar, then 1; 16-wide: 64 = four gathers, then 16,
    then a masked tail; blocks two per gather, eight per round, a lone last one) and the SpMM loop's pairs
    of nonzeros, with columns up to k - 1 (uint16 indices >= 32768 must not sign-extend), for the vector
    and for every strip width of the matrix kernel. Both x gathers of an AVX-512 build are forced in turn
    (EFFNB_SPARSE_GATHER); other builds have only the first."""
    monkeypatch.setenv("EFFNB_SPARSE_GATHER", gather)
    g = torch.Generator().manual_seed(k)
    w = torch.zeros(len(ROW_NNZ), k)
    for r, cnt in enumerate(ROW_NNZ):
        cols = torch.randperm(k - 1, generator=g)[:cnt - 1] if cnt else torch.zeros(0, dtype=torch.long)
        cols = torch.cat([cols, torch.tensor([k - 1] if cnt else [], dtype=torch.long)])  # the last column too
        w[r, cols] = torch.randn(len(cols), generator=g).abs() + 0.1
    sw = S.sparsify(w, None, index_dtype=index_dtype, spmv=spmv if k <= 65536 else "auto")
    assert torch.equal(torch.tensor([int(c) for c in sw.ptr.diff()]), torch.tensor(ROW_NNZ))
    assert (sw.blocks is not None) == (spmv == "blocks" and k <= 65536)   # the vector runs on column blocks
    for p in (1, 2, 7, 8, 9, 16, 24, 31, 32, 33, 65):
        b = torch.randn(k, p, generator=g)
        ref = ref_matmul(sw, b)
        assert close(S.matmul(sw, b), ref, k), p
        assert close(S.matmul(sw, b[:, 0].contiguous()), ref[:, 0], k)


def _blocks_args(sw):
    bl = S.formats.column_blocks(sw.ptr, sw.col, sw.values, sw.shape[1])
    return bl.ptr, bl.base, bl.offset, bl.values


def _op_args():
    """One call of every op, on awkward shapes and both index widths."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(13, 37, generator=g)
    b, x = torch.randn(37, 11, generator=g), torch.randn(37, generator=g)
    csr, csr32 = S.sparsify(w, 0.6), S.sparsify(w, 0.6, index_dtype="int32")
    grp, d4 = S.sparsify(w, 0.5, "1x4"), S.sparsify(w, None, "dense")
    return [("sparse_spmm", (csr.ptr, csr.col, csr.values, b, 13)),
            ("sparse_spmm", (csr32.ptr, csr32.col, csr32.values, b, 13)),
            ("sparse_spmv", (csr.ptr, csr.col, csr.values, x, 13)),
            ("blocked_spmv", (*_blocks_args(csr), x, 13)),
            ("group4_spmm", (grp.ptr, grp.col, grp.values, b, 13)),
            ("group4_spmv", (grp.ptr, grp.col, grp.values, x, 13)),
            ("dense4_spmm", (d4.values, b, 13)),
            ("dense4_spmv", (d4.values, x, 13))]


def test_every_op_is_declared_once_in_python():
    assert set(S.ops.SCHEMAS) == set(S.OPS) == {name for name, _ in _op_args()}
    cpp = (Path(ext.KERNEL_DIR) / "sparse" / "sparse.cpp").read_text()
    assert "m.def(" not in cpp and "TORCH_LIBRARY_FRAGMENT" not in cpp and "TORCH_LIBRARY_IMPL(effnb, CPU" in cpp


@pytest.mark.parametrize("name, args", _op_args(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_args())])
def test_fake_kernels_give_the_output_shape(name, args):
    from torch._subclasses.fake_tensor import FakeTensorMode
    S.ops.declare()
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out = getattr(torch.ops.effnb, name)(*fake)
    want = (13, 11) if name.endswith("spmm") else (13,)
    assert tuple(out.shape) == want and out.dtype == torch.float32


@pytest.mark.parametrize("name, args", _op_args(), ids=[f"{n}-{i}" for i, (n, _) in enumerate(_op_args())])
def test_opcheck(name, args):
    if not S.available():
        pytest.skip("opcheck needs the C++ kernels (test_cpp_is_under_test fails where a compiler exists)")
    torch.library.opcheck(getattr(torch.ops.effnb, name).default, args)


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0], a[1], a[2].double(), a[3], a[4]), "values is Double; pass values as Float"),
    (lambda a: (a[0], a[1], a[2], torch.randn(11, 37).t(), a[4]), "B is strided; pass B.contiguous()"),
    (lambda a: (a[0].long(), a[1], a[2], a[3], a[4]), "row pointer is Long"),
    (lambda a: (a[0], a[1], a[2], a[3], 12), "expected 13 entries"),
    (lambda a: (a[0], a[1].float(), a[2], a[3], a[4]), "int32 or int16"),
    (lambda a: (a[0], a[1], a[2][:-1].contiguous(), a[3], a[4]), "differ in length"),
])
def test_kernels_reject_bad_inputs(mutate, match):
    if not S.available():
        pytest.skip("the C++ checks need the C++ kernels")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.effnb.sparse_spmm(*mutate(_op_args()[0][1]))


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0].long(), *a[1:]), "block row pointer is Long"),
    (lambda a: (a[0], a[1].int(), *a[2:]), "base columns is Int"),
    (lambda a: (a[0], a[1], a[2].to(torch.int8), *a[3:]), "offsets is Char"),
    (lambda a: (*a[:3], a[3].double(), *a[4:]), "values is Double"),
    (lambda a: (*a[:4], a[4][::2], a[5]), "x is strided"),
    (lambda a: (*a[:5], 12), "expected 13 entries"),
    (lambda a: (a[0], a[1], a[2][:-1].contiguous(), *a[3:]), "8 offsets and 8 values"),
    (lambda a: (a[0], a[1][:-1].contiguous(), *a[2:]), "8 offsets and 8 values"),
    (lambda a: (a[0] + 1, *a[1:]), "run from 0"),
    (lambda a: (*a[:4], torch.randn(65537), a[5]), "at most 65536"),
    (lambda a: (*a[:4], torch.randn(2, 37), a[5]), "1-D"),
])
def test_blocked_spmv_rejects_bad_inputs(mutate, match):
    if not S.available():
        pytest.skip("the C++ checks need the C++ kernels")
    args = next(a for name, a in _op_args() if name == "blocked_spmv")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.effnb.blocked_spmv(*mutate(args))


def _check_blocks(sw):
    """The column blocks of ``sw`` against its CSR: same weight, every block as the greedy rule makes it,
    padding inert; and the blocked SpMV (the kernel through matmul, and the op's reference) against it."""
    n, k = sw.shape
    bl = sw.blocks
    assert bl is not None
    assert torch.equal(S.reference.blocks_to_dense(bl, sw.shape), sw.to_dense())
    nb = len(bl.base)
    assert bl.ptr.dtype == torch.int32 and bl.base.dtype == torch.int16 and bl.offset.dtype == torch.uint8
    assert int(bl.ptr[0]) == 0 and int(bl.ptr[-1]) == nb and bool((bl.ptr.diff() >= 0).all())
    assert bl.offset.numel() == bl.values.numel() == 8 * nb
    base = bl.base.long() & 0xFFFF
    cols = base[:, None] + bl.offset.view(-1, 8).long()
    assert bool((cols < k).all())
    # greedy: a block holds the next min(8, left in row) nonzeros unless the next one lies > 255 past its base
    col = sw.col.long() & 0xFFFF
    per_row = bl.ptr.diff().long()
    row_of = torch.repeat_interleave(torch.arange(n), per_row)
    first = 0
    for b in range(nb):
        r = int(row_of[b])
        if b == 0 or int(row_of[b - 1]) != r:
            first = int(sw.ptr[r])
        left = int(sw.ptr[r + 1]) - first
        size = int((bl.offset.view(-1, 8)[b] != 0).sum()) + 1     # offsets rise from 0, then padding is 0
        assert int(base[b]) == int(col[first])
        assert size == min(8, left) or int(col[first + size]) - int(base[b]) > 255, (b, size, left)
        v = bl.values.view(-1, 8)[b]
        assert torch.equal(v[:size], sw.values[first:first + size]) and not bool(v[size:].any())
        assert not bool(bl.offset.view(-1, 8)[b, size:].any())
        first += size
        if b == nb - 1 or int(row_of[b + 1]) != r:
            assert first == int(sw.ptr[r + 1])                  # the row's blocks hold all its nonzeros
    x = torch.randn(k, generator=torch.Generator().manual_seed(n + k))
    ref = sw.to_dense().double() @ x.double()
    assert close(S.matmul(sw, x), ref, k)
    got = S.reference.blocked_spmv(bl.ptr, bl.base, bl.offset, bl.values, x.double(), n)
    assert torch.allclose(got, ref, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 23), k=st.integers(1, 900), sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.998]),
       seed=st.integers(0, 2**16))
def test_column_blocks_match_csr_and_reference(n, k, sparsity, seed):
    """Random weights, K off multiples of 8 and past 255 (gaps that close blocks early at high sparsity)."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    _check_blocks(S.sparsify(w, sparsity, spmv="blocks"))


@pytest.mark.parametrize("k", [1, 9, 255, 256, 257, 4097, 65535, 65536])
def test_column_blocks_on_awkward_rows(k):
    """Empty rows, one nonzero, runs of 1..25, gaps of exactly 255 and 256 (the block's reach), the last
    column (>= 32768 must read as unsigned), one dense row, and a one-row weight."""
    g = torch.Generator().manual_seed(k)
    w = torch.zeros(9, k)
    w[1, k - 1] = 1.5
    for r, cnt in enumerate([3, 9, 17, 25], start=2):
        w[r, torch.randperm(k, generator=g)[:min(cnt, k)]] = torch.randn(min(cnt, k), generator=g)
    for r, gap in ((6, 255), (7, 256)):
        cols = torch.arange(0, k, gap)[:20]
        w[r, cols] = torch.arange(1, len(cols) + 1, dtype=torch.float32)
    w[8, :min(k, 100)] = torch.randn(min(k, 100), generator=g)
    w[8, k - 1] = -2.0
    _check_blocks(S.sparsify(w, None, spmv="blocks"))
    _check_blocks(S.sparsify(w[7:8], None, spmv="blocks"))
    # columns 255 apart pair up in blocks (0 and 255 share a base), columns 256 apart each close their block
    c255, c256 = min(20, len(range(0, k, 255))), min(20, len(range(0, k, 256)))
    assert S.sparsify(w[6:8], None, spmv="blocks").blocks.ptr.tolist() == [0, (c255 + 1) // 2, (c255 + 1) // 2 + c256]


def test_spmv_layout_is_chosen_per_matrix_by_bytes():
    g = torch.Generator().manual_seed(0)
    sw = S.sparsify(torch.randn(64, 4096, generator=g), 0.9)
    assert sw.blocks is not None and sw.read_bytes(1) == sw.blocks.nbytes < sw.nbytes == sw.read_bytes(8)
    assert sw.read_bytes(1) < 0.9 * sw.nbytes                      # ~5.3 bytes per nonzero against ~6
    clone = sw.clone()
    assert clone.blocks is not sw.blocks and torch.equal(clone.blocks.values, sw.blocks.values)
    # two nonzeros per row, far apart: a padded block each costs more than CSR's 6 bytes a nonzero
    far = torch.zeros(16, 4096)
    far[:, 0], far[:, 4000] = 1.0, 2.0
    assert S.sparsify(far, None).blocks is None and S.sparsify(far, None, spmv="blocks").blocks is not None
    assert S.sparsify(torch.randn(4, 70000, generator=g), 0.9).blocks is None   # uint16 bases: K <= 65536
    with pytest.raises(ValueError, match="65536"):
        S.sparsify(torch.randn(4, 70000, generator=g), 0.9, spmv="blocks")
    with pytest.raises(ValueError, match="spmv"):
        S.sparsify(torch.randn(4, 8), 0.5, spmv="bcsr")
    assert S.sparsify(torch.randn(8, 8), 0.5, "1x4").blocks is None
    assert S.sparsify(torch.randn(8, 8), 0.5, spmv="csr").blocks is None


KERNEL_TESTS = ["test_cpp_is_under_test", "test_matmul_matches_reference", "test_every_row_length_and_high_columns_match_reference",
                "test_awkward_shapes_and_empty_rows_match_reference", "test_opcheck", "test_kernels_reject_bad_inputs",
                "test_blocked_spmv_rejects_bad_inputs", "test_column_blocks_match_csr_and_reference",
                "test_column_blocks_on_awkward_rows",
                "test_empty_rows_and_wide_inputs_use_the_right_index_type", "test_linear_and_conv1x1_match_torch"]


@pytest.mark.parametrize("level", ["avx2", "scalar"])
@pytest.mark.isa_build("sparse")
def test_kernels_at_a_lower_isa_level(level):
    """The family built with EFFNB_ISA=<level> runs its own code path through the kernel tests above:
    the AVX2 path and the plain C++ path, on any CPU that runs them."""
    rerun_at_isa("sparse", level, __file__, KERNEL_TESTS)


# ---------------------------------------------------------------- the fallback

def test_forced_fallback_gives_the_same_answer(monkeypatch):
    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(9, 11, generator=g), torch.randn(4, 11, generator=g)
    layouts = [S.sparsify(w, 0.5), S.sparsify(w, 0.5, "1x4"), S.sparsify(w, None, "dense")]
    fast = [(S.linear(x, sw), S.linear(x[:1], sw)) for sw in layouts]
    monkeypatch.setattr(S.ops, "available", lambda: False)
    calls = []
    reference = S.ops.reference.matmul
    monkeypatch.setattr(S.ops.reference, "matmul", lambda sw, b: calls.append(sw.pattern) or reference(sw, b))
    assert S.backend() == ext.FALLBACK
    for sw, (y, y1) in zip(layouts, fast):
        assert torch.allclose(S.linear(x, sw), y, atol=1e-5) and torch.allclose(S.linear(x[:1], sw), y1, atol=1e-5)
    assert calls == [p for p in PATTERNS for _ in range(2)]     # every call took the reference
    assert S.linear_benchmark([(8, 8)], [1], [0.5]).providers[1].backend == ext.FALLBACK


def test_backend_is_cpp_whenever_the_library_is_built():
    if ext.load("sparse"):
        assert S.backend() == ext.backend("sparse") and S.backend().startswith("cpp-")
    else:
        assert S.backend() == ext.FALLBACK


def test_unbuilt_library_falls_back_and_still_answers(tmp_path):
    code = ("import torch; from effnb import sparse as S; w = torch.randn(6, 9); sw = S.sparsify(w, 0.5); "
            "x = torch.randn(2, 9); assert S.backend() == 'torch-fallback', S.backend(); "
            "assert torch.allclose(S.linear(x, sw), x @ sw.to_dense().t(), atol=1e-5); print('fallback ok')")
    env = dict(os.environ, EFFNB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "fallback ok" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- layouts and layers

@pytest.mark.parametrize("pattern", PATTERNS[:2])
def test_layout_keeps_the_largest_weights(pattern):
    w = torch.randn(37, 29, generator=torch.Generator().manual_seed(1))
    sw = S.sparsify(w, 0.6, pattern)
    wd = sw.to_dense()
    kept = wd != 0
    assert abs(kept.float().mean().item() - 0.4) < 0.05
    assert torch.equal(wd[kept], w[kept])          # kept weights are exact
    if pattern == "unstructured":
        assert w[kept].abs().min() >= w[~kept].abs().max()
    else:  # constant within each group of 4 rows
        pad = torch.nn.functional.pad(kept, (0, 0, 0, 3)).view(-1, 4, 29)
        assert torch.all(pad[:9].all(1) == pad[:9].any(1))


def test_sparsity_zero_is_exact_dense_and_all_zero_weight_gives_zeros():
    w = torch.randn(10, 12)
    assert torch.equal(S.sparsify(w, 0.0).to_dense(), w)
    assert torch.equal(S.sparsify(w, 0.0, "1x4").to_dense(), w)
    assert torch.equal(S.sparsify(w, None, "dense").to_dense(), w)
    z = S.sparsify(torch.zeros(9, 5), None)
    assert z.nnz == 0
    assert torch.equal(S.linear(torch.randn(3, 5), z), torch.zeros(3, 9))


def test_empty_rows_and_wide_inputs_use_the_right_index_type():
    w = torch.zeros(6, 70000)
    w[2, 69999] = 3.0
    w[4, 40000] = -2.0
    sw = S.sparsify(w, None)
    assert sw.col.dtype == torch.int32                      # more than 65536 inputs
    x = torch.randn(2, 70000)
    assert close(S.linear(x, sw), (x.double() @ w.double().t()), 70000)
    narrow = S.sparsify(torch.randn(8, 65536), 0.9)
    assert narrow.col.dtype == torch.int16                  # uint16 stored in int16
    xb = torch.randn(65536)
    assert close(S.matmul(narrow, xb), ref_matmul(narrow, xb), 65536)


def test_linear_and_conv1x1_match_torch():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(13, 7, generator=g)
    bias = torch.randn(13, generator=g)
    for pattern in PATTERNS:
        sw = S.sparsify(w, 0.5 if pattern != "dense" else None, pattern)
        wd = sw.to_dense()
        x = torch.randn(2, 3, 7, generator=g)
        assert torch.allclose(S.linear(x, sw, bias), torch.nn.functional.linear(x, wd, bias), atol=1e-5)
        xi = torch.randn(2, 7, 5, 3, generator=g)
        ref = torch.nn.functional.conv2d(xi, wd.view(13, 7, 1, 1), bias)
        assert torch.allclose(S.conv1x1(xi, sw, bias), ref, atol=1e-5)


@pytest.mark.parametrize("bad, err", [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError),
                                      ("0.5", ValueError), (True, ValueError)])
def test_bad_sparsity_is_refused(bad, err):
    with pytest.raises(err, match="sparsity"):
        S.sparsify(torch.randn(4, 4), bad)


def test_bad_inputs_say_what_to_do():
    with pytest.raises(TypeError, match="floating point"):
        S.sparsify(torch.ones(4, 4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="1x1"):
        S.sparsify(torch.randn(4, 4, 3, 3), 0.5)
    with pytest.raises(ValueError, match="pattern"):
        S.sparsify(torch.randn(4, 4), 0.5, "2:4")
    sw = S.sparsify(torch.randn(4, 6), 0.5)
    with pytest.raises(ValueError, match="6"):
        S.linear(torch.randn(2, 5), sw)
    with pytest.raises(TypeError, match="float32"):
        S.linear(torch.randn(2, 6, dtype=torch.float64), sw)
    with pytest.raises(ValueError, match="batch"):
        S.conv1x1(torch.randn(6, 3, 3), sw)
    with pytest.raises(TypeError, match="SparseWeight"):
        S.linear(torch.randn(2, 6), torch.randn(4, 6))



# ---------------------------------------------------------------- pruning, training, experiments

def test_sparsify_module_replaces_pointwise_layers_and_keeps_outputs():
    model = S.digits_cnn(width=8, seed=0).eval()
    x = torch.randn(2, 1, 16, 16)
    n_targets = len(S.prunable(model))
    layers = [m for _, m in S.prunable(model)]
    S.apply_masks(layers, S.prune_masks(layers, 0.7))
    with torch.no_grad():
        ref = model(x)
    report = S.sparsify_module(model, None)
    assert len(report) == n_targets and not S.prunable(model)
    assert all(abs(r["sparsity"] - 0.7) < 0.05 for r in report)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4)
    with pytest.raises(ValueError, match="no nn.Linear"):
        S.sparsify_module(nn.Sequential(nn.ReLU()), 0.5)


def test_global_and_layer_masks_and_schedule():
    a, b = nn.Linear(10, 10), nn.Linear(10, 10)
    with torch.no_grad():
        b.weight.mul_(100)
    glob = S.prune_masks([a, b], 0.5, scope="global")
    assert glob[0].sum() < glob[1].sum()               # the larger layer keeps more
    per = S.prune_masks([a, b], 0.5, scope="layer")
    assert per[0].sum() == per[1].sum() == 50
    assert S.gradual_sparsity(0, 0.9, 0, 100) == 0.0
    assert S.gradual_sparsity(100, 0.9, 0, 100) == pytest.approx(0.9)
    assert S.gradual_sparsity(50, 0.9, 0, 100) > 0.45   # cubic: fast early
    with pytest.raises(ValueError):
        S.gradual_sparsity(5, 0.9, 10, 10)


def test_iso_flop_widths_keep_nonzeros_and_prune_regrow_keeps_count():
    sizes = [64, 16, 16, 10]
    wide, sp = S.iso_flop_sparsities(sizes, 4)
    assert wide == [64, 64, 64, 10]
    for a, b2, wa, wb, s in zip(sizes[:-1], sizes[1:], wide[:-1], wide[1:], sp):
        assert wa * wb * (1 - s) == pytest.approx(a * b2)
    m = S.MaskedMLP(wide, sp, seed=0)
    before = [int(k.sum()) for k in m.masks]
    S.prune_regrow(m, 0.3, torch.Generator().manual_seed(0))
    assert [int(k.sum()) for k in m.masks] == before


def _tiny_digits(n_train=200, n_test=60):
    xtr, ytr, xte, yte = S.digits(8, seed=0)
    return xtr[:n_train], ytr[:n_train], xte[:n_test], yte[:n_test]


def test_epochs_to_reach_and_learning_curves_do_not_change_training():
    assert S.epochs_to_reach([0.2, 0.5, 0.96, 1.0]) == 3
    assert S.epochs_to_reach([0.8]) == 1
    assert S.epochs_to_reach([0.1, 0.99, 0.5]) == 2     # 95% of the *final* accuracy
    with pytest.raises(ValueError):
        S.epochs_to_reach([])
    xtr, ytr, xte, yte = _tiny_digits()
    seen = []
    a = S.train(S.MaskedMLP([64, 16, 10], [0.0, 0.0], seed=1), xtr, ytr, epochs=2, seed=1)
    b = S.train(S.MaskedMLP([64, 16, 10], [0.0, 0.0], seed=1), xtr, ytr, epochs=2, seed=1,
                on_epoch=lambda e, m: seen.append((e, S.accuracy(m, xte, yte))))
    assert [e for e, _ in seen] == [1, 2]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_random_search_trial_records_curves():
    r = S.random_search_trial(_tiny_digits(), hidden=[16], sparsity=0.5, candidates=2, search_epochs=1,
                              epochs=3, seed=0)
    for key in ("search", "random"):
        c = r[f"{key}_curve"]
        assert len(c) == 3 and all(0.0 <= v <= 1.0 for v in c)
        assert r[f"{key}_acc"] == pytest.approx(c[-1])
        assert r[f"{key}_auc"] == pytest.approx(float(np.mean(c)))
        assert 1 <= r[f"{key}_t95"] <= 3


def test_accuracy_vs_sparsity_covers_every_configuration():
    xtr, ytr, xte, yte = S.digits(8, seed=0)
    data = (xtr[:128], ytr[:128], xte[:40], yte[:40])
    runs, nets = S.accuracy_vs_sparsity(data, width=4, sparsities=[0.0, 0.8], group_sparsities=[0.5],
                                        epochs=1, seeds=2)
    assert len(runs) == 6 and set(nets) == {("unstructured", 0.0), ("unstructured", 0.8), ("1x4", 0.5)}
    got = runs.groupby(["pattern", "sparsity"])["achieved"].mean()
    assert got[("unstructured", 0.8)] == pytest.approx(0.8, abs=0.02) and got[("unstructured", 0.0)] == 0.0
    summ = S.accuracy_summary(runs)
    assert list(summ["count"]) == [2, 2, 2] and (summ["std"] >= 0).all()
    with pytest.raises(ValueError):
        S.accuracy_vs_sparsity(data, width=4, sparsities=[1.0], epochs=1)
    with pytest.raises(ValueError):
        S.accuracy_vs_sparsity(data, width=4, sparsities=[0.5], epochs=1, seeds=0)


def test_paired_test_and_break_even():
    r = S.paired_test([0.9, 0.8, 0.85, 0.95], [0.8, 0.7, 0.8, 0.9])
    assert r["mean_diff"] == pytest.approx(0.075) and r["t_p"] < 0.05 and r["ci_lo"] > 0
    assert S.break_even([0.0, 0.5, 0.9], [0.5, 0.8, 1.6]) == pytest.approx(0.5 + 0.2 / 0.8 * 0.4)
    assert S.break_even([0.0, 0.5], [1.2, 2.0]) == 0.0
    assert np.isnan(S.break_even([0.0, 0.5], [0.2, 0.4]))




# ---------------------------------------------------------------- the chapter's benchmark specs

LIMITS = {"read_gbps": 20.0, "peak_gflops": 100.0}


@pytest.fixture
def small_llc(monkeypatch):
    """A tiny last-level cache: cold benchmarks of tiny weights then rotate through a few copies, not thousands."""
    from effnb import cachesize
    monkeypatch.setattr(cachesize, "llc_bytes", lambda: 1 << 16)


def _as_rows(y, n):
    """Any provider's output as (n x M): F.linear gives (M x n), vectors become one column."""
    y = torch.as_tensor(np.asarray(y)).double()
    y = y if y.shape[0] == n else y.t()
    return y.reshape(n, -1)


def test_linear_peers_agree_and_count_their_own_bytes(small_llc):
    import scipy.sparse as sps
    spec = S.linear_benchmark([(16, 24)], [1, 5], [0.5, 0.9], seed=3, bsr=True)
    keys = [p.key for p in spec.providers]
    assert keys[:4] == ["torch dense F.linear", "effnb CSR", "torch CSR", "scipy CSR"] and spec.baseline == keys[0]
    assert [p.backend for p in spec.providers if p.ours] == [S.backend()]
    for case in spec.x_values:
        g = torch.Generator().manual_seed(3)
        sw = S.sparsify(torch.randn(case.n, case.k, generator=g), case.sparsity)
        x = torch.randn(case.m, case.k, generator=g)
        ref = _as_rows(x.double() @ sw.to_dense().double().t(), case.n)
        for p in spec.providers[:4]:   # BSR prunes whole 4x4 blocks: another weight, checked below
            assert torch.allclose(_as_rows(p.make(case)(), case.n), ref, atol=1e-4), (p.key, case)
        tcsr, scsr = sw.to_dense().to_sparse_csr(), sps.csr_matrix(sw.to_dense().numpy())
        counted = {p.key: p.bytes_moved(case) for p in spec.providers}
        if len(spec.providers) == 5:
            bsr = spec.providers[4].make(case).__closure__
            w_bsr = next(c.cell_contents for c in bsr if isinstance(c.cell_contents, torch.Tensor))
            assert counted["torch BSR 4x4"] == sum(t.numel() * t.element_size() for t in (
                w_bsr.values(), w_bsr.col_indices(), w_bsr.crow_indices()))
            assert abs(1 - w_bsr.values().numel() / (case.n * case.k) - case.sparsity) < 0.1
        assert counted["effnb CSR"] == sw.read_bytes(case.m) and counted["torch dense F.linear"] == 4 * case.n * case.k
        assert counted["torch CSR"] == sum(t.numel() * t.element_size()
                                           for t in (tcsr.values(), tcsr.col_indices(), tcsr.crow_indices()))
        assert counted["scipy CSR"] == scsr.data.nbytes + scsr.indices.nbytes + scsr.indptr.nbytes
        assert spec.providers[1].flops(case) == 2 * case.m * sw.nnz


def test_linear_result_gives_tables_break_even_and_figures(small_llc):
    res = S.linear_benchmark([(16, 24)], [1, 5], [0.3, 0.9], repeats=3).run(progress=False)
    table = res.table(LIMITS)
    assert list(table["backend"].unique()) == [S.backend()] and (table["% of roof"] > 0).all()
    sp = S.by_case(res)
    assert set(sp.provider) == {"effnb CSR", "torch CSR", "scipy CSR"} and len(sp) == 3 * 4
    x = S.LinearCase(16, 24, 1, 0.9)
    row = sp[(sp.provider == "effnb CSR") & (sp.m == 1) & (sp.sparsity == 0.9)].speedup.item()
    assert row == pytest.approx(res.time("torch dense F.linear", x) / res.time("effnb CSR", x))
    be = S.break_even_table(res)
    assert list(be["M"]) == [1, 5] and list(be["shape"]) == ["16x24"] * 2
    assert 0 < S.roof_pct(res, "torch dense F.linear", x, LIMITS)
    assert S.bytes_of(res, "torch dense F.linear", x) == 4 * 16 * 24
    assert S.bytes_of(res, "effnb CSR", x) < S.bytes_of(res, "scipy CSR", x) < S.bytes_of(res, "torch CSR", x)
    for fig in (S.plot_speedups(res), S.plot_tradeoff(res, _summary())):
        assert fig.get_size_inches()[0] <= 7.5 and "[" in fig._suptitle.get_text()


def _summary():
    import pandas as pd
    return pd.DataFrame({"pattern": ["unstructured", "unstructured", "1x4"], "sparsity": [0.0, 0.9, 0.3],
                         "mean": [92.0, 90.0, 91.0], "std": [0.5, 0.7, 0.0], "count": [2, 2, 2]})


def test_conv_peers_compute_the_same_layer():
    spec = S.conv_benchmark([(5, 8, 12), (3, 16, 4)], 0.7, seed=1)
    keys = {p.key for p in spec.providers if not p.ours}
    assert keys == {"torch dense conv2d", "torch conv2d channels_last", "torch matmul"}
    for shape in spec.x_values:
        hw, cin, cout = shape
        outs = {p.key: p.make(shape)().reshape(cout, hw * hw) for p in spec.providers}
        for key in ("torch conv2d channels_last", "torch matmul", "effnb sparse 1x1"):
            assert torch.allclose(outs[key], outs["torch dense conv2d"], atol=1e-4), key
        # the 1x4 layout prunes the same weight its own way; the dense twin keeps it whole
        assert outs["effnb 1x4 1x1"].shape == outs["effnb dense same-code"].shape == (cout, hw * hw)
    res = spec.run(progress=False)
    assert set(res.fastest_peer()["provider"]) <= keys
    assert res.plot(logy=True).figure.get_size_inches()[0] <= 7.5


def test_group_benchmark_and_cnn_latency(small_llc):
    res = S.group_benchmark(16, 24, [1, 3], 0.3, repeats=3).run(progress=False)
    t = res.table()
    assert set(t["ours"]) == {"effnb dense same-code", "effnb 1x4", "effnb CSR"}
    assert set(t["fastest peer"]) == {"torch dense F.linear"}
    assert list(res.ratio("effnb dense same-code", "effnb dense same-code")) == [1.0, 1.0]
    flops = {p.key: p.flops(3) for p in res.spec.providers}   # M = 3: every provider counts its own work
    assert flops["torch dense F.linear"] == flops["effnb dense same-code"] == 2 * 3 * 16 * 24
    assert max(flops["effnb CSR"], flops["effnb 1x4"]) < flops["effnb dense same-code"]
    net = S.digits_cnn(width=4, seed=0).eval()
    layers = [m for _, m in S.prunable(net)]
    S.apply_masks(layers, S.prune_masks(layers, 0.8))
    nets = {"80% unstructured": (net, "unstructured")}
    xb = torch.randn(3, 1, 8, 8)
    assert S.same_predictions(nets, xb) == {"80% unstructured": True}
    lat = S.cnn_latency_benchmark(nets, xb, repeats=3).run(progress=False)
    assert lat.keys() == ["torch", "effnb"] and lat.ratio("effnb", "torch").notna().all()



# ---------------------------------------------------------------- words, power and validity checks

def test_words_follow_the_measurement():
    W = S.words
    assert W.speed(2.0) == "2.00x faster than" and W.speed(0.72) == "1.39x slower than"
    assert W.speed(1.001) == "as fast as" and W.speed(0.999) == "as fast as"
    assert W.speed_range(1.5, 3.0) == "1.50x to 3.00x faster than"
    assert W.speed_range(0.25, 0.5) == "2.00x to 4.00x slower than"
    assert W.speed_range(2.0, 0.5) == "between 2.00x slower and 2.00x faster than"
    assert W.change(1.934) == "a gain of 1.93 points" and W.change(-0.22) == "a drop of 0.22 points"
    assert W.change(0.001) == "no change"
    assert W.break_even(float("nan"), [0.5, 0.9]) == "nowhere up to 90%, the highest measured sparsity"
    assert W.break_even(0.5, [0.5, 0.9]).startswith("at or below 50%")
    assert W.break_even(0.7, [0.5, 0.9]) == "at about 70% sparsity"
    assert W.higher(0.7, 0.5) == "a higher sparsity than" and W.higher(0.5, 0.7) == "a lower sparsity than"
    assert W.higher(float("nan"), 0.9) == "a higher sparsity than" and W.higher(0.5, 0.5) == "the same sparsity as"
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            W.speed(bad)
    with pytest.raises(ValueError):
        W.change(float("nan"))


def test_superiority_power_grows_with_seeds_and_effect():
    rng = np.random.default_rng(0)
    d = rng.normal(0.0, 1.0, 40)
    few, many = S.superiority_power(d[:5], 1.0), S.superiority_power(d, 1.0)
    assert 0.0 < few < many <= 1.0
    assert S.superiority_power(d, 0.2) < S.superiority_power(d, 1.0)
    assert S.superiority_power([1.0, 1.0, 1.0], 1.0) == 1.0
    with pytest.raises(ValueError):
        S.superiority_power([1.0], 1.0)


def _busy(n: int):
    """A callable whose time grows with n (pure Python, no allocation)."""
    return lambda: sum(range(n))


def _toy_race(lazy_work, same_work_time):
    from effnb import perf
    providers = [perf.Provider("honest", "honest", lambda x: _busy(20000 * x), ours=True,
                               bytes_moved=lambda x: 1e6 * x),
                 perf.Provider("lazy", "lazy", lambda x: (lambda: None), bytes_moved=lambda x: lazy_work * x),
                 # the same bytes at every point but x**2 the time: 64x apart, far past agrees_with's 5x, so a
                 # noisy first point (CI once saw 8x read as under 5x) cannot hide the disagreement
                 perf.Provider("flat", "flat", lambda x: _busy(same_work_time * x * x), bytes_moved=lambda x: 1e6)]
    return perf.Benchmark(name="toy", x="x", x_values=[1, 8], providers=providers, baseline="flat",
                          repeats=3).run(progress=False)


def test_measured_the_work_catches_timers_that_did_not_measure_it():
    limits = {"read_gbps": 10.0, "peak_gflops": 100.0}
    res = _toy_race(lazy_work=1e6, same_work_time=20000)
    assert S.measured_the_work(res, [1, 8], limits, keys=["honest"]) == (True, "")
    ok, why = S.measured_the_work(res, [1, 8], limits, keys=["lazy"])
    assert not ok and why.startswith("lazy: invalid measurement") and "work^" in why
    ok, why = S.measured_the_work(res, [1, 8], limits, keys=["flat"])   # same work, 64x the time: rates disagree
    assert not ok and "flat" in why and "off" in why
    assert S.measured_the_work(res, [1], limits) == (True, "")          # one point: nothing to compare


def test_conv_validity_needs_agreeing_peers_and_no_kernel_above_the_roof():
    res = S.conv_benchmark([(4, 8, 8), (4, 16, 8)], 0.5, repeats=3).run(progress=False)
    limits = {"read_gbps": 10.0, "peak_gflops": 1e9}
    peers = ~res.df["ours"]
    res.df.loc[peers, "median_s"] = 1e-3                    # torch's dense forms agree exactly
    assert S.conv_validity(res, 0.5, limits) == (True, "")
    slow = peers & (res.df["provider"] == "torch matmul")
    res.df.loc[slow, "median_s"] = 1.0                      # one dense form 1000x off the others
    ok, why = S.conv_validity(res, 0.5, limits)
    assert not ok and "torch's dense forms" in why
    res.df.loc[slow, "median_s"] = 1e-3
    res.df.loc[res.df["provider"] == "effnb sparse 1x1", "median_s"] = 1e-15   # faster than any machine
    ok, why = S.conv_validity(res, 0.5, {"read_gbps": 10.0, "peak_gflops": 100.0})
    assert not ok and "effnb sparse 1x1" in why and "peak" in why


def test_decay_brings_the_learning_rate_to_zero():
    xtr, ytr, _, _ = _tiny_digits(n_train=256)
    steps = {}

    def last_update(decay):
        model = S.MaskedMLP([64, 16, 10], [0.0, 0.0], seed=0)
        snap = []

        def on_step(step, total):
            if step >= total - 1:
                snap.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        S.train(model, xtr, ytr, epochs=2, seed=0, on_step=on_step, decay=decay)
        steps[decay] = len(snap)
        return float((snap[1] - snap[0]).abs().max())
    assert last_update(True) < 0.05 * last_update(False)
    assert steps == {True: 2, False: 2}
