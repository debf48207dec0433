"""Entropy adaptive decoding (effnb.adaptive.entropy): exactness of the decode loops, the bookkeeping of
teacher forcing, and bad inputs."""
import math

import pytest
import torch

from effnb import lm
from effnb.adaptive import entropy as ead
from effnb.lm.corpus import load_corpus


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and far steadier on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models():
    small, tok = lm.load("byte-xs")
    large, _ = lm.load("byte-s")
    return small, large, tok


@pytest.fixture(scope="module")
def val_ids():
    return list(load_corpus("english-v1", "val").encode("utf-8")[:6000])


@pytest.fixture(scope="module")
def prompts(val_ids):
    return [val_ids[s:s + n] for s, n in ((0, 40), (1500, 1), (3000, 97), (4500, 12))]


def test_speculative_equals_large_greedy(models, prompts):
    small, large, _ = models
    for p in prompts:
        ref = ead.large_only_generate(small, large, p, 40).tokens
        for d in (1, 2, 4, 7):
            got = ead.speculative_generate(small, large, p, 40, draft=d)
            assert got.tokens == ref, (len(p), d)
            assert 0.0 <= got.acceptance <= 1.0
            assert got.large_passes <= 40


def test_large_only_matches_library_generate(models, prompts):
    from effnb.lm.generate import generate
    small, large, _ = models
    p = prompts[0]
    want = generate(large, p, 30)[0, len(p):].tolist()
    assert ead.large_only_generate(small, large, p, 30).tokens == want
    want = generate(small, p, 30)[0, len(p):].tolist()
    assert ead.small_only_generate(small, large, p, 30).tokens == want


def test_ead_limits(models, prompts):
    small, large, _ = models
    for p in prompts[:3]:
        lo = ead.small_only_generate(small, large, p, 32)
        hi = ead.large_only_generate(small, large, p, 32)
        never = ead.ead_generate(small, large, p, 32, math.inf, 4)
        always = ead.ead_generate(small, large, p, 32, -math.inf, 4)
        assert never.tokens == lo.tokens and never.large_share == 0 and never.large_passes == 0
        assert always.tokens == hi.tokens and always.large_share == 1 and always.large_passes == 32
        assert always.large_tokens == len(p) + 31


def test_ead_middle_follows_its_rule(models, prompts):
    """Re-derive every choice from full forwards of the final sequence: each new token is the argmax of
    the model the rolling entropy picks, so both caches were consistent throughout."""
    small, large, _ = models
    p, window, thr = prompts[2], 3, 1.8
    res = ead.ead_generate(small, large, p, 48, thr, window)
    assert 0.1 < res.large_share < 0.9 and res.large_passes == round(res.large_share * 48)
    # some catch-up covered several skipped tokens in one forward; none ran past the sequence
    assert len(p) + res.large_passes - 1 < res.large_tokens <= len(p) + 47
    seq = torch.tensor(p + res.tokens)
    with torch.inference_mode():
        ls, ll = small(seq[None])[0], large(seq[None])[0]
    roll = ead.rolling_entropy(ead._entropy(ls), window)
    n0 = len(p)
    for i, tok in enumerate(res.tokens):
        pos = n0 - 1 + i
        use_large = bool(roll[pos] > thr)
        assert tok == int((ll if use_large else ls)[pos].argmax()), i
    assert sum(bool(roll[n0 - 1 + i] > thr) for i in range(48)) == round(res.large_share * 48)


def test_catch_up_equals_fresh_prefill(models, val_ids):
    _, large, _ = models
    seq = val_ids[:90]
    with torch.inference_mode():
        lag = large.new_cache(1, 100)
        ead._forward(large, lag, seq[:30])
        for t in seq[30:41]:
            ead._forward(large, lag, [t])
        got = ead._catch_up(large, lag, seq)          # 49 tokens in one forward
        fresh = large.new_cache(1, 100)
        want = ead._forward(large, fresh, seq)[-1]
        assert lag.length == fresh.length == 90
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        for a, b in zip(lag.k + lag.v, fresh.k + fresh.v):
            torch.testing.assert_close(a[:, :, :90], b[:, :, :90], atol=1e-4, rtol=1e-4)
        nxt = [int(want.argmax())]
        torch.testing.assert_close(ead._forward(large, lag, nxt), ead._forward(large, fresh, nxt),
                                   atol=1e-4, rtol=1e-4)


def test_rolling_entropy_hand_example():
    got = ead.rolling_entropy([1.0, 2.0, 3.0, 4.0, 5.0], 3)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(ead.rolling_entropy([3.0, 1.0], 1), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(ead.rolling_entropy([2.0, 4.0], 10), torch.tensor([2.0, 3.0]))


def test_teacher_forced_counts_and_large_accuracy(models, val_ids):
    small, large, _ = models
    ids = val_ids[:700]
    st = ead.teacher_forced(small, large, ids, context=256, stride=128)
    assert len(st) == 699 and st.entropy.shape == (699,)
    assert bool((st.entropy >= 0).all()) and bool((st.entropy <= math.log(256) + 1e-4).all())
    # large-alone accuracy, computed directly: each window's new positions, by hand
    x = torch.tensor(ids)
    with torch.inference_mode():
        hits, n = 0, 0
        for begin, first in ((0, 1), (128, 256), (256, 384), (384, 512), (512, 640)):
            end = min(begin + 256, 700)
            logits = large(x[None, begin:end])[0]
            pred = logits[first - 1 - begin:end - 1 - begin].argmax(-1)
            hits += int((pred == x[first:end]).sum())
            n += end - first
        assert n == 699
    df = ead.ead_curve(st, [0.5], 4)
    big = df[df.method == "large only"].iloc[0]
    assert big.accuracy == pytest.approx(hits / n)
    # bits per token (byte) of each model alone = generate.score of it
    from effnb.lm.generate import score
    s = score(large, ids, 256, 128)
    assert big.bits_per_token == pytest.approx(s["nll"] / s["tokens"] / math.log(2), rel=1e-5)
    assert big.acc_pct_of_large == pytest.approx(100) and big.cost_pct_of_large == pytest.approx(100)


def test_ead_curve_monotone_share(models, val_ids):
    small, large, _ = models
    st = ead.teacher_forced(small, large, val_ids[:1500])
    df = ead.ead_curve(st, [-math.inf, 0.5, 1.0, 2.0, math.inf], 8)
    rows = df[df.method == "ead"]
    assert list(rows.large_share) == sorted(rows.large_share, reverse=True)
    assert rows.large_share.iloc[0] == 1 and rows.large_share.iloc[-1] == 0
    assert rows.accuracy.iloc[0] == pytest.approx(df[df.method == "large only"].accuracy.iloc[0])
    spec = ead.speculative_generate(small, large, val_ids[:50], 16, 4)
    df = ead.ead_curve(st, [1.0], 8, speculative=spec)
    assert df.method.iloc[-1] == "speculative" and df.acc_pct_of_large.iloc[-1] == pytest.approx(100)


def test_decode_study_small(models, prompts):
    small, large, _ = models
    df = ead.decode_study(small, large, prompts[:2], 8, [1.0], 4, draft=3, repeats=1)
    assert list(df.method) == ["large only", "small only", "ead", "speculative"]
    spec = df[df.method == "speculative"].iloc[0]
    assert spec.agree_with_large == 1 and spec.common_prefix == 8
    assert df[df.method == "large only"].iloc[0].agree_with_large == 1


def test_bad_inputs(models, prompts):
    small, large, _ = models
    p = prompts[0]
    with pytest.raises(ValueError, match="threshold"):
        ead.ead_generate(small, large, p, 4, math.nan, 4)
    with pytest.raises(ValueError, match="threshold"):
        ead.ead_generate(small, large, p, 4, "1.0", 4)
    with pytest.raises(ValueError, match="window"):
        ead.ead_generate(small, large, p, 4, 1.0, 0)
    with pytest.raises(ValueError, match="window"):
        ead.rolling_entropy([1.0], 0)
    with pytest.raises(ValueError, match="draft"):
        ead.speculative_generate(small, large, p, 4, draft=0)
    for fn in (lambda q: ead.ead_generate(small, large, q, 4, 1.0, 4),
               lambda q: ead.speculative_generate(small, large, q, 4),
               lambda q: ead.large_only_generate(small, large, q, 4)):
        with pytest.raises(ValueError, match="prompt_ids is empty"):
            fn([])
    with pytest.raises(ValueError, match="0..255"):
        ead.ead_generate(small, large, [300], 4, 1.0, 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        ead.speculative_generate(small, large, p, -1)
    with pytest.raises(ValueError, match="threshold"):
        ead.ead_curve(ead.teacher_forced(small, large, p), [float("nan")], 4)
    with pytest.raises(ValueError, match="at least two"):
        ead.teacher_forced(small, large, p[:1])
    with pytest.raises(ValueError, match="prompts is empty"):
        ead.decode_study(small, large, [], 4, [1.0], 4)
    from effnb.lm.model import LM, Config
    other = LM(Config(vocab_size=300, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                       ffn_dim=32)).eval()
    for fn in (lambda: ead.ead_generate(small, other, p, 4, 1.0, 4),
               lambda: ead.speculative_generate(small, other, p, 4),
               lambda: ead.teacher_forced(small, other, p),
               lambda: ead.decode_study(small, other, [p], 4, [1.0], 4)):
        with pytest.raises(ValueError, match="vocabulary"):
            fn()


def test_zero_new_tokens(models, prompts):
    small, large, _ = models
    assert ead.ead_generate(small, large, prompts[0], 0, 1.0, 4).tokens == []
    assert ead.speculative_generate(small, large, prompts[0], 0).tokens == []
