"""Chapter 10's context extension: the attention patterns, position interpolation, LoRA fine-tuning."""
import math

import pytest
import torch
import torch.nn.functional as F

from effnb.lm import bytelm
from effnb.lm.model import rope_table
from effnb.longcontext import extend as E

PATTERNS = {"s2": lambda q, k, v, g: E.s2_attention(q, k, v, g),
            "sink": lambda q, k, v, g: E.sink_shifted_attention(q, k, v, g, 3)}


def qkv(b=2, h=4, n=37, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=g) for _ in range(3))


def slow_reference(q, k, v, group, sinks):
    """Query by query: softmax over the keys it may see, group borders listed explicitly."""
    b, h, n, d = q.shape
    out = torch.zeros_like(q)
    for head in range(h):
        first = 0 if head < h // 2 else group // 2
        borders = [0] + list(range(first, n, group)) if first else list(range(0, n, group))
        group_of = [sum(1 for x in borders if x <= p) for p in range(n)]
        for p in range(n):
            keys = [j for j in range(p + 1) if group_of[j] == group_of[p] or j < sinks]
            scores = torch.einsum("bd,bkd->bk", q[:, head, p], k[:, head, keys]) / math.sqrt(d)
            out[:, head, p] = torch.einsum("bk,bkd->bd", scores.softmax(-1), v[:, head, keys])
    return out


@pytest.mark.parametrize("group, sinks", [(8, 0), (8, 3), (7, 2), (2, 1)])
def test_patterns_match_the_slow_reference_on_an_awkward_shape(group, sinks):
    q, k, v = qkv(n=37)
    got = E.s2_attention(q, k, v, group) if sinks == 0 else E.sink_shifted_attention(q, k, v, group, sinks)
    torch.testing.assert_close(got, slow_reference(q, k, v, group, sinks), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PATTERNS)
def test_patterns_are_causal(name):
    q, k, v = qkv(n=37)
    before = PATTERNS[name](q, k, v, 8)
    assert before.shape == q.shape
    for t in (0, 3, 4, 8, 12, 20, 36):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t] += 5.0
        after = PATTERNS[name](q2, k2, v2, 8)
        torch.testing.assert_close(after[:, :, :t], before[:, :, :t], atol=0, rtol=0)
        assert not torch.allclose(after[:, :, t], before[:, :, t])


@pytest.mark.parametrize("name", PATTERNS)
@pytest.mark.parametrize("group", [37, 64])
def test_one_group_covering_the_sequence_is_plain_causal_attention(name, group):
    q, k, v = qkv(n=37)
    torch.testing.assert_close(PATTERNS[name](q, k, v, group), F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_group_starts_see_only_themselves_and_sinks_change_that():
    q, k, v = qkv(n=32)
    s2 = E.s2_attention(q, k, v, 8)
    torch.testing.assert_close(s2[:, 0, 8], v[:, 0, 8])      # first token of a plain group
    torch.testing.assert_close(s2[:, 3, 12], v[:, 3, 12])    # first token of a shifted group (8 // 2 + 8)
    sink = E.sink_shifted_attention(q, k, v, 8, 4)
    assert not torch.allclose(sink[:, 0, 8], v[:, 0, 8])
    torch.testing.assert_close(sink[:, :2, :8], s2[:, :2, :8])  # the sinks lie in the first group anyway
    torch.testing.assert_close(sink[:, 2:, :4], s2[:, 2:, :4])
    assert not torch.allclose(sink[:, 2:, 4:8], s2[:, 2:, 4:8])  # the shifted heads' second group gains them


def test_bad_pattern_arguments_are_rejected():
    q, k, v = qkv(n=16)
    with pytest.raises(ValueError, match="group"):
        E.s2_attention(q, k, v, 1)
    with pytest.raises(ValueError, match="sinks"):
        E.sink_shifted_attention(q, k, v, 4, -1)
    with pytest.raises(ValueError, match="repeat"):
        E.s2_attention(q, k[:, :2], v[:, :2], 4)


def test_position_interpolation_is_the_base_table_at_fractional_positions():
    cos, sin = E.interpolated_rope(8, 16, 0.25)
    base_cos, base_sin = rope_table(8, 4, 10_000.0)
    torch.testing.assert_close(cos[::4], base_cos)
    torch.testing.assert_close(sin[::4], base_sin)
    # by hand: position 2 -> 0.5; frequency pair 1 of head_dim 8 is 10000 ** (-2 / 8) = 0.1
    assert cos[2, 1].item() == pytest.approx(math.cos(0.05), abs=1e-6)
    assert sin[2, 5].item() == pytest.approx(math.sin(0.05), abs=1e-6)
    model, _ = bytelm.load("byte-xs")
    E.interpolate_positions(model, 128, 512)
    assert model.rope_cos.shape == (512, model.cfg.head_dim)
    torch.testing.assert_close(model.rope_cos[4], rope_table(model.cfg.head_dim, 2, 10_000.0)[0][1])


def test_the_swapped_attention_runs_the_model_unchanged_when_it_is_plain():
    model, _ = bytelm.load("byte-s")
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
        with E.attention_pattern(model, lambda q, k, v: E.s2_attention(q, k, v, 64)):
            got = model(ids)
        with E.attention_pattern(model, lambda q, k, v: E.s2_attention(q, k, v, 8)):
            other = model(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(other, want, atol=1e-3)
    assert type(model.layers[0].attn).__name__ == "Attention"       # restored


TEXT = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.mark.parametrize("method", ["full", "longlora", "sinklora"])
def test_extend_trains_only_lora_norms_and_embeddings(method):
    model, _ = bytelm.load("byte-xs")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = E.extend(model, method, 64, 3, train_len=16, batch=2, text=TEXT, group=16)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())        # the original is untouched
    params = dict(out.named_parameters())
    for name, old in before.items():
        mine = name.replace("attn.q.", "attn.q.base.").replace("attn.k.", "attn.k.base.") \
            .replace("attn.v.", "attn.v.base.").replace("attn.o.", "attn.o.base.")
        if "norm" in name or name.startswith("embed."):
            continue
        assert torch.equal(params[mine], old), name
    assert not torch.equal(out.embed.weight, before["embed.weight"])
    loras = [p for n, p in params.items() if "lora_" in n]
    assert len(loras) == 2 * 4 * model.cfg.n_layers and all(p.abs().sum() > 0 for p in loras)
    assert not any(torch.equal(p, torch.zeros_like(p)) for n, p in params.items() if "lora_b" in n)
    assert out.extension["method"] == method and out.extension["steps"] == 3
    assert out.rope_cos.shape[0] == 64


def test_extend_none_only_interpolates():
    model, _ = bytelm.load("byte-xs")
    out = E.extend(model, "none", 64, 0, train_len=16)
    assert not any("lora_" in n for n, _ in out.named_parameters())
    torch.testing.assert_close(out.rope_cos, E.interpolated_rope(model.cfg.head_dim, 64, 0.25)[0])
    loss = E.evaluate_extension(out, TEXT, 64, windows=2)
    assert math.isfinite(loss)
    with pytest.raises(ValueError, match="context <= 64"):
        E.evaluate_extension(out, TEXT, 128)


def test_extend_rejects_bad_methods_and_lengths():
    model, _ = bytelm.load("byte-xs")
    with pytest.raises(ValueError, match="none, full, longlora, sinklora"):
        E.extend(model, "lora", 64, 1, train_len=16)
    with pytest.raises(ValueError, match="context=64"):
        E.extend(model, "full", 16, 1, train_len=16)
    with pytest.raises(ValueError, match="group"):
        E.extend(model, "longlora", 64, 1, train_len=16, group=100)
    with pytest.raises(ValueError, match="steps"):
        E.extend(model, "full", 64, 0, train_len=16)


def test_compare_at_a_tiny_setting_gives_four_finite_rows():
    df = E.compare("byte-xs", train_len=16, new_len=64, steps=2, batch=1, eval_windows=2)
    assert list(df.index) == list(E.METHODS)
    assert df[["loss_new_len", "loss_train_len"]].map(math.isfinite).all().all()
    assert df.loc["none", "recovered"] == 0 and df.loc["full", "recovered"] == pytest.approx(1)
    assert df.attrs["new_len"] == 64 and df.attrs["units"] == "nats per byte"
