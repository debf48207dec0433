"""Chapter 09's Python around the kernels: routing plans, block top-k inside a model, the decode split."""
import math

import pytest
import torch
import torch.nn.functional as F

from effnb.attention import decode as DC
from effnb.attention import experiments as E
from effnb.attention import peers, reference, routing
from effnb.lm.model import LM, Config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lm(seed=0, n_heads=6, n_kv_heads=2):
    cfg = Config(vocab_size=97, dim=48, n_layers=2, n_heads=n_heads, n_kv_heads=n_kv_heads, ffn_dim=64, max_seq=64)
    return LM(cfg).init_weights(seed).eval()


# ---------------------------------------------------------------- routing plans

@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("h,n,c", [(1, 1, 1), (2, 50, 7), (3, 129, 11), (2, 64, 64)])
def test_plan_is_a_partition_sorted_by_cluster(shared, h, n, c):
    g = torch.Generator().manual_seed(n)
    q, k = torch.randn(h, n, 8, generator=g), torch.randn(h, n, 8, generator=g)
    p = routing.plan(q, k, clusters=c, shared=shared)
    for order, offsets in ((p.q_order, p.q_offsets), (p.k_order, p.k_offsets)):
        assert offsets.shape == (h, c + 1) and (offsets[:, 0] == 0).all() and (offsets[:, -1] == n).all()
        assert (offsets.diff(dim=1) >= 0).all()
        assert torch.equal(order.sort(dim=1).values, torch.arange(n).expand(h, n))
        for hh in range(h):   # ascending positions inside each cluster: the causal kernel relies on it
            for a, b in zip(offsets[hh, :-1].tolist(), offsets[hh, 1:].tolist()):
                assert (order[hh, a:b].diff() > 0).all()
    assert (p.q_order is p.k_order) == shared


def test_labels_invert_the_sort():
    q = torch.randn(3, 77, 8)
    p = routing.plan(q, q, clusters=6)
    lab = p.labels()
    for h in range(3):
        for c in range(6):
            a, b = p.q_offsets[h, c], p.q_offsets[h, c + 1]
            assert (lab[h, p.q_order[h, a:b]] == c).all()


def test_routing_puts_similar_tokens_together():
    # two well separated directions: the two clusters must split the tokens by direction
    g = torch.Generator().manual_seed(0)
    base = torch.zeros(1, 40, 4)
    base[0, :20, 0], base[0, 20:, 1] = 1.0, 1.0
    x = base + 0.01 * torch.randn(1, 40, 4, generator=g)
    p = routing.plan(x, x, clusters=2, iters=3)
    sizes = p.q_offsets.diff(dim=1)[0].tolist()
    assert sorted(sizes) == [20, 20]
    first = p.q_order[0, :sizes[0]]
    assert (first < 20).all() or (first >= 20).all()


def test_one_cluster_is_dense_causal_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 45, 16, generator=g) for _ in range(3))
    torch.testing.assert_close(routing.routing_attention(q, k, v, clusters=1), peers.sdpa_causal(q, k, v),
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(peers.naive_causal(q, k, v), peers.sdpa_causal(q, k, v), atol=1e-5, rtol=1e-4)


def test_pairs_counts_what_the_kernel_scores():
    q = torch.randn(2, 30, 8)
    p = routing.plan(q, q, clusters=1)
    assert p.pairs(causal=True) == 2 * 30 * 31 // 2
    assert p.pairs(causal=False) == 2 * 30 * 30


def test_centroid_update_moves_towards_its_tokens():
    c = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)
    x = torch.tensor([[[1.0, 0.2], [1.0, 0.3]]])
    moved = routing.update_centroids(c, x, decay=0.5)
    assert moved[0, 0, 1] > 0 and torch.allclose(moved[0, 1], c[0, 1])   # the centroid that won nothing stays
    assert torch.allclose(moved.norm(dim=-1), torch.ones(1, 2))


def test_bad_plans_say_what_to_pass():
    q = torch.randn(2, 10, 8)
    with pytest.raises(ValueError, match="between 1 and"):
        routing.plan(q, q, clusters=11)
    with pytest.raises(ValueError, match="repeat the key heads"):
        routing.plan(q, torch.randn(1, 10, 8))


# ---------------------------------------------------------------- inside a model

def test_full_decode_patch_changes_nothing():
    m = tiny_lm()
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(3))
    a = DC.teacher_forced(m, ids, 20, 9)
    b = DC.teacher_forced(m, ids, 20, 9, decode=DC.full_decode)
    assert a["argmax"] == b["argmax"]
    assert max(abs(x - y) for x, y in zip(a["nll"], b["nll"])) < 1e-4


@pytest.mark.parametrize("block", [1, 4, 7])
def test_block_topk_keeping_every_block_is_exact(block):
    m = tiny_lm(1)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(4))
    a = DC.teacher_forced(m, ids, 25, 14)
    b = DC.teacher_forced(m, ids, 25, 14, decode=DC.BlockTopK(block, keep=1.0))
    assert a["argmax"] == b["argmax"]
    assert max(abs(x - y) for x, y in zip(a["nll"], b["nll"])) < 1e-4


def test_block_topk_summaries_follow_the_cache():
    m = tiny_lm(2)
    sel = DC.BlockTopK(block=4, keep=0.5)
    ids = torch.randint(0, 97, (1, 31), generator=torch.Generator().manual_seed(5))
    cache = m.new_cache(1, 32)
    with torch.inference_mode(), DC.patched(m, decode=sel):
        m(ids[:, :10], cache)
        for t in range(10, 30):          # one token at a time: the summaries grow as blocks fill
            m(ids[:, t:t + 1], cache)
    for layer, (held, full) in sel.summaries.items():
        assert full == 30 // 4           # the last step saw 30 tokens: 29 cached and itself
        want = reference.block_summaries(cache.k[layer][0], 30, 4)
        torch.testing.assert_close(held[:, :full], want)
    # a new cache starts the summaries again, and they do not keep the old one alive
    import gc
    import weakref
    old = weakref.ref(cache)
    del cache
    gc.collect()
    assert old() is None
    DC.teacher_forced(m, ids, 5, 3, decode=sel)
    assert all(full == 8 // 4 for _, full in sel.summaries.values())


def test_block_topk_attends_less_and_changes_the_output():
    m = tiny_lm(3)
    ids = torch.randint(0, 97, (1, 70), generator=torch.Generator().manual_seed(6))
    a = DC.teacher_forced(m, ids, 60, 9)
    b = DC.teacher_forced(m, ids, 60, 9, decode=DC.BlockTopK(4, keep=0.1))
    assert max(abs(x - y) for x, y in zip(a["nll"], b["nll"])) > 1e-4


def test_patch_is_undone_after_an_error():
    m = tiny_lm()
    originals = [blk.attn for blk in m.layers]
    with pytest.raises(RuntimeError), DC.patched(m, decode=DC.full_decode):
        raise RuntimeError("boom")
    assert [blk.attn for blk in m.layers] == originals


def test_token_nll_with_full_prefill_matches_the_plain_forward():
    m = tiny_lm()
    ids = torch.randint(0, 97, (33,), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        want = F.cross_entropy(m(ids[None])[0, :-1], ids[1:], reduction="none")
    torch.testing.assert_close(DC.token_nll(m, ids, chunk=8), want)
    routed = DC.token_nll(m, ids, prefill=DC.routed_prefill(clusters=1))    # one cluster = full attention
    torch.testing.assert_close(routed, want, atol=1e-4, rtol=1e-4)
    local = DC.token_nll(m, ids, prefill=DC.local_prefill(33))              # a window as long as the text
    torch.testing.assert_close(local, want, atol=1e-4, rtol=1e-4)
    for fn in (DC.routed_prefill(clusters=1, sink=True), DC.local_prefill(40, sink=True)):
        torch.testing.assert_close(DC.token_nll(m, ids, prefill=fn), want, atol=1e-4, rtol=1e-4)
    # the first token changes what a narrow window sees
    assert not torch.allclose(DC.token_nll(m, ids, prefill=DC.local_prefill(4, sink=True)),
                              DC.token_nll(m, ids, prefill=DC.local_prefill(4)))


def test_teacher_forced_checks_lengths_first():
    with pytest.raises(ValueError, match="must fit"):
        DC.teacher_forced(tiny_lm(), torch.arange(10), 8, 5)
    with pytest.raises(ValueError, match="keep"):
        DC.BlockTopK(64, keep=0)


# ---------------------------------------------------------------- the decode split

def test_crossover_by_bytes_is_weights_over_cache_bytes():
    m = tiny_lm()
    per = DC.kv_bytes_per_token(m.cfg)
    assert per == 2 * 2 * 2 * 8 * 4
    from effnb.lm.model import weight_bytes
    assert DC.crossover_by_bytes(m) == pytest.approx(weight_bytes(m) / per)


def test_measured_crossover_solves_the_line():
    rows = [{"context": n, "attention_s": 1e-3 + 1e-6 * n, "rest_s": 5e-3} for n in (1000, 2000, 4000)]
    assert DC.measured_crossover(rows) == pytest.approx(4000)
    flat = [{"context": n, "attention_s": 1e-3, "rest_s": 5e-3} for n in (1000, 2000)]
    assert math.isinf(DC.measured_crossover(flat))


def test_decode_split_rows_and_filled_cache():
    m = tiny_lm()
    rows = DC.decode_split(m, [8, 32], repeats=3)
    assert [r["context"] for r in rows] == [8, 32]
    assert all(r["step_s"] > 0 and r["attention_s"] > 0 for r in rows)
    assert all(r["step_spread"] >= 0 and r["attention_spread"] >= 0 for r in rows)  # the spread travels with the row
    assert rows[1]["kv_bytes"] == 4 * rows[0]["kv_bytes"]
    with pytest.raises(ValueError, match="at least one token"):
        DC.filled_cache(m, 0)


def test_slope_fit():
    n = [1024, 2048, 4096]
    assert E.loglog_slope(n, [x ** 1.5 for x in n]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="two sizes"):
        E.loglog_slope([1], [1.0])


@pytest.mark.parametrize("n, c, block", [(300, 7, 128), (1000, 31, 128), (129, 1, 64), (64, 64, 16)])
def test_flex_block_mask_covers_every_pair_routing_scores(n, c, block):
    """FlexAttention must see every same-cluster causal pair (in cluster order) inside its block mask,
    and skip tiles with none (built from the clusters, never from an n x n mask)."""
    if not peers.flex_status()[0]:
        pytest.skip(peers.flex_status()[1])
    q = torch.randn(2, n, 8, generator=torch.Generator().manual_seed(n))
    p = routing.plan(q, q, clusters=c)
    lab = torch.gather(p.labels(), 1, p.q_order)
    need = (lab[:, :, None] == lab[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    tiles = -(-n // block)
    need_tiles = torch.nn.functional.pad(need, (0, tiles * block - n, 0, tiles * block - n)).view(
        2, tiles, block, tiles, block).any(4).any(2)
    dense = peers._routed_block_mask(p, block, None).to_dense()[0].bool()
    assert (dense | ~need_tiles).all(), "a tile with pairs to score is missing from the block mask"
    assert dense.sum() <= need_tiles.sum() + 2 * tiles, "the block mask keeps tiles no pair needs"
