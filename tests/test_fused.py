"""The ``fused`` kernel family (chapter 01): the fused and unfused inverted-residual block against a float64
reference that shares no code with them, on random and awkward shapes, on every ISA path this CPU runs.

The kernel tests below run in this process (the build for this machine) and in subprocesses on builds
made with EFFNB_ISA=avx2 and EFFNB_ISA=scalar, each asserting the code path that ran. The fallback is
tested by forcing it and by an empty build cache, never by a failed build.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_cpp_under_test, rerun_at_isa
from effnb import ext
from effnb import measuring as E
from effnb import threads
from effnb.measuring import ops



def run_both(x, blk, tile_rows=4, channel_block=0):
    m = blk.mats()
    return ops.fused(x, m, blk.residual, tile_rows, channel_block), ops.unfused(x, m, blk.residual)


def assert_matches(out, ref, k):
    tol = 2e-5 * max(1, k) ** 0.5 * max(1.0, float(ref.abs().max()))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=tol)


def test_cpp_is_under_test():
    """Wherever a compiler exists the C++ family must be loaded: a broken build must not pass as the fallback."""
    assert_cpp_under_test("fused", ops.backend())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), h=st.integers(1, 13), w=st.integers(1, 13), c_in=st.integers(1, 40),
       expansion=st.integers(1, 6), same=st.booleans(), c_out=st.integers(1, 37), tile_rows=st.integers(1, 16),
       channel_block=st.sampled_from([0, 1, 8, 16, 17, 40, 1000]), seed=st.integers(0, 2**16))
def test_blocks_match_reference(n, h, w, c_in, expansion, same, c_out, tile_rows, channel_block, seed):
    blk = E.make_block(c_in, expansion, c_in if same else c_out, seed=seed)
    x = torch.randn(n, h, w, c_in, generator=torch.Generator().manual_seed(seed))
    ref = E.reference(x, blk)
    fused, unfused = run_both(x, blk, tile_rows, channel_block)
    assert fused.shape == unfused.shape == (n, h, w, blk.c_out)
    assert_matches(fused, ref, blk.c_exp)
    assert_matches(unfused, ref, blk.c_exp)


@pytest.mark.parametrize("n, h, w, c_in, c_out, expansion, tile_rows, channel_block", [
    (1, 1, 1, 1, 1, 1, 1, 0),          # one pixel, one channel: every vector is a tail
    (2, 1, 9, 3, 3, 6, 1, 0),          # one row: no row above or below
    (1, 9, 1, 5, 5, 6, 2, 16),         # one column: no left or right neighbour
    (1, 56, 56, 24, 24, 6, 7, 32),     # MobileNetV2's 24@56, channel blocks of the expanded 144
    (1, 14, 14, 64, 64, 6, 14, 0),     # one tile per image
    (3, 7, 7, 17, 33, 6, 100, 48),     # no residual, tile taller than the image, block wider than a vector
    (1, 8, 13, 160, 160, 1, 3, 0),     # no expansion, wide channels
])
def test_awkward_shapes_match_reference(n, h, w, c_in, c_out, expansion, tile_rows, channel_block):
    blk = E.make_block(c_in, expansion, c_out, seed=3)
    x = torch.randn(n, h, w, c_in, generator=torch.Generator().manual_seed(4))
    ref = E.reference(x, blk)
    for out in run_both(x, blk, tile_rows, channel_block):
        assert_matches(out, ref, blk.c_exp)


def test_fused_and_unfused_are_the_same_code():
    """With all channels at once, the fused kernel does every output's arithmetic in the unfused kernel's order:
    the results are bitwise equal whatever the tile height or thread count."""
    blk = E.make_block(17, 6, seed=5)
    x = torch.randn(2, 11, 9, 17, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        outs = []
        for n_threads in sorted({1, min(2, threads.available_cores())}):
            threads.set_threads(n_threads)
            outs += [ops.fused(x, blk.mats(), True, t, 0) for t in (1, 3, 100)] + [ops.unfused(x, blk.mats(), True)]
    finally:
        threads.set_threads(before)
    assert all(torch.equal(o, outs[0]) for o in outs)


def test_empty_batch_gives_an_empty_output():
    blk = E.make_block(8, 2, seed=0)
    for out in run_both(torch.empty(0, 5, 5, 8), blk):
        assert out.shape == (0, 5, 5, 8)


def _op_args():
    blk = E.make_block(5, 3, 7, seed=1)
    x = torch.randn(2, 6, 5, 5)
    return {"ir_block_unfused": (x, *blk.mats(), False), "ir_block_fused": (x, *blk.mats(), False, 2, 8)}


@pytest.mark.parametrize("name", sorted(ops.SCHEMAS))
def test_fake_kernels_give_the_output_shape(name):
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops.declare()
    args = _op_args()[name]
    with FakeTensorMode() as mode:
        out = getattr(torch.ops.effnb, name)(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                               for a in args])
    assert tuple(out.shape) == (2, 6, 5, 7) and out.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(ops.SCHEMAS))
def test_opcheck(name):
    if not ops.available():
        pytest.skip("opcheck needs the C++ kernels (test_cpp_is_under_test fails where a compiler exists)")
    torch.library.opcheck(getattr(torch.ops.effnb, name).default, _op_args()[name])


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0].double(), *a[1:]), "x is Double; pass x as Float"),
    (lambda a: (a[0].transpose(1, 2), *a[1:]), "x is strided; pass x.contiguous()"),
    (lambda a: (a[0], a[1][:4].contiguous(), *a[2:]), "pass w1 as \\[Cin, Cexp\\]"),
    (lambda a: (a[0], a[1], a[2][:-1].contiguous(), *a[3:]), "expected b1"),
    (lambda a: (*a[:7], True, *a[8:]), "a residual needs Cin == Cout"),
    (lambda a: (*a[:8], 0, a[9]), "tile_rows must be >= 1"),
    (lambda a: (*a[:9], -1), "channel_block must be >= 0"),
    (lambda a: (a[0][0], *a[1:]), "x must be 4-D"),
])
def test_kernels_reject_bad_inputs(mutate, match):
    if not ops.available():
        pytest.skip("the C++ checks need the C++ kernels")
    with pytest.raises(RuntimeError, match=match):
        torch.ops.effnb.ir_block_fused(*mutate(_op_args()["ir_block_fused"]))


KERNEL_TESTS = ["test_cpp_is_under_test", "test_blocks_match_reference", "test_awkward_shapes_match_reference",
                "test_fused_and_unfused_are_the_same_code", "test_empty_batch_gives_an_empty_output", "test_opcheck",
                "test_kernels_reject_bad_inputs"]


def _python(*args, env: dict, timeout: float = 900):
    """This interpreter run with ``args`` in ``env``: the finished process, its output as text."""
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("level", ["avx2", "scalar"])
@pytest.mark.isa_build("fused")
def test_kernels_at_a_lower_isa_level(level):
    """The family built with EFFNB_ISA=<level> runs its own code path through the kernel tests above:
    the AVX2 path and the plain C++ path, on any CPU that runs them."""
    rerun_at_isa("fused", level, __file__, KERNEL_TESTS)


# ---------------------------------------------------------------- the fallback

def test_forced_fallback_runs_the_reference(monkeypatch):
    blk = E.make_block(6, 2, seed=2)
    x = torch.randn(1, 5, 4, 6)
    monkeypatch.setattr(ops, "available", lambda: False)
    assert ops.backend() == ext.FALLBACK
    ref = E.reference(x, blk)
    for out in run_both(x, blk, 2, 8):
        assert_matches(out, ref, blk.c_exp)
    assert E.block_benchmark(["6@5"], 1, threads=1).providers[0].backend == ext.FALLBACK


def test_unbuilt_library_falls_back_and_still_answers(tmp_path):
    code = ("import torch; from effnb import measuring as E; b = E.make_block(4, 2, seed=0); "
            "x = torch.randn(1, 3, 3, 4); assert E.ops.backend() == 'torch-fallback', E.ops.backend(); "
            "y = E.ops.fused(x, b.mats(), True, 2, 0); "
            "assert torch.allclose(y.double(), E.reference(x, b), atol=1e-4); print('fallback ok')")
    out = _python("-c", code, env=dict(os.environ, EFFNB_CACHE=str(tmp_path)), timeout=120)
    assert out.returncode == 0 and "fallback ok" in out.stdout, out.stderr[-2000:]


def test_torch_eager_block_matches_reference_in_both_layouts():
    """The peer computes the same block: the conv weights and our matrices describe one set of numbers."""
    blk = E.make_block(12, 6, seed=7)
    x = torch.randn(2, 9, 8, 12, generator=torch.Generator().manual_seed(7))
    ref = E.reference(x, blk)
    nchw = x.permute(0, 3, 1, 2).contiguous()
    for y in (E.eager(nchw, blk), E.eager(nchw.to(memory_format=torch.channels_last), blk,
                                          E.block.channels_last(blk))):
        assert_matches(y.permute(0, 2, 3, 1), ref, blk.c_exp)
