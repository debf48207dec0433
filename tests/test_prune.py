"""effnb.lowrank.prune, hard attention and chapter 05's helpers: physical removal equals masking, the
search stops where it must, hard attention is exact at k >= n and ignores padding."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effnb.lowrank import experiments as E
from effnb.lowrank import prune as P
from effnb.lowrank.hard_attention import hard_attention_model
from effnb.models import minilm

LAYERS, HEADS, HEAD_DIM, FFN = 2, 4, 8, 40


def tiny_bert(seed: int = 0):
    """A randomly initialised BERT small enough to test every path in milliseconds."""
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=HEADS * HEAD_DIM, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)
    return BertModel(cfg, add_pooling_layer=False).eval()


def batch(n: int = 3, length: int = 9, pad_from: int | None = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    if pad_from is not None:
        mask[0, pad_from:] = 0
        ids[0, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask, "index": list(range(n))}


def masked(bert, keep_heads, keep_neurons, b):
    """The reference: the full model with the removed heads' and neurons' gates at zero."""
    with P.gates(bert) as (hg, ng):
        with torch.no_grad():
            for gates, keep in zip(hg + ng, keep_heads + keep_neurons):
                m = torch.zeros_like(gates)
                m[keep] = 1
                gates.mul_(m)
        return minilm.encode(bert, [b])


def test_gates_of_one_change_nothing():
    bert, b = tiny_bert(), batch()
    with P.gates(bert):
        gated = minilm.encode(bert, [b])
    assert torch.equal(gated, minilm.encode(bert, [b]))


keeps = st.lists(st.tuples(st.sets(st.integers(0, HEADS - 1), min_size=1),
                           st.sets(st.integers(0, FFN - 1), min_size=1)), min_size=LAYERS, max_size=LAYERS)


@settings(max_examples=25, deadline=None)
@given(keeps)
def test_removal_equals_masking(keep):
    """Physically smaller matrices compute exactly what zeroed gates compute (one head, all heads, one neuron)."""
    bert, b = tiny_bert(), batch()
    heads = [sorted(h) for h, _ in keep]
    neurons = [sorted(n) for _, n in keep]
    small = P.remove(bert, heads, neurons)
    assert P.shape_of(small) == {"heads": [len(h) for h in heads], "neurons": [len(n) for n in neurons]}
    torch.testing.assert_close(minilm.encode(small, [b]), masked(bert, heads, neurons, b), atol=2e-6, rtol=1e-5)


def test_removal_refuses_an_empty_layer_before_copying():
    bert = tiny_bert()
    with pytest.raises(ValueError, match="at least one head"):
        P.remove(bert, [[0], []], [[0], [1]])
    with pytest.raises(ValueError, match="one list of heads"):
        P.remove(bert, [[0]], [[0]])


def test_keep_sets_rank_globally_and_keep_one_per_layer():
    scores = {"heads": [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.01, 0.02, 0.03, 0.04])],
              "neurons": [torch.arange(FFN, dtype=torch.float32), torch.arange(FFN, dtype=torch.float32) + 0.5]}
    heads, neurons = P.keep_sets(scores, 0.5, 0.0)
    assert heads == [[0, 1, 2, 3], [3]]          # layer 1 is all below the cut: its best head stays
    assert [len(n) for n in neurons] == [FFN, FFN]
    heads, _ = P.keep_sets(scores, 0.25, 0.0)
    assert heads == [[0, 1, 2, 3], [3]] or sum(map(len, heads)) == 6
    with pytest.raises(ValueError, match="fraction"):
        P.keep_sets(scores, 1.0, 0.0)


def test_importance_is_zero_for_a_head_that_cannot_matter():
    """A head whose output-projection columns are zero has no effect on the loss: its gate's gradient is 0."""
    bert, b = tiny_bert(), batch()
    with torch.no_grad():
        bert.encoder.layer[1].attention.output.dense.weight[:, 2 * HEAD_DIM:3 * HEAD_DIM] = 0
    direction = torch.randn(HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(1))
    # not emb.sum(): a fresh LayerNorm's outputs sum to zero, so that loss has no gradient at all
    scores = P.importance(bert, [b], lambda emb, _b: (emb @ direction).pow(2).sum(), minilm.encode)
    assert scores["heads"][1][2] == 0 and (scores["heads"][1] > 0).sum() == HEADS - 1
    assert all(float(v.norm()) == pytest.approx(1.0) for v in scores["heads"] + scores["neurons"])


def test_accuracy_driven_stops_at_the_first_step_out_of_tolerance():
    bert = tiny_bert()
    scores = {"heads": [torch.rand(HEADS) for _ in range(LAYERS)], "neurons": [torch.rand(FFN) for _ in range(LAYERS)]}
    full = sum(p.numel() for p in bert.encoder.parameters())
    metric = lambda m: 80.0 * sum(p.numel() for p in m.encoder.parameters()) / full  # falls as parts go
    best, step, steps, base = P.accuracy_driven(bert, scores, metric, [(0.0, 0.01), (0.25, 0.5), (0.5, 0.9)],
                                                tolerance=2.0, progress=False)
    assert base == 80.0 and [s.kept for s in steps] == [True, False]   # the third step is never tried
    assert step is steps[0] and P.shape_of(best)["neurons"] != [FFN, FFN]


def test_recovery_lowers_the_distance_to_the_teacher():
    teacher, b = tiny_bert(), batch(n=8, pad_from=None)
    student = P.remove(teacher, [[0, 1], [2]], [list(range(10)), list(range(5))])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a fresh BERT's sentences all look alike: push the student away first
        for p in student.encoder.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    losses = P.recover(student, teacher, [b], minilm.encode, epochs=40, lr=3e-3, progress=False)
    assert losses[0] > 0.01 and max(losses[-5:]) < 0.5 * losses[0]
    assert not any(p.requires_grad for p in student.parameters())


def test_hard_attention_with_every_key_is_ordinary_attention():
    bert, b = tiny_bert(), batch()
    torch.testing.assert_close(minilm.encode(hard_attention_model(bert, 64), [b]), minilm.encode(bert, [b]),
                               atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="k >= 1"):
        hard_attention_model(bert, 0)
    with pytest.raises(ValueError, match="layers"):
        hard_attention_model(bert, 2, layers=[LAYERS])


@pytest.mark.parametrize("k", [1, 3])
def test_hard_attention_ignores_what_sits_under_the_padding(k):
    """Padded keys are masked before the top-k: other token ids there change nothing at real positions."""
    bert = hard_attention_model(tiny_bert(), k)
    b = batch()
    other = dict(b, input_ids=b["input_ids"].clone())
    other["input_ids"][0, 5:] = 7
    torch.testing.assert_close(minilm.encode(bert, [other]), minilm.encode(bert, [b]))
    assert not torch.allclose(minilm.encode(bert, [b]), minilm.encode(tiny_bert(), [b]))


def test_encoder_flops_counts_the_padded_work():
    bert, b = tiny_bert(), batch(n=2, length=6)
    h = HEADS * HEAD_DIM
    per_token = LAYERS * (4 * h * h + 2 * h * FFN)
    expect = 2.0 * 2 * 6 * per_token + LAYERS * 4.0 * 2 * 6 * 6 * h
    assert minilm.encoder_flops(bert, [b]) == expect
    small = P.remove(bert, [[0], [0, 1]], [[0, 1], [3]])
    assert minilm.encoder_flops(small, [b]) < expect


def test_probe_never_predicts_a_class_it_never_saw():
    emb = torch.randn(30, 5)
    labels = torch.tensor([0, 2] * 15)
    probe = E.fit_probe(emb, labels, classes=3)
    assert set(probe(torch.randn(100, 5)).argmax(1).tolist()) <= {0, 2}


def test_tokenize_and_encode_keep_the_texts_order():
    model = minilm.load_minilm(32)
    texts = ["a much longer sentence about files and directories on disk", "short", "a middling one here"]
    batches = minilm.tokenize(model, texts, max_len=32, batch_size=2)
    assert sorted(i for b in batches for i in b["index"]) == [0, 1, 2]
    assert batches[0]["index"][0] == 1       # sorted by length: the short text first
    torch.testing.assert_close(minilm.encode(model[0].auto_model, batches), minilm.embed(model, texts), atol=1e-5, rtol=1e-4)
    assert minilm.token_count(batches) == sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
