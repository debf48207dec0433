"""Chapter 09's kernels against their references, on every ISA path: block top-k decode attention and
clustered (routing) attention, awkward shapes, the selection itself, bad inputs, and the fallback."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_cpp_under_test, rerun_at_isa
from effnb import ext, threads
from effnb.attention import ops, reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_matches(got, want):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


def decode_case(hq, hkv, d, length, block, seed=0, cap_extra=5):
    """q and a cache whose rows past ``length`` (and summary rows past the full blocks) are NaN: a kernel
    that reads them cannot pass."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(hq, d, generator=g)
    k = torch.randn(hkv, length + cap_extra, d, generator=g)
    v = torch.randn(hkv, length + cap_extra, d, generator=g)
    k[:, length:] = math.nan
    v[:, length:] = math.nan
    nfull = length // block
    summary = torch.full((hkv, nfull + 2, d), math.nan)
    summary[:, :nfull] = reference.block_summaries(k, length, block)
    return q, k, v, summary


def topk_for(kind, nfull):
    return {"0": 0, "1": 1, "half": nfull // 2, "nfull": nfull, "more": nfull + 3}[kind]


# ---------------------------------------------------------------- block top-k decode

def test_cpp_is_under_test():
    """Wherever a compiler exists the C++ family must be loaded: a broken build must not pass as the fallback."""
    assert_cpp_under_test(ops.FAMILY, ops.backend())


HEADS = [(9, 3, 64), (4, 4, 16), (8, 2, 80), (4, 1, 1)]   # (Hq, Hkv, d): groups 3, 1, 4, 4
LENGTHS = [(1, 16), (40, 64), (256, 64), (300, 64), (1000, 7), (3000, 64)]   # (length, block)


TOPKS = ["0", "1", "half", "nfull", "more"]
DECODE_CASES = [(*heads, *lb, t) for heads in HEADS for lb in LENGTHS for t in TOPKS
                if heads[2] >= 64 or t in ("1", "nfull")]   # small heads: fewer topk kinds, to keep it quick


@pytest.mark.parametrize("hq, hkv, d, length, block, topk", DECODE_CASES)
def test_topk_decode_matches_reference(hq, hkv, d, length, block, topk):
    q, k, v, s = decode_case(hq, hkv, d, length, block, seed=hq * 1000 + d + length)
    t = topk_for(topk, length // block)
    want = reference.topk_decode_ref(q, k, v, s, length, block, t)
    assert_matches(ops.topk_decode(q, k, v, s, length, block, t), want)


@pytest.mark.parametrize("hq, hkv, d", [(9, 3, 64), (8, 2, 80)])
def test_every_block_is_dense_attention(hq, hkv, d):
    """topk >= nfull is the same code as dense decoding: it must equal SDPA over the whole cache."""
    length = 1000
    q, k, v, s = decode_case(hq, hkv, d, length, 64)
    want = F.scaled_dot_product_attention(q.view(1, hkv, hq // hkv, d), k[:, :length].unsqueeze(0),
                                          v[:, :length].unsqueeze(0)).reshape(hq, d)
    assert_matches(ops.topk_decode(q, k, v, s, length, 64, length // 64), want)


def attend(q, k, v, rows):
    """Softmax attention of q (G, d) over the given rows of one head's k, v: what the op must compute."""
    att = torch.softmax(q.double() @ k[rows].double().t() / math.sqrt(q.shape[1]), dim=-1)
    return (att @ v[rows].double()).float()


def test_the_top_block_is_attended():
    """Block 5's keys point along q, so its summary scores highest: topk = 1 must attend it and the tail."""
    block, length = 4, 34
    g = torch.Generator().manual_seed(1)
    q = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0, 0]])
    k = 0.1 * torch.randn(1, length, 4, generator=g)
    k[0, 20:24, 0] = 3.0
    v = torch.randn(1, length, 4, generator=g)
    s = reference.block_summaries(k, length, block)
    rows = torch.cat([torch.arange(20, 24), torch.arange(32, 34)])
    got = ops.topk_decode(q, k, v, s, length, block, 1)
    assert_matches(got, attend(q, k[0], v[0], rows))
    other = attend(q, k[0], v[0], torch.cat([torch.arange(16, 20), torch.arange(32, 34)]))
    assert (got - other).abs().max() > 1e-2


def test_ties_go_to_the_lower_block():
    """Equal summaries (exact in fp32): the topk lowest blocks are attended."""
    block, length, hkv, d = 8, 60, 2, 16
    q, k, v, _ = decode_case(2 * hkv, hkv, d, length, block)
    q = q.round()
    s = torch.ones(hkv, length // block, d)
    got = ops.topk_decode(q, k, v, s, length, block, 3)
    rows = torch.cat([torch.arange(3 * block), torch.arange(length // block * block, length)])
    want = torch.cat([attend(q[2 * h:2 * h + 2], k[h], v[h], rows) for h in range(hkv)])
    assert_matches(got, want)


@pytest.mark.parametrize("length, block, topk, sink", [(300, 64, 1, 1), (300, 64, 0, 2), (1000, 7, 20, 3),
                                                      (40, 64, 1, 1), (256, 64, 2, 9), (3000, 64, 5, 1)])
def test_sink_blocks_match_the_reference(length, block, topk, sink):
    q, k, v, s = decode_case(9, 3, 64, length, block, seed=length + sink)
    assert_matches(ops.topk_decode(q, k, v, s, length, block, topk, sink),
                   reference.topk_decode_ref(q, k, v, s, length, block, topk, sink))


def test_sink_blocks_are_attended_whatever_they_score():
    """Block 0 scores lowest, yet sink = 1 attends it next to the best block and the tail."""
    block, length = 4, 34
    g = torch.Generator().manual_seed(2)
    q = torch.tensor([[1.0, 0, 0, 0]])
    k = 0.1 * torch.randn(1, length, 4, generator=g)
    k[0, :4, 0], k[0, 20:24, 0] = -3.0, 3.0
    v = torch.randn(1, length, 4, generator=g)
    s = reference.block_summaries(k, length, block)
    rows = torch.cat([torch.arange(0, 4), torch.arange(20, 24), torch.arange(32, 34)])
    assert_matches(ops.topk_decode(q, k, v, s, length, block, 1, 1), attend(q, k[0], v[0], rows))


def test_no_key_at_all_is_a_zero_row():
    """topk = 0 with no partial tail block leaves nothing to attend: zero rows, not NaN."""
    q, k, v, s = decode_case(4, 2, 16, 128, 64)
    assert torch.equal(ops.topk_decode(q, k, v, s, 128, 64, 0), torch.zeros(4, 16))


def test_block_summaries_are_block_means():
    k = torch.arange(2 * 10 * 3, dtype=torch.float32).reshape(2, 10, 3)
    s = reference.block_summaries(k, 9, 4)
    assert s.shape == (2, 2, 3)
    assert_matches(s[1, 1], k[1, 4:8].mean(dim=0))


# ---------------------------------------------------------------- clustered attention

def cluster_case(heads, n, d, n_clusters, kind, seed=0, shared=False):
    """q, k, v and (order, offsets) for queries and keys from random labels: balanced, with empty clusters
    (labels from every other cluster only), or one giant cluster holding ~90% of the tokens."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(heads, n, d, generator=g) for _ in range(3))

    def labels():
        lab = torch.randint(0, n_clusters, (heads, n), generator=g)
        if kind == "empty":
            lab = lab // 2 * 2
        elif kind == "giant":
            lab = torch.where(torch.rand(heads, n, generator=g) < 0.9, 0, lab)
        return lab

    ql = labels()
    qo, qf = reference.clusters_from_labels(ql, n_clusters)
    ko, kf = (qo, qf) if shared else reference.clusters_from_labels(labels(), n_clusters)
    return q, k, v, qo, qf, ko, kf


CLUSTERS = [  # (H, n, d, C, kind)
    (9, 256, 64, 16, "balanced"), (2, 300, 80, 6, "empty"), (3, 200, 16, 1, "balanced"), (2, 1, 16, 3, "balanced"),
    (2, 333, 64, 5, "giant"), (4, 97, 1, 7, "balanced"), (1, 150, 64, 150, "balanced")]


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads, n, d, n_clusters, kind", CLUSTERS)
def test_cluster_attention_matches_reference(heads, n, d, n_clusters, kind, causal, shared):
    args = cluster_case(heads, n, d, n_clusters, kind, seed=n + d, shared=shared)
    assert_matches(ops.cluster_attention(*args, causal=causal), reference.cluster_attention_ref(*args, causal=causal))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("d", [16, 80])
def test_one_cluster_is_dense_attention(d, causal):
    q, k, v, qo, qf, ko, kf = cluster_case(3, 200, d, 1, "balanced")
    want = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=causal)[0]
    assert_matches(ops.cluster_attention(q, k, v, qo, qf, ko, kf, causal), want)


def test_a_query_with_no_allowed_key_gets_a_zero_row():
    """Queries 0, 1 share a cluster with keys 2, 3 only: causally they see nothing."""
    q, k, v = (torch.randn(1, 4, 16) for _ in range(3))
    qo, qf = reference.clusters_from_labels(torch.tensor([[0, 0, 1, 1]]), 2)
    ko, kf = reference.clusters_from_labels(torch.tensor([[1, 1, 0, 0]]), 2)
    got = ops.cluster_attention(q, k, v, qo, qf, ko, kf, True)
    assert torch.equal(got[0, :2], torch.zeros(2, 16))
    assert_matches(got[0, 2:], attend(q[0, 2:], k[0], v[0], torch.arange(2)))


def test_every_thread_count_gives_the_same_bits():
    """Chunks and work items depend only on the shapes, never on the thread count."""
    if not ops.available():
        pytest.skip("the thread count is the C++ kernels'")
    dq, dk, dv, ds = decode_case(9, 3, 64, 3000, 64)
    cargs = cluster_case(9, 600, 64, 5, "giant")
    before = ext.omp_threads(ops.FAMILY)
    outs = []
    try:
        for n in (1, max(2, threads.available_cores())):
            ext.sync_threads(n)
            outs.append((ops.topk_decode(dq, dk, dv, ds, 3000, 64, 10), ops.topk_decode(dq, dk, dv, ds, 3000, 64, 99),
                         ops.cluster_attention(*cargs, causal=True)))
    finally:
        ext.sync_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_opcheck():
    if not ops.available():
        pytest.skip("opcheck runs the C++ kernels")
    q, k, v, s = decode_case(6, 2, 16, 70, 16)
    s = s[:, :70 // 16].contiguous()
    for t in (2, 9):
        torch.library.opcheck(torch.ops.effnb.attention_topk_decode.default, (q, k, v, s, 70, 16, t))
    torch.library.opcheck(torch.ops.effnb.attention_cluster.default, (*cluster_case(2, 50, 16, 4, "empty"), True))


# ---------------------------------------------------------------- bad inputs

def _decode_args():
    q, k, v, s = decode_case(6, 2, 16, 70, 16)
    return q, k, v, s, 70, 16, 2


# (what to change in the args, the C++ message, the Python message)
BAD_DECODE = [
    (lambda a: (a[0].double(), *a[1:]), "q is Double; pass q as Float", r"q is torch.float64; pass q.float\(\)"),
    (lambda a: (a[0], a[1][:, ::2], *a[2:]), "k is strided; pass k.contiguous", r"k is strided; pass k.contiguous\(\)"),
    (lambda a: (a[0][:5].contiguous(), *a[1:]), "Hq = 5 is not a multiple of Hkv = 2",
     "Hq = 5 is not a multiple of Hkv = 2"),
    (lambda a: (*a[:3], a[3][:, :3].contiguous(), *a[4:]), r"summary has shape \[2, 3, 16\]; pass \(Hkv, nsum, d\)",
     r"summary has shape \(2, 3, 16\); pass \(Hkv, nsum, d\) = \(2, >= 4, 16\)"),
    (lambda a: (*a[:4], 76, *a[5:]), "length is 76; pass 1 <= length <= cap = 75", "length is 76; pass 1 <= length"),
    (lambda a: (*a[:4], 0, *a[5:]), "length is 0; pass 1 <= length", "length is 0; pass 1 <= length"),
    (lambda a: (*a[:5], 0, a[6]), "block is 0; pass a block size >= 1", "block is 0; pass a block size >= 1"),
    (lambda a: (*a[:6], -1), r"topk is -1; pass topk >= 0", r"topk is -1; pass topk >= 0"),
    (lambda a: (*a, -1), r"sink is -1; pass sink >= 0", r"sink is -1; pass sink >= 0"),
    (lambda a: (a[0], a[1], a[2][:, :-1].contiguous(), *a[3:]), r"v has shape \[2, 74, 16\]; pass the value cache",
     r"v has shape \(2, 74, 16\); pass the value cache"),
]


def _cluster_args():
    return cluster_case(2, 20, 8, 3, "balanced")


def _swap_first_two(order):
    order = order.clone()
    order[:, [0, 1]] = order[:, [1, 0]]
    return order


BAD_CLUSTER = [
    (lambda a: (a[0].half(), *a[1:]), "q is Half", r"q is torch.float16; pass q.float\(\)"),
    (lambda a: (a[0], a[1].transpose(1, 2).contiguous().transpose(1, 2), *a[2:]), "k is strided",
     r"k is strided; pass k.contiguous\(\)"),
    (lambda a: (*a[:3], a[3].int(), *a[4:]), "q_order is Int; pass q_order as Long", r"pass q_order.long\(\)"),
    (lambda a: (*a[:4], a[4] - a[4][:, :1] + 1, *a[5:]), r"q_offsets\[0\] runs from 1 to 21; pass offsets from 0 to n",
     "q_offsets must run from 0 to n = 20"),
    (lambda a: (*a[:6], torch.cat([a[6][:, :-1], a[6][:, -1:] - 1], dim=1)), r"k_offsets\[0\] runs from 0 to 19",
     "k_offsets must run from 0 to n = 20"),
    (lambda a: (*a[:6], a[6][:, :-1].contiguous()), r"k_offsets has shape \[2, 3\]; pass \(H, C\+1\) = \(2, 4\)",
     r"k_offsets has shape \(2, 3\); pass \(H, C\+1\) = \(2, 4\)"),
    (lambda a: (a[0], a[1][:, :-1].contiguous(), *a[2:]), "pass three", "pass three"),
]


@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD_DECODE)
def test_decode_kernel_rejects_bad_inputs(mutate, cpp_message, python_message):
    if not ops.available():
        pytest.skip("the C++ checks need the C++ kernel")
    with pytest.raises(RuntimeError, match=cpp_message):
        torch.ops.effnb.attention_topk_decode(*mutate(_decode_args()))


@pytest.mark.parametrize("mutate, cpp_message, python_message", BAD_CLUSTER)
def test_cluster_kernel_rejects_bad_inputs(mutate, cpp_message, python_message):
    if not ops.available():
        pytest.skip("the C++ checks need the C++ kernel")
    with pytest.raises(RuntimeError, match=cpp_message):
        torch.ops.effnb.attention_cluster(*mutate(_cluster_args()), True)


WRAPPER_CASES = ([(ops.topk_decode, _decode_args, m, p) for m, _, p in BAD_DECODE]
                 + [(ops.cluster_attention, _cluster_args, m, p) for m, _, p in BAD_CLUSTER])


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("op, args, mutate, python_message", WRAPPER_CASES)
def test_wrappers_reject_bad_inputs(op, args, mutate, python_message, fallback, monkeypatch):
    """Both ops' Python checks run first, with the kernel loaded or not."""
    if fallback:
        monkeypatch.setattr(ops, "available", lambda: False)
    with pytest.raises(ValueError, match=python_message):
        op(*mutate(args()))


BAD_ORDER = [  # (the bad order, the message): the kernel checks these in C++, the fallback in Python
    (lambda o: _swap_first_two(o), "not ascending within"),
    (lambda o: torch.where(o == 3, 4, o), "repeats"),
    (lambda o: torch.where(o == 3, 20, o), "holds|outside"),
]


@pytest.mark.parametrize("mutate, message", BAD_ORDER)
def test_orders_must_be_permutations_ascending_per_cluster(mutate, message, monkeypatch):
    q, k, v, qo, qf, ko, kf = _cluster_args()
    bad = mutate(qo)
    if ops.available():
        with pytest.raises(RuntimeError, match=f"q_order.*({message})"):
            ops.cluster_attention(q, k, v, bad, qf, ko, kf)
    monkeypatch.setattr(ops, "available", lambda: False)
    with pytest.raises(ValueError, match=f"q_order.*({message})"):
        ops.cluster_attention(q, k, v, bad, qf, ko, kf)


def test_wrappers_reject_what_is_not_a_tensor_or_an_int():
    q, k, v, s, length, block, topk = _decode_args()
    with pytest.raises(ValueError, match="k must be a torch.Tensor, got list"):
        ops.topk_decode(q, k.tolist(), v, s, length, block, topk)
    with pytest.raises(ValueError, match="topk is 2.0; pass topk >= 0"):
        ops.topk_decode(q, k, v, s, length, block, 2.0)
    with pytest.raises(ValueError, match="causal is 1; pass True or False"):
        ops.cluster_attention(*_cluster_args(), causal=1)


KERNEL_TESTS = ["test_cpp_is_under_test", "test_topk_decode_matches_reference", "test_every_block_is_dense_attention",
                "test_the_top_block_is_attended", "test_ties_go_to_the_lower_block", "test_no_key_at_all_is_a_zero_row",
                "test_sink_blocks_match_the_reference", "test_sink_blocks_are_attended_whatever_they_score",
                "test_cluster_attention_matches_reference", "test_one_cluster_is_dense_attention",
                "test_a_query_with_no_allowed_key_gets_a_zero_row", "test_every_thread_count_gives_the_same_bits",
                "test_opcheck", "test_decode_kernel_rejects_bad_inputs", "test_cluster_kernel_rejects_bad_inputs"]


@pytest.mark.parametrize("level", ["avx2"])
@pytest.mark.isa_build("attention")
def test_kernels_at_a_lower_isa_level(level):
    """The family built with EFFNB_ISA=avx2 runs its AVX2 path through the kernel tests above, on any
    CPU that runs them. (simd.h's one-lane path builds with EFFNB_ISA=scalar; it is left out of
    `make test`: a second build of this family costs about a minute on 2 cores.)"""
    rerun_at_isa(ops.FAMILY, level, __file__, KERNEL_TESTS)


# ---------------------------------------------------------------- the fallback

def test_forced_fallback_gives_the_same_answer(monkeypatch):
    dargs = (*decode_case(9, 3, 64, 300, 64), 300, 64, 2)
    cargs = cluster_case(3, 100, 16, 4, "balanced")
    ours = ops.topk_decode(*dargs), ops.cluster_attention(*cargs)
    monkeypatch.setattr(ops, "available", lambda: False)
    assert ops.backend() == "torch-fallback"
    assert_matches(ops.topk_decode(*dargs), ours[0])
    assert_matches(ops.cluster_attention(*cargs), ours[1])
