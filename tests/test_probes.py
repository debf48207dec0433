"""The STREAM probes (Numba and C++) compute what their numpy references compute, at awkward sizes."""
import numpy as np
import pytest
import torch
from conftest import require_cpp
from hypothesis import given, settings, strategies as st

from effnb import probes as stream

SIZES = st.one_of(st.sampled_from([0, 1, 7, 8, 9, 15, 16, 17, 63, 1023, 4097]), st.integers(0, 20_000))
SETTINGS = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def ops():
    return require_cpp("stream", stream.cpp_ops)


def _arrays(n, seed, k=3):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-100, 100, n).astype(np.float32) for _ in range(k)]


def _close_sum(got, a):
    ref = stream.reference_read(a)
    assert abs(got - ref) <= 1e-5 * float(np.abs(a, dtype=np.float64).sum()) + 1e-6, (got, ref)


def _check_writes(read, copy, scale, triad, n, seed, s):
    a, b, c = _arrays(n, seed)
    _close_sum(read(a), a)
    out, ref = np.full(n, np.nan, np.float32), np.empty(n, np.float32)
    copy(a, out)
    np.testing.assert_array_equal(out, a)
    scale(a, out, s)
    stream.reference_scale(a, ref, s)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    triad(out, b, c, s)  # out = b + s * c
    stream.reference_triad(ref, b, c, s)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)  # fma may round once instead of twice


def _cpp(ops):
    t = torch.from_numpy
    return (lambda a: ops.stream_read(t(a)), lambda a, b: ops.stream_copy(t(a), t(b)),
            lambda a, b, s: ops.stream_scale(t(a), t(b), s), lambda a, b, c, s: ops.stream_triad(t(a), t(b), t(c), s))


@SETTINGS
@given(n=SIZES, seed=st.integers(0, 2**32 - 1), s=st.floats(-4, 4, width=32))
def test_numba_matches_numpy(n, seed, s):
    _check_writes(stream.read, stream.copy, stream.scale, stream.triad, n, seed, s)


@SETTINGS
@given(n=SIZES, seed=st.integers(0, 2**32 - 1), s=st.floats(-4, 4, width=32))
def test_cpp_matches_numpy(ops, n, seed, s):
    _check_writes(*_cpp(ops), n, seed, s)


@pytest.mark.parametrize("impl", ["numba", "cpp"])
@pytest.mark.parametrize("offsets", [(0, 0, 0), (1, 3, 2)])
def test_streaming_path_on_misaligned_views(request, impl, offsets):
    """Arrays large enough for the streaming-store path, starting off a vector boundary."""
    probes = _cpp(request.getfixturevalue("ops")) if impl == "cpp" else (
        stream.read, stream.copy, stream.scale, stream.triad)
    n = 5_000_011
    rng = np.random.default_rng(1)
    a, b, c = (rng.uniform(-1, 1, n + 4).astype(np.float32)[o:o + n] for o in offsets)
    _close_sum(probes[0](a), a)
    out = np.zeros(n + 5, np.float32)[offsets[1] + 1:offsets[1] + 1 + n]
    probes[1](a, out)
    np.testing.assert_array_equal(out, a)
    ref = np.empty(n, np.float32)
    probes[2](a, out, 0.5)
    stream.reference_scale(a, ref, 0.5)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    probes[3](out, b, c, 1.5)
    stream.reference_triad(ref, b, c, 1.5)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input: clear errors, before any work

@pytest.mark.parametrize("bad, match", [
    (lambda: torch.ones(8, dtype=torch.float64), "float32"),
    (lambda: torch.ones(16)[::2], "contiguous"),
    (lambda: torch.ones(9), "equal size"),
])
def test_cpp_rejects_bad_input(ops, bad, match):
    good = torch.zeros(8)
    with pytest.raises(RuntimeError, match=match):
        ops.stream_copy(bad(), good)
    with pytest.raises(RuntimeError, match=match):
        ops.stream_triad(good, good.clone(), bad(), 2.0)
    if match != "equal size":
        with pytest.raises(RuntimeError, match=match):
            ops.stream_read(bad())


def test_cpp_error_says_what_to_pass(ops):
    with pytest.raises(RuntimeError, match=r"pass a\.float\(\)"):
        ops.stream_read(torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("bad, exc, match", [
    (np.ones(8), TypeError, "float32"),
    (np.ones(16, np.float32)[::2], ValueError, "contiguous"),
    (np.ones(9, np.float32), ValueError, "equal-length"),
    ([1.0] * 8, TypeError, "numpy float32 array"),
])
def test_numba_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        stream.copy(bad, np.zeros(8, np.float32))


def test_bytes_moved():
    assert [stream.bytes_moved(k, 10) for k in stream.KERNELS] == [40, 80, 80, 120]
    with pytest.raises(ValueError, match="pick one of"):
        stream.bytes_moved("add", 10)
    with pytest.raises(ValueError):
        stream.bytes_moved("read", -1)


@pytest.mark.parametrize("name, args", [
    ("stream_copy", lambda: (torch.ones(33), torch.zeros(33))),
    ("stream_scale", lambda: (torch.ones(33), torch.zeros(33), 2.0)),
    ("stream_triad", lambda: (torch.zeros(33), torch.ones(33), torch.ones(33), 3.0)),
    ("stream_read", lambda: (torch.ones(33),)),
    ("stream_peak_fma", lambda: (torch.empty(16 * torch.get_num_threads()), 10)),
])
def test_opcheck(ops, name, args):
    """The schemas declared in Python match what the C++ ops do ((a!) on what they write)."""
    utils = ("test_schema", "test_autograd_registration")
    if name != "stream_read":   # it returns a Python float: no fake tensor can stand for it
        utils += ("test_faketensor",)
    torch.library.opcheck(getattr(torch.ops.effnb, name).default, args(), test_utils=utils)
