"""Offline text tasks from the standard library (classification, retrieval) and the ranking metrics."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effnb.data import ranking
from effnb.data import stdlib_tasks as tasks
from effnb.data.stdlib_text import STDLIB_MODULES

# sha256 of json.dumps(stdlib_docstrings(n, seed=0)) from the code before the shared walker (Python 3.11.7)
DOCSTRINGS_SHA256 = {300: "6c9b5a474481de0f9e46a2dec1b89807a0f6b99a43fecc9757379117ccbad165",
                     2925: "06d2b40ee3b8e047634d4e974546abe9d5eaa800171023aea9d11821197d1df5"}


def test_stdlib_docstrings_unchanged_by_the_shared_walker():
    """In a fresh interpreter: torch monkeypatches ``inspect.getfile``, which changes what the walk sees."""
    if sys.version_info[:3] != (3, 11, 7):
        pytest.skip("docstrings move between Python releases; the hashes were recorded on 3.11.7")
    code = ("import hashlib, json; from effnb.data.stdlib_text import stdlib_docstrings; "
            "print(json.dumps({n: hashlib.sha256(json.dumps(stdlib_docstrings(n, seed=0)).encode()).hexdigest() "
            "for n in (300, 2925)}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert {int(k): v for k, v in json.loads(out).items()} == DOCSTRINGS_SHA256


def test_records_are_distinct_and_well_formed():
    recs = tasks.docstring_records()
    assert recs == tasks.docstring_records.__wrapped__()
    assert [(r.module, r.qualname) for r in recs] == sorted((r.module, r.qualname) for r in recs)
    assert len({r.key for r in recs}) == len(recs)
    assert {r.kind for r in recs} == {"module", "class", "function", "method"}
    assert all(r.summary and r.paragraph.startswith(r.summary) for r in recs)
    json_dumps = next(r for r in recs if r.key == "json:dumps")
    assert json_dumps.source.startswith("def dumps(") and json_dumps.summary not in json_dumps.source


def test_every_module_has_a_topic_and_topics_are_big_enough():
    assert set(STDLIB_MODULES) <= set(tasks.LIBRARY_TOPICS)
    sizes = {t: list(tasks.LIBRARY_TOPICS.values()).count(t) for t in set(tasks.LIBRARY_TOPICS.values())}
    assert min(sizes.values()) >= 4, sizes


@pytest.fixture(scope="module")
def clf():
    return tasks.classification_task(seed=0)


def test_classification_is_deterministic_and_split_by_module(clf):
    assert clf == tasks.classification_task(seed=0)
    assert clf != tasks.classification_task(seed=1)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not clf.modules[a] & clf.modules[b]
    texts = [t for s in tasks.SPLITS for t, _ in getattr(clf, s)]
    assert len(texts) == len(set(texts))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_split_has_every_class(seed):
    c = tasks.classification_task(seed=seed)
    for s in tasks.SPLITS:
        assert {y for _, y in getattr(c, s)} == set(range(len(c.labels))), s
    counts = c.counts()
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    table = c.describe()
    assert list(table.index) == list(tasks.SPLITS) and (table["classes"] == len(c.labels)).all()


def test_classification_texts_are_prose(clf):
    assert clf.labels == sorted(clf.labels)
    assert all(40 <= len(t) <= 400 and t == t.strip() for s in tasks.SPLITS for t, _ in getattr(clf, s))


@pytest.mark.parametrize("split", tasks.SPLITS)
def test_retrieval_task(split):
    rt = tasks.retrieval_task(split)
    assert rt == tasks.retrieval_task(split)
    assert len(rt.queries) == len(rt.relevant) == len(rt.query_ids) > 100
    assert len(rt.docs) == len(rt.doc_ids) == len(set(rt.doc_ids))
    assert len(set(rt.docs)) == len(rt.docs), "a repeated document would make some answer ambiguous"
    assert all(len(rel) == 1 for rel in rt.relevant)
    assert all(q != rt.docs[d] for q, rel in zip(rt.queries, rt.relevant) for d in rel)
    assert all(len(d) <= 1200 for d in rt.docs)
    assert rt.distractors > 100 and all(i.startswith("pydoc:") for i in rt.doc_ids[-rt.distractors:])
    assert rt.describe().loc["corpus", "queries"] == len(rt.queries)


def test_retrieval_splits_share_the_module_assignment():
    where = tasks.module_splits(0)
    for split in tasks.SPLITS:
        rt = tasks.retrieval_task(split)
        assert {where[q.split(":")[0]] for q in rt.query_ids} == {split}
    small = tasks.retrieval_task("test", max_queries=50)
    assert len(small.queries) == 50 and small.docs == tasks.retrieval_task("test").docs
    with pytest.raises(ValueError):
        tasks.retrieval_task("dev")


# ---------------------------------------------------------------- metrics


def test_perfect_ranking_scores_one():
    scores = torch.eye(4)
    m = ranking.evaluate(scores, [{0}, {1}, {2}, {3}])
    assert m["MRR@10"] == m["nDCG@10"] == m["recall@100"] == 1.0


def test_relevant_at_rank_two():
    m = ranking.evaluate([[5, 3, 7]], [{3}])
    assert m["MRR@10"] == 0.5
    assert m["nDCG@10"] == pytest.approx(1 / math.log2(3))
    assert m["recall@100"] == 1.0
    both = ranking.evaluate([[5, 3, 7], [3, 5]], [{3}, {3}], per_query=True)
    assert both["MRR@10"].tolist() == [0.5, 1.0]


def test_relevant_beyond_ten_counts_only_for_recall():
    scores = np.arange(50, 0, -1, dtype=np.float32)[None, :]    # doc i is ranked i + 1
    m = ranking.evaluate(scores, [{20}])
    assert m["MRR@10"] == 0 and m["nDCG@10"] == 0 and m["recall@100"] == 1.0


def test_ndcg_ideal_is_capped_at_k_and_recall_is_a_fraction():
    m = ranking.evaluate([[0, 9, 1]], [{0, 1, 2, 3}], ks=(2,))
    ideal = 1 + 1 / math.log2(3)
    assert m["nDCG@2"] == pytest.approx(1 / ideal) and m["recall@2"] == 0.25 and m["MRR@2"] == 1.0


def test_topk_handles_k_above_corpus_and_chunks():
    scores = torch.randn(7, 3)
    idx = ranking.topk(scores, 10, chunk=2)
    assert idx.shape == (7, 3) and torch.equal(idx, scores.argsort(dim=1, descending=True))
    with pytest.raises(ValueError):
        ranking.evaluate([[0]], [set()])


@st.composite
def _problems(draw):
    n_q, n_d = draw(st.integers(1, 6)), draw(st.integers(1, 30))
    flat = draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n_q * n_d, max_size=n_q * n_d,
                         unique=True))    # distinct scores: ties have no defined order
    rel = [set(draw(st.lists(st.integers(0, n_d - 1), min_size=1, max_size=4))) for _ in range(n_q)]
    perm = draw(st.permutations(range(n_d)))
    return np.array(flat).reshape(n_q, n_d), rel, np.array(perm)


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_metrics_are_bounded_and_ignore_document_order(problem):
    scores, rel, perm = problem
    ks = (1, 5, 10, 100)
    m = ranking.evaluate(scores, rel, ks=ks)
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in m.values())
    # doc j moves to position new[j]; its score moves with it
    new = np.empty_like(perm)
    new[perm] = np.arange(len(perm))
    m2 = ranking.evaluate(scores[:, perm], [{int(new[d]) for d in r} for r in rel], ks=ks)
    assert m2 == pytest.approx(m)
    each = ranking.evaluate(scores, rel, ks=ks, per_query=True)
    assert set(each) == set(m) and all(len(v) == len(rel) for v in each.values())
    assert {k: float(v.mean()) for k, v in each.items()} == pytest.approx(m)
