"""Chapter 10's cache policies on a tiny random model: each against dense attention where it must
agree with it, and against what it promises to keep where it must not."""
import math

import pytest
import torch
import torch.nn.functional as F

from effnb.lm.model import LM, Config
from effnb.longcontext import experiments as X
from effnb.longcontext import policies as P

CFG = Config(vocab_size=61, dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq=128)


@pytest.fixture(scope="module")
def model():
    return LM(CFG).init_weights(3).eval()


def _ids(n, seed=0):
    return torch.randint(0, CFG.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


def _masked(q, k, v, mask):
    """Plain softmax attention with an explicit boolean mask (float64)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1).double(), v.repeat_interleave(group, 1).double()
    s = (q.double() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (s.masked_fill(~mask, float("-inf")).softmax(-1) @ v).float()


@torch.inference_mode()
def _logits(model, ids, cache=None, prefix=None):
    """Logits of every position: in one pass, or a prefill of ``prefix`` tokens and then one chunk."""
    with P.serving(model):
        if prefix is None:
            return model(ids[None], cache)[0]
        first = model(ids[None, :prefix], cache)[0]
        return torch.cat([first, model(ids[None, prefix:], cache)[0]])


@pytest.mark.parametrize("held,t", [(0, 1), (0, 9), (5, 1), (5, 7)])
def test_attend_sees_held_rows_and_its_own_tokens_causally(held, t):
    g = torch.Generator().manual_seed(held + t)
    q = torch.randn(1, 4, t, 16, generator=g)
    k, v = (torch.randn(1, 2, held + t, 16, generator=g) for _ in range(2))
    mask = torch.ones(t, held + t, dtype=torch.bool).tril(held)
    torch.testing.assert_close(P.attend(q, k, v, held), _masked(q, k, v, mask), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("n,sink,window", [(37, 2, 8), (64, 0, 16), (20, 4, 16), (50, 3, 1)])
def test_banded_attention_is_sinks_plus_a_causal_window(n, sink, window):
    g = torch.Generator().manual_seed(n)
    q = torch.randn(1, 4, n, 16, generator=g)
    k, v = (torch.randn(1, 2, n, 16, generator=g) for _ in range(2))
    i = torch.arange(n)
    mask = (i[None] <= i[:, None]) & ((i[:, None] - i[None] < window) | (i[None] < sink))
    torch.testing.assert_close(P.banded_attention(q, k, v, sink, window), _masked(q, k, v, mask), atol=1e-5, rtol=1e-4)


def test_dense_policy_equals_the_plain_model(model):
    ids = _ids(40)
    with torch.inference_mode():
        plain = model(ids[None])[0]
    torch.testing.assert_close(_logits(model, ids, P.DenseCache(CFG)), plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(model, ids, P.DenseCache(CFG), prefix=23), plain, atol=1e-4, rtol=1e-4)


def test_plain_caches_still_work_inside_serving(model):
    ids = _ids(12)
    with torch.inference_mode():
        plain = model(ids[None])[0]
        with P.serving(model):
            out = model(ids[None], model.new_cache(1, 16))[0]
    torch.testing.assert_close(out, plain)


def test_a_window_longer_than_the_text_changes_nothing(model):
    ids = _ids(30)
    dense = _logits(model, ids, P.DenseCache(CFG), prefix=20)
    torch.testing.assert_close(_logits(model, ids, P.SinkWindowCache(CFG, sink=2, window=64), prefix=20), dense,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_logits(model, ids, P.HybridCache(CFG, [1], sink=2, window=64), prefix=20), dense,
                               atol=1e-4, rtol=1e-4)


def test_the_ring_holds_the_sinks_and_the_last_window():
    cache = P.SinkWindowCache(CFG, sink=3, window=5, layers=[0])
    pos = torch.arange(23, dtype=torch.float32)
    k = pos[None, None, :, None].expand(1, 2, 23, 16).contiguous()
    cache._store(0, k[:, :, :11], k[:, :, :11], 0)          # a prefill chunk, then single tokens
    for p in range(11, 23):
        cache._store(0, k[:, :, p:p + 1], k[:, :, p:p + 1], p)
    held = sorted(cache.k[0][0, 0, :, 0].tolist())
    assert held == [0, 1, 2, 18, 19, 20, 21, 22]
    assert cache.slot(torch.tensor([2, 3, 7, 8])).tolist() == [2, 3, 7, 3]


def test_a_window_cache_differs_from_dense_when_it_drops_tokens(model):
    ids = _ids(60)
    dense = _logits(model, ids, P.DenseCache(CFG), prefix=50)
    win = _logits(model, ids, P.SinkWindowCache(CFG, sink=1, window=8), prefix=50)
    torch.testing.assert_close(win[:8], dense[:8], atol=1e-4, rtol=1e-4)   # positions the window still covers
    assert (win[50:] - dense[50:]).abs().max() > 1e-3


@pytest.mark.parametrize("bits,tol", [(8, 0.05), (4, 0.5)])
def test_quantized_cache_tracks_dense_and_its_decode_kernel_agrees_with_the_chunk_path(model, bits, tol):
    ids = _ids(45)
    dense = DenseRun(model, ids, 40)
    quant = P.QuantizedCache.from_dense(dense.cache, 40, bits=bits, group=16)
    chunk = _continue(model, quant, ids[40:])                      # t = 5: dequantized history
    quant.truncate(40)
    steps = torch.cat([_continue(model, quant, ids[40 + i:41 + i]) for i in range(5)])   # t = 1: the kernel
    assert (chunk - dense.rest).abs().max() < tol
    assert (steps[0] - chunk[0]).abs().max() < tol / 5     # the first new token: same history, its own row quantized or not


def test_smoothing_leaves_attention_unchanged_before_quantization(model):
    ids = _ids(33)
    dense = DenseRun(model, ids, 30)
    smooth = P.smoothing_factors(dense.cache, 30, alpha=0.5)
    assert all(torch.equal(s[:, :8], s[:, 8:]) for s in smooth)      # tied across rotary pairs (d = 16)
    plain = P.QuantizedCache.from_dense(dense.cache, 30, bits=8, group=16)
    smoothed = P.QuantizedCache.from_dense(dense.cache, 30, bits=8, group=16, smooth=smooth)
    a, b = _continue(model, plain, ids[30:]), _continue(model, smoothed, ids[30:])
    assert (a - b).abs().max() < 0.05 and (b - dense.rest).abs().max() < 0.05
    with pytest.raises(ValueError, match="alpha"):
        P.smoothing_factors(dense.cache, 30, alpha=2)


def test_h2o_with_room_for_everything_equals_dense_and_otherwise_keeps_sinks_and_recent(model):
    ids = _ids(50)
    dense = DenseRun(model, ids, 40, watch=[(32, 40)])
    everything = P.HeavyHitterCache.from_dense(dense.cache, 40, (32, 40), budget=40, recent=8, sink=2)
    torch.testing.assert_close(_continue(model, everything, ids[40:]), dense.rest, atol=1e-4, rtol=1e-4)
    small = P.HeavyHitterCache.from_dense(dense.cache, 40, (32, 40), budget=12, recent=6, sink=2)
    assert small.k[0].shape[2] == 12
    kept = dense.cache.k[0][0, 0, :40]
    rows = [int((kept - r).abs().sum(-1).argmin()) for r in small.k[0][0, 0]]
    assert rows[:2] == [0, 1] and rows[-6:] == list(range(34, 40)) and rows == sorted(rows)
    assert small.nbytes() == 2 * CFG.n_layers * CFG.n_kv_heads * 12 * CFG.head_dim * 4


def test_hybrid_cache_is_smaller_and_keeps_whole_layers():
    cache = P.HybridCache(CFG, [1], sink=2, window=6)
    cache.length = 40
    per_layer = 2 * CFG.n_kv_heads * CFG.head_dim * 4
    assert cache.nbytes() == per_layer * (40 + 2 * 8)
    assert X.middle_layers(30) == list(range(10, 20)) and X.middle_layers(3) == [1]


def test_bad_input_says_what_to_pass(model):
    with pytest.raises(ValueError, match="window"):
        P.SinkWindowCache(CFG, sink=-1, window=0)
    with pytest.raises(ValueError, match="layer numbers"):
        P.HybridCache(CFG, [7])
    with pytest.raises(ValueError, match="recent"):
        P.HeavyHitterCache(CFG, budget=4, recent=8)
    with pytest.raises(ValueError, match="cache holds 1 sequences"):
        with P.serving(model), torch.inference_mode():
            model(torch.zeros(2, 5, dtype=torch.long), P.DenseCache(CFG))
    with pytest.raises(ValueError, match="prompt tokens"):
        X.cache_study(model, _ids(100), [100], 90, None)


def test_race_table_ratios():
    rows = [{"context": 8, "impl": name, "seconds": s, "spread": 0.0, "bytes": b}
            for name, s, b in (("SDPA fp32", 4.0, 8e9), ("dequantize + SDPA int4", 8.0, 1e9), ("effnb int4", 1.0, 1e9))]
    t = X.race_table(rows, read_gbps=10.0, backend="cpp-test").set_index("implementation")
    assert t.loc["effnb int4", "vs SDPA fp32"] == 4.0 and t.loc["effnb int4", "vs fastest peer"] == 4.0
    assert t.loc["effnb int4", "fastest peer"] == "SDPA fp32" and t.loc["effnb int4", "% of read probe"] == 10.0
    assert t.loc["effnb int4", "backend"] == "cpp-test" and t.loc["SDPA fp32", "backend"] == "torch"


class DenseRun:
    """A dense prefill of ``prefix`` tokens and the logits of the rest read through it."""

    def __init__(self, model, ids, prefix, watch=()):
        self.cache = P.DenseCache(CFG, watch=watch)
        with P.serving(model), torch.inference_mode():
            model(ids[None, :prefix], self.cache)
        self.rest = _continue(model, self.cache, ids[prefix:])
        self.cache.truncate(prefix)


@torch.inference_mode()
def _continue(model, cache, ids):
    with P.serving(model):
        return model(ids[None], cache)[0]
