"""Chapter 05's low-rank factorization and Linformer: exact where they should be, counted as claimed."""
import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from effnb import lowrank
from effnb.lowrank import (FactorizedLinear, counted_crossover, crossover, factorize_embeddings, factorize_model,
                           flops, linformer_model, memory, param_bytes, param_count, rank_for_energy,
                           relative_error, worth_factorizing)
from effnb.lowrank.linformer import key_keep, linformer_attention, set_projections

DIMS = st.sampled_from([1, 3, 17, 130])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _linear(out_f: int, in_f: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


@settings(max_examples=25, deadline=None)
@given(out_f=DIMS, in_f=DIMS, seed=st.integers(0, 2**16))
def test_full_rank_is_the_linear(out_f, in_f, seed):
    lin = _linear(out_f, in_f, seed)
    fac = FactorizedLinear.from_linear(lin, min(out_f, in_f))
    x = torch.randn(5, in_f)
    with torch.no_grad():
        want, got = lin(x), fac(x)
    assert (got - want).abs().max() <= 1e-4 * max(want.abs().max().item(), 1e-6)


@settings(max_examples=30, deadline=None)
@given(out_f=DIMS, in_f=DIMS, low=st.booleans(), seed=st.integers(0, 2**16))
def test_truncated_svd_error_is_eckart_young(out_f, in_f, low, seed):
    lin = _linear(out_f, in_f, seed)
    w = lin.weight.detach()
    r = 1 if low else min(out_f, in_f)
    s = torch.linalg.svdvals(w.double())
    optimal = s[r:].pow(2).sum().sqrt().item()
    norm = torch.linalg.norm(w).item()
    with torch.no_grad():
        exact = torch.linalg.norm(w - FactorizedLinear.from_linear(lin, r).weight_product()).item()
        rand = torch.linalg.norm(w - FactorizedLinear.from_linear(lin, r, "svd_lowrank", seed=seed)
                                 .weight_product()).item()
    assert abs(exact - optimal) <= 1e-4 * norm
    # the randomized peer: never below the optimum, and a projection of W, so never above ||W|| (how close
    # it gets depends on the spectrum: rank 1 of a 3x3 can miss by more than half, hypothesis found one)
    assert optimal - 1e-4 * norm <= rand <= norm * (1 + 1e-4)
    assert rand >= optimal - 1e-4 * norm


@pytest.mark.parametrize("rank", [0, 4, 2.5, True, None])
def test_bad_rank_says_what_to_pass(rank):
    with pytest.raises(ValueError, match=r"rank=1\.\.3"):
        FactorizedLinear.from_linear(nn.Linear(3, 8), rank)


def test_rank_for_energy_and_worth():
    s = torch.tensor([3.0, 2.0, 1.0])          # energies 9/14, 13/14, 14/14
    assert [rank_for_energy(s, e) for e in (0.5, 0.9, 0.95, 1.0)] == [1, 2, 3, 3]
    with pytest.raises(ValueError, match="energy"):
        rank_for_energy(s, 0.0)
    assert worth_factorizing(384, 384, 191) and not worth_factorizing(384, 384, 192)
    assert worth_factorizing(1536, 384, 307) and not worth_factorizing(1536, 384, 308)


def test_param_count_counts_shared_tensors_once():
    a = nn.Linear(4, 4, bias=False)
    m = nn.Sequential(a, a)
    assert param_count(m) == 16 and param_bytes(m) == 64
    fac = FactorizedLinear.from_linear(nn.Linear(10, 20), 2)
    assert param_count(fac) == fac.params == 2 * (10 + 20) + 20


# ------------------------------------------------------------------ on MiniLM

@pytest.fixture(scope="module")
def minilm():
    from effnb.models.minilm import load_minilm
    m = load_minilm()
    batch = m.tokenizer(["Low rank is cheap.", "Linformer projects keys and values along the sequence."],
                        padding=True, return_tensors="pt")
    return m[0].auto_model.eval(), batch


def _hidden(model, batch):
    with torch.inference_mode():
        return model(**batch).last_hidden_state


def test_factorize_model_at_full_rank_changes_nothing(minilm):
    bert, batch = minilm
    full, report = factorize_model(bert, rank=384, only_if_smaller=False)
    assert report["factorized"].all() and len(report) == 36
    assert relative_error(_hidden(bert, batch), _hidden(full, batch)) < 1e-4
    assert isinstance(bert.encoder.layer[0].attention.self.query, nn.Linear)     # the original is untouched
    kept, report = factorize_model(bert, rank=384)          # by default: nothing shrinks, nothing changes
    assert not report["factorized"].any() and report["note"].str.contains("kept dense").all()
    small, report = factorize_model(bert, rank=128, which=("intermediate", "output"))
    assert report["factorized"].all() and param_count(small) < param_count(bert)
    _, report = factorize_model(bert, energy=0.9, which=("query",))
    assert report["rank"].between(1, 384).all()


def test_full_rank_embeddings_change_nothing(minilm):
    bert, batch = minilm
    assert relative_error(_hidden(bert, batch), _hidden(factorize_embeddings(bert, 384), batch)) < 1e-4
    small = factorize_embeddings(bert, 64)
    assert param_count(bert) - param_count(small) == 30522 * 384 - (30522 * 64 + 64 * 384)


def test_linformer_with_identity_projections_is_attention(minilm):
    bert, batch = minilm
    ids = batch["input_ids"][1:]                            # the longer sentence: no padding
    n = ids.shape[1]
    lin = linformer_model(bert, k=n, n_max=n)
    assert lin.config._attn_implementation == "linformer" and bert.config._attn_implementation == "sdpa"
    eye = torch.eye(n)
    set_projections(lin, [(eye, eye)] * len(lin.encoder.layer))
    assert relative_error(_hidden(bert, {"input_ids": ids}), _hidden(lin, {"input_ids": ids})) < 1e-5


def test_linformer_ignores_what_sits_at_padded_positions(minilm):
    bert, batch = minilm
    lin = linformer_model(bert, k=8, n_max=64, seed=3)
    real = batch["attention_mask"].bool()
    other = batch["input_ids"].clone()
    other[~real] = 2023                                       # a real word where the padding was
    a = _hidden(lin, batch)
    b = _hidden(lin, {"input_ids": other, "attention_mask": batch["attention_mask"]})
    assert (~real).any() and torch.allclose(a[real], b[real], atol=1e-5)
    assert 0 < lowrank.attention_error(bert, lin, batch["input_ids"], batch["attention_mask"]) < 10


def test_linformer_takes_bool_float_and_no_mask():
    mod = nn.Module()
    mod.register_buffer("linformer_E", torch.randn(4, 10))
    mod.register_buffer("linformer_F", torch.randn(4, 10))
    q, k, v = (torch.randn(2, 3, 6, 5) for _ in range(3))
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4:] = False
    as_bool = keep[:, None, None, :].expand(2, 1, 6, 6)
    as_float = torch.zeros(2, 1, 6, 6).masked_fill(~as_bool, torch.finfo(torch.float32).min)
    assert torch.equal(key_keep(as_bool, 6), keep[:, None]) and torch.equal(key_keep(as_float, 6), keep[:, None])
    outs = [linformer_attention(mod, q, k, v, m, scaling=0.5)[0] for m in (as_bool, as_float, keep)]
    assert outs[0].shape == (2, 6, 3, 5)
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(outs[0], outs[2])
    no_mask, _ = linformer_attention(mod, q, k, v, None, scaling=0.5)
    assert torch.allclose(no_mask[0], outs[0][0], atol=1e-6)      # the unpadded sequence: same either way
    with pytest.raises(ValueError, match="n_max"):
        linformer_attention(mod, *(torch.randn(1, 3, 11, 5) for _ in range(3)), None)
    with pytest.raises(ValueError, match="linformer_model"):
        linformer_attention(nn.Module(), q, k, v, None)


# ------------------------------------------------------------------ counting and the crossover

def test_flops_grow_as_claimed_and_cross_where_counted():
    n = 100_000
    assert 3.9 < flops(2 * n, "dense") / flops(n, "dense") <= 4
    assert flops(2 * n, "linformer") / flops(n, "linformer") == pytest.approx(2)
    assert flops(1024, "lrt", rank=128) < flops(1024, "dense")
    assert flops(1024, "lrt", rank=300) > flops(1024, "lrt", rank=128)     # FFN only: attention kept dense
    for rank, k in ((64, 128), (128, 256)):
        star = counted_crossover(rank, k)
        assert flops(star, "lrt", rank, k) == pytest.approx(flops(star, "linformer", rank, k))
        assert flops(2 * star, "lrt", rank, k) > flops(2 * star, "linformer", rank, k)
    assert counted_crossover(128, 256) == 1664
    assert memory(1024, "dense") == 12 * 1024 * 1024 * 4 and memory(1024, "linformer", k=256) == 12 * 1024 * 256 * 4


def _frame(times: dict) -> pd.DataFrame:
    return pd.DataFrame([{"provider": p, "size": n, "median_s": t} for p, row in times.items() for n, t in row.items()])


def test_crossover_interpolates_in_log_n():
    ns = (256, 512, 2048, 4096)
    lrt = {n: (n / 1000) ** 2 for n in ns}          # linformer / lrt = 1000 / n: they cross at exactly 1000
    res = crossover(_frame({"lrt": lrt, "linformer": {n: n / 1000 for n in ns}}), rank=128, k=256)
    assert res["first_faster_n"] == 2048 and res["measured_n"] == pytest.approx(1000)
    assert res["counted_n"] == 1664 and res["paper_n"] == 512 and len(res["table"]) == 4
    never = crossover(_frame({"lrt": {n: 1.0 for n in ns}, "linformer": {n: 2.0 for n in ns}}), rank=128, k=256)
    assert math.isnan(never["measured_n"]) and "slower" in never["reason"]
    always = crossover(_frame({"lrt": {n: 2.0 for n in ns}, "linformer": {n: 1.0 for n in ns}}), rank=128, k=256)
    assert math.isnan(always["measured_n"]) and always["first_faster_n"] == 256


def test_a_tiny_real_race():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, attn_implementation="sdpa")
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    spec = lowrank.layer_race(seq_lens=(32, 64), rank=8, k=16, repeats=3, rounds=1, threads=1, bert=bert)
    result = spec.run(progress=False)
    assert set(result.keys()) == set(lowrank.VARIANTS) and (result.df["median_s"] > 0).all()
    res = crossover(result)
    assert res["rank"] == 8 and res["k"] == 16 and res["counted_n"] == counted_crossover(8, 16, 64, 128)
    assert math.isnan(res["measured_n"]) or 32 <= res["measured_n"] <= 64
