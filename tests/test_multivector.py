"""effnb.retrieval.multivector / search / distill: MiniLM token vectors and their reductions, two-stage
retrieval and its peers, and the Margin-MSE student, on tiny subsets (MiniLM loaded once per module)."""
import random

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from effnb import perf
from effnb.retrieval import distill, multivector as MV, ops, reference, search as S

MAX_LEN = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from effnb.models import minilm
    return minilm.load_minilm(MAX_LEN)


@pytest.fixture(scope="module")
def bert(model):
    return model[0].auto_model


@pytest.fixture(scope="module")
def tiny(model, bert):
    """20 test queries, their documents and 20 distractors: token vectors and single vectors."""
    from effnb.data import stdlib_tasks
    task = stdlib_tasks.retrieval_task("test", max_queries=20)
    rel = sorted({d for r in task.relevant for d in r})
    others = random.Random(0).sample([d for d in range(len(task.docs)) if d not in set(rel)], 20)
    keep = sorted(rel + others)
    where = {d: i for i, d in enumerate(keep)}
    docs = [task.docs[d] for d in keep]
    qb, db = MV.tokenize_words(model, task.queries, MAX_LEN), MV.tokenize_words(model, docs, MAX_LEN)
    return {"queries": task.queries, "docs": docs, "relevant": [{where[d] for d in r} for r in task.relevant],
            "qb": qb, "db": db, "qtok": MV.token_vectors(bert, qb), "dtok": MV.token_vectors(bert, db),
            "qemb": S.single_vector(bert, qb), "demb": S.single_vector(bert, db)}


# ---------------------------------------------------------------- token vectors

def test_token_vectors_counts_norms_order(model, tiny):
    lengths = [len(ids) - 2 for ids in model.tokenizer(tiny["docs"], truncation=True, max_length=MAX_LEN)["input_ids"]]
    assert [len(v) for v in tiny["dtok"]] == lengths          # real tokens without [CLS]/[SEP], texts' order
    for v in tiny["dtok"]:
        assert v.dtype == torch.float32 and v.shape[1] == 384
        assert torch.allclose(v.norm(dim=1), torch.ones(len(v)), atol=1e-5)
    assert sorted(i for b in tiny["db"] for i in b["index"]) == list(range(len(tiny["docs"])))


def test_token_vectors_do_not_depend_on_batching(model, bert, tiny):
    texts = tiny["docs"][:5][::-1]
    alone = [MV.token_vectors(bert, MV.tokenize_words(model, [t], MAX_LEN))[0] for t in texts]
    together = MV.token_vectors(bert, MV.tokenize_words(model, texts, MAX_LEN, batch_size=2))
    for a, b in zip(alone, together):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)


def test_encode_views_is_one_pass_of_every_reading(bert, tiny):
    proj = MV.Projection.fit(tiny["dtok"], 16)
    views = {"tokens": {}, "words": {"whole_words": True}, "content": {"whole_words": True, "drop": "stopwords"},
             "pca": {"proj": proj}}
    got = MV.encode_views(bert, tiny["db"], views)
    assert torch.allclose(got["single"], tiny["demb"], atol=1e-5)
    for name, view in views.items():
        alone = MV.token_vectors(bert, tiny["db"], **view)
        assert len(got[name]) == len(alone) and all(torch.equal(a, b) for a, b in zip(got[name], alone)), name
    assert set(MV.encode_views(bert, tiny["db"], {}, single=True)) == {"single"}
    with pytest.raises(ValueError, match="unknown"):
        MV.encode_views(bert, tiny["db"], {"x": {"whole_word": True}})
    with pytest.raises(ValueError, match="single"):
        MV.encode_views(bert, tiny["db"], {"single": {}})


SENTENCE = "Tokenization of hyperparameterized zlib objects, isn't it?"


def test_whole_word_pooling_is_the_mean_of_subwords(model, bert):
    batches = MV.tokenize_words(model, [SENTENCE], MAX_LEN)
    wids = batches[0]["word_ids"][0]
    n_words = len(set(wids[wids >= 0].tolist()))
    assert n_words < int((wids >= 0).sum())                  # some word really is split into subwords
    pooled = MV.token_vectors(bert, batches, whole_words=True)[0]
    assert pooled.shape == (n_words, 384) and batches[0]["words"][0][0] == "tokenization"
    with torch.no_grad():
        b = batches[0]
        hidden = bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state[0]
    for w in range(n_words):
        mean = hidden[wids == w].mean(0)                     # before normalisation
        assert torch.allclose(pooled[w], F.normalize(mean, dim=0), atol=1e-5)


def test_stopwords_and_punctuation_are_dropped(model, bert):
    batches = MV.tokenize_words(model, ["the cat sat on the mat ."], MAX_LEN)
    kept = MV.token_vectors(bert, batches, whole_words=True, drop="stopwords")[0]
    assert len(kept) == 3                                    # cat sat mat
    every = MV.token_vectors(bert, batches, whole_words=True)[0]
    assert torch.allclose(kept, every[[1, 2, 5]])
    assert MV.is_stopword("The") and MV.is_stopword("?!") and not MV.is_stopword("zlib")


# ---------------------------------------------------------------- projection, gate, storage

@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), d=st.integers(2, 24), n=st.integers(1, 6))
def test_full_dimension_pca_keeps_maxsim(seed, d, n):
    g = torch.Generator().manual_seed(seed)
    docs = [F.normalize(torch.randn(int(k), d, generator=g), dim=1) for k in torch.randint(0, 7, (n,), generator=g)]
    docs[0] = F.normalize(torch.randn(3, d, generator=g), dim=1)
    q = F.normalize(torch.randn(4, d, generator=g), dim=1)
    p = MV.Projection.fit(docs + [q], d)
    assert p.dim == d and abs(p.explained - 1) < 1e-6
    proj = [F.normalize(p(v), dim=-1) for v in docs]
    before = ops.maxsim(q, MV.build_index(docs))
    after = ops.maxsim(F.normalize(p(q), dim=-1), MV.build_index(proj))
    assert torch.allclose(before, after, atol=1e-4)


def test_pca_on_minilm_vectors(tiny):
    full = MV.Projection.fit(tiny["dtok"], 384)
    q, ix = tiny["qtok"][0], MV.build_index(tiny["dtok"])
    pq, pix = F.normalize(full(q), dim=-1), MV.build_index([F.normalize(full(v), dim=-1) for v in tiny["dtok"]])
    assert torch.allclose(ops.maxsim(q, ix), ops.maxsim(pq, pix), atol=1e-3)
    small = MV.Projection.fit(tiny["dtok"], 32)
    assert small.components.shape == (384, 32) and 0 < small.explained < 1


def test_gate_trains_and_never_empties_a_document(bert, tiny):
    cand = S.first_stage(tiny["qemb"], tiny["demb"], 8)
    pos = [min(r) for r in tiny["relevant"]]
    gate, losses = MV.train_gate(tiny["qtok"], tiny["dtok"], cand, pos, steps=30, lr=0.05)
    assert len(losses) == 30 and losses[-1] < losses[0]
    strict = MV.Gate(gate.w, gate.b, threshold=1.1)          # keeps nothing: the best vector survives
    assert all(len(strict.prune(v)) == 1 for v in tiny["dtok"][:5])
    gated = MV.token_vectors(bert, tiny["db"][:1], drop=gate)    # drop= takes a gate at index time
    plain = [tiny["dtok"][i] for i in sorted(tiny["db"][0]["index"])]
    assert all(1 <= len(a) <= len(b) for a, b in zip(gated, plain))


def test_storage_table(tiny):
    table = MV.storage_table({"fp32-384": MV.build_index(tiny["dtok"]), "int8": MV.build_index(tiny["dtok"], "int8")})
    assert table.loc["fp32-384", "x smaller"] == 1 and 3.5 < table.loc["int8", "x smaller"] < 4
    n = sum(len(v) for v in tiny["dtok"])
    assert table.loc["fp32-384", "bytes/doc"] * len(tiny["dtok"]) == MV.plain_bytes(n, len(tiny["dtok"]))


# ---------------------------------------------------------------- search

def test_rerank_all_documents_is_exhaustive_maxsim(tiny):
    index = MV.build_index(tiny["dtok"])
    every = torch.arange(index.num_docs)
    ranked = S.rerank(tiny["qtok"][:5], index, [every] * 5)
    for q, r in zip(tiny["qtok"][:5], ranked):
        ref = reference.maxsim(q, index, every)
        assert sorted(r) == every.tolist()
        assert bool((ref[r].diff() <= 1e-5).all())             # best first
        assert r[0] == int(ref.argmax())
    scores = S.rerank_scores(tiny["qtok"][:5], index, [every] * 5)
    m = S.scores_matrix([every] * 5, scores, index.num_docs)
    assert m.shape == (5, index.num_docs) and torch.isfinite(m).all()


def test_int8_scores_close_to_fp32(tiny):
    f, i8 = MV.build_index(tiny["dtok"]), MV.build_index(tiny["dtok"], "int8")
    for q in tiny["qtok"][:5]:
        a, b = ops.maxsim(q, f), ops.maxsim(q, i8)
        assert bool(((a - b).abs() <= 0.01 * len(q)).all())


def test_first_stage_and_candidates_outside_are_minus_inf(tiny):
    cand = S.first_stage(tiny["qemb"], tiny["demb"], 5)
    assert cand.shape == (20, 5)
    exact, one = S.exact_search(tiny["qemb"], tiny["demb"], 5)
    assert torch.equal(one(3), cand[3])
    m = S.scores_matrix(cand, S.rerank_scores(tiny["qtok"], MV.build_index(tiny["dtok"]), cand), len(tiny["docs"]))
    assert int(torch.isfinite(m).sum()) == 20 * 5


def test_faiss_flat_equals_exact_search(tiny):
    pytest.importorskip("faiss")
    exact, _ = S.exact_search(tiny["qemb"], tiny["demb"])
    flat, one = S.faiss_flat(tiny["qemb"], tiny["demb"], 10)
    assert flat == exact.topk(10, dim=1).indices.tolist()
    assert one(2).tolist()[0] == flat[2]
    hnsw, _ = S.faiss_hnsw(tiny["qemb"], tiny["demb"], 10)
    assert [r[0] for r in hnsw] == [r[0] for r in flat]        # 40 documents: the graph search is exact here


def test_bm25_finds_the_rare_word():
    pytest.importorskip("bm25s")
    docs = ["the cat sat on the mat", "a dog barked in the fog", "zlib compresses bytes", "the mat was red"]
    ranked, one = S.bm25(["what does zlib do with the mat"], docs, 10)
    assert ranked[0][0] == 2 and len(ranked[0]) == 4           # k past the corpus: every document
    assert one(0)[0][0] == 2


def test_rerank_race_spec_runs(tiny):
    spec = S.rerank_race(tiny["qemb"][:4], tiny["demb"], tiny["qtok"][:4], tiny["dtok"], tiny["queries"][:4],
                         tiny["docs"], depths=[10], repeats=2)
    assert isinstance(spec, perf.Benchmark) and spec.baseline == "padded"
    keys = [p.key for p in spec.providers]
    assert {"ours-fp32", "ours-int8", "padded", "exact"} <= set(keys)
    for p in spec.providers:                                   # each answers one query (no timing here)
        p.make(10)()


# ---------------------------------------------------------------- distillation

def test_student_keeps_the_listed_layers(bert):
    student = distill.student_from(bert, (0, 2, 4))
    assert len(student.encoder.layer) == 3 and student.config.num_hidden_layers == 3
    assert len(bert.encoder.layer) == 6                        # the teacher is untouched
    for new, old in enumerate((0, 2, 4)):
        a, b = student.encoder.layer[new].state_dict(), bert.encoder.layer[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)
        assert student.encoder.layer[new].state_dict()["attention.self.query.weight"].data_ptr() != \
            bert.encoder.layer[old].state_dict()["attention.self.query.weight"].data_ptr()


def test_query_encoder_training_lowers_each_loss(model, bert, tiny):
    from effnb.data.stdlib_tasks import RetrievalTask
    task = RetrievalTask(tiny["queries"][:4], tiny["docs"], [str(i) for i in range(len(tiny["docs"]))],
                         tiny["relevant"][:4], [str(i) for i in range(4)], 0)
    qb = MV.tokenize_words(model, task.queries, MAX_LEN)
    qemb = MV.encode_views(bert, qb, {})["single"]
    demb = MV.encode_views(bert, tiny["db"], {})["single"]
    tr = distill.triples(task, qemb, demb, negatives=2)
    with pytest.raises(ValueError, match="task.queries"):
        distill.triples(task, demb, demb)
    assert len(tr) == 8 and set(tr.pos.tolist()) == {min(r) for r in task.relevant}
    assert not (tr.pos == tr.neg).any()
    assert torch.allclose(tr.margin, (qemb[tr.query] * (demb[tr.pos] - demb[tr.neg])).sum(-1), atol=1e-5)
    # the full teacher as its own student: its margins and vectors are the teacher's, so both losses vanish
    copy = distill.student_from(bert, range(6))
    with torch.no_grad():
        for loss in ("margin-mse", "embedding"):
            value = distill.query_loss(copy, model.tokenizer, task.queries, demb, tr, loss, qemb, MAX_LEN)
            assert float(value) < 1e-6, loss
    for loss in distill.LOSSES:
        student = distill.student_from(bert, (0, 5))
        student.eval()
        with torch.no_grad():
            before = float(distill.query_loss(student, model.tokenizer, task.queries, demb, tr, loss, qemb, MAX_LEN))
        losses = distill.train_query_encoder(student, tr, model.tokenizer, task.queries, demb, loss, qemb, epochs=4,
                                             batch_size=8, lr=1e-4, max_len=MAX_LEN, progress=False)
        with torch.no_grad():
            after = float(distill.query_loss(student, model.tokenizer, task.queries, demb, tr, loss, qemb, MAX_LEN))
        assert len(losses) == 4 and after < before, loss
    with pytest.raises(ValueError, match="teacher_qemb"):
        distill.train_query_encoder(student, tr, model.tokenizer, task.queries, demb, "embedding")
    with pytest.raises(ValueError, match="one of"):
        distill.train_query_encoder(student, tr, model.tokenizer, task.queries, demb, "mse")
    with pytest.raises(ValueError, match="every document"):
        distill.train_query_encoder(student, tr, model.tokenizer, task.queries, demb[:1])


def test_projection_training_lowers_the_loss_and_keeps_shapes(tiny):
    cand = S.first_stage(tiny["qemb"], tiny["demb"], 8)
    pos = [min(r) for r in tiny["relevant"]]
    proj, losses = MV.train_projection(tiny["qtok"], tiny["dtok"], cand, pos, dim=16, steps=40, batch=8, lr=1e-2)
    assert proj.components.shape == (384, 16) and len(losses) == 40
    assert sum(losses[-10:]) < sum(losses[:10])
    out = MV.project(tiny["dtok"][:3], proj)
    assert [v.shape for v in out] == [(len(v), 16) for v in tiny["dtok"][:3]]
    assert all(torch.allclose(v.norm(dim=1), torch.ones(len(v)), atol=1e-5) for v in out)
    with pytest.raises(ValueError, match="candidates"):
        MV.train_projection(tiny["qtok"], tiny["dtok"], cand[:3], pos)
    with pytest.raises(ValueError, match="dim="):
        MV.train_projection(tiny["qtok"], tiny["dtok"], cand, pos, dim=0)


@pytest.fixture(scope="module")
def split(bert, tiny):
    from effnb.data.stdlib_tasks import RetrievalTask
    from effnb.retrieval import experiments as E
    task = RetrievalTask(tiny["queries"], tiny["docs"], [str(i) for i in range(len(tiny["docs"]))], tiny["relevant"],
                         [str(i) for i in range(len(tiny["queries"]))], 0)
    views = MV.encode_views(bert, tiny["db"], E.DOC_VIEWS)
    return E.Split(task, tiny["qb"], tiny["db"], {"single": tiny["qemb"], "tokens": tiny["qtok"]}, views)


def test_storage_study_sizes_and_qualities(split):
    from effnb.retrieval import experiments as E
    recipes = E.variants({"PCA 16": MV.Projection.fit(split.d["tokens"], 16)}, keeps=("tokens", "content"))
    assert [v.name for v in recipes][:2] == ["every token, 384 dims, fp32", "every token, 384 dims, int8"]
    df, each = E.storage_study(split, recipes, depth=10)
    assert len(df) == len(recipes) == 8 and set(each) == set(df["index"])
    row = df.set_index("index")
    assert row.loc["every token, 384 dims, fp32", "x smaller"] == 1.0
    assert 3.5 < row.loc["every token, 384 dims, int8", "x smaller"] < 4.0        # one fp32 scale per vector
    assert row.loc["content words, 384 dims, fp32", "vectors/doc"] < row.loc["every token, 384 dims, fp32", "vectors/doc"]
    assert (row["dims"] == [384, 384, 16, 16, 384, 384, 16, 16]).all()
    first = split.evaluate(E.rerank(split, split.q["tokens"], recipes[0].index(split), 10))["nDCG@10"]
    assert row.loc[recipes[0].name, "nDCG@10"] == pytest.approx(float(first.mean()))
    assert all(len(v) == len(split.task.queries) for v in each.values())
    best = E.smallest_within(df, 100.0)
    assert best["bytes/doc"] == df["bytes/doc"].min()
    assert E.smallest_within(df.assign(**{"vs first (points)": [0.0] + [-50.0] * 7}), 1.0)["index"] == recipes[0].name


def test_race_quality_names_every_provider(split):
    from effnb.retrieval import experiments as E
    q = E.race_quality(split, split.q["tokens"], split.d["content"], [5, 20])
    spec = S.rerank_race(split.q["single"], split.d["single"], split.q["tokens"], split.d["content"],
                         split.task.queries, split.task.docs, depths=[5, 20])
    assert set(q["provider"]) == {p.key for p in spec.providers}
    assert set(q["depth"]) == {5, 20} and q["nDCG@10"].between(0, 1).all()
    exact = q[(q["provider"] == "exact")].set_index("depth")["recall@depth"]
    assert exact[5] <= exact[20]                          # a deeper list can only find more


# ---------------------------------------------------------------- bad input

def test_bad_input_says_what_to_pass(model, bert, tiny):
    with pytest.raises(ValueError, match="non-empty list"):
        MV.tokenize_words(model, [])
    with pytest.raises(ValueError, match="no batches"):
        MV.token_vectors(bert, [])
    with pytest.raises(ValueError, match="whole_words=True"):
        MV.token_vectors(bert, tiny["qb"], drop="stopwords")
    with pytest.raises(ValueError, match="pass None, 'stopwords' or a Gate"):
        MV.token_vectors(bert, tiny["qb"], drop="everything")
    with pytest.raises(ValueError, match="no documents"):
        MV.build_index([])
    with pytest.raises(ValueError, match="from 1 to"):
        MV.Projection.fit(tiny["dtok"], 500)
    with pytest.raises(ValueError, match="from 0 to 5"):
        distill.student_from(bert, (0, 6))
    with pytest.raises(ValueError, match="once"):
        distill.student_from(bert, (1, 1))
    with pytest.raises(ValueError, match=">= 1"):
        S.first_stage(tiny["qemb"], tiny["demb"], 0)
    assert S.first_stage(tiny["qemb"], tiny["demb"], 10_000).shape == (20, len(tiny["docs"]))  # k past D: all
    with pytest.raises(ValueError, match="one d"):
        S.first_stage(tiny["qemb"], tiny["demb"][:, :10])
    with pytest.raises(ValueError, match="one list per query"):
        S.rerank(tiny["qtok"], MV.build_index(tiny["dtok"]), [torch.arange(3)])
    with pytest.raises(ValueError, match="depths"):
        S.rerank_race(tiny["qemb"], tiny["demb"], tiny["qtok"], tiny["dtok"], depths=[10_000])
