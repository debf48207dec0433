"""Chapter 15's steps: one encoder pass per split, index variants scored for size and quality, the races.

Every retriever is scored the same way (:func:`effnb.data.ranking.evaluate` on the
test split's queries, per query, so two retrievers can be compared with a paired
test), and every index variant is a recipe applied to the SAME hidden states: which
vectors are kept (all tokens, whole words, content words), their dimension (384,
a PCA or a trained projection) and their number format (fp32 or int8).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data import ranking, stdlib_tasks
from . import multivector as MV
from . import search as S
from .index import PackedIndex

DOC_VIEWS = {"tokens": {}, "words": {"whole_words": True}, "content": {"whole_words": True, "drop": "stopwords"}}
KEEP = {"tokens": "every token", "words": "whole words", "content": "content words"}


@dataclass
class Split:
    """A retrieval split encoded once: the task, the tokenized texts, and the encoder's readings of them
    (``q``: ``"single"`` and ``"tokens"``; ``d``: ``"single"`` and :data:`DOC_VIEWS`)."""
    task: stdlib_tasks.RetrievalTask
    q_batches: list
    d_batches: list
    q: dict
    d: dict

    def evaluate(self, ranked_or_scores) -> dict[str, np.ndarray]:
        """Per-query MRR/nDCG/recall at 10 and 100 on this split's relevance judgements."""
        return ranking.evaluate(ranked_or_scores, self.task.relevant, ks=(10, 100), per_query=True)


def prepare(model, split: str, doc_tokens: int, query_tokens: int = 64, max_queries: int | None = None,
            seed: int = 0, doc_views: Mapping[str, Mapping] = DOC_VIEWS) -> Split:
    """The ``split`` task (``max_queries`` keeps a seeded subset of queries, the corpus stays whole), its texts
    tokenized (documents cut at ``doc_tokens``) and encoded once, reading every view from the same pass."""
    task = stdlib_tasks.retrieval_task(split, seed, max_queries)
    bert = model[0].auto_model
    qb = MV.tokenize_words(model, task.queries, query_tokens)
    db = MV.tokenize_words(model, task.docs, doc_tokens)
    return Split(task, qb, db, MV.encode_views(bert, qb, {"tokens": {}}), MV.encode_views(bert, db, doc_views))


@dataclass
class Variant:
    """One way to store the index: which vectors (``keep``: a key of :data:`DOC_VIEWS`), mapped by ``proj``
    (None: the encoder's 384 dims), stored as ``dtype``."""
    keep: str
    dims: str
    dtype: str
    proj: MV.Projection | None = None

    @property
    def name(self) -> str:
        return f"{KEEP[self.keep]}, {self.dims}, {self.dtype}"

    def vectors(self, s: Split) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(query token vectors, document vectors) of split ``s`` under this recipe. Queries keep every
        token (ColBERT does: a query is short and each of its words is a question to the document)."""
        q, d = s.q["tokens"], s.d[self.keep]
        if self.proj is not None:
            q, d = MV.project(q, self.proj), MV.project(d, self.proj)
        return q, d

    def index(self, s: Split) -> PackedIndex:
        return MV.build_index(self.vectors(s)[1], self.dtype)


def variants(projections: Mapping[str, MV.Projection], keeps: Sequence[str] = ("tokens", "words", "content"),
             dtypes: Sequence[str] = ("fp32", "int8")) -> list[Variant]:
    """Every combination of kept vectors, dimension (384 plus each named projection) and number format."""
    dims = [("384 dims", None), *projections.items()]
    return [Variant(k, name, t, p) for k in keeps for name, p in dims for t in dtypes]


def rerank(s: Split, q_vectors, index: PackedIndex, depth: int) -> list[list[int]]:
    """The two-stage pipeline: exact single-vector top-``depth``, then MaxSim on ``index``."""
    return S.rerank(q_vectors, index, S.first_stage(s.q["single"], s.d["single"], depth))


def storage_study(s: Split, recipes: Sequence[Variant], depth: int) -> tuple[pd.DataFrame, dict]:
    """For each recipe: vectors per document, dims, bytes per document, how many times smaller than the
    first recipe (meant to be every token, 384 dims, fp32), and the re-ranked quality. Returns the table
    and each recipe's per-query nDCG@10 (for paired tests)."""
    rows, per_query = [], {}
    base_bytes = None
    for v in recipes:
        qv, dv = v.vectors(s)
        ix = MV.build_index(dv, v.dtype)
        m = s.evaluate(rerank(s, qv, ix, depth))
        base_bytes = base_bytes or ix.nbytes
        per_query[v.name] = m["nDCG@10"]
        rows.append({"index": v.name, "vectors": KEEP[v.keep], "dims": ix.dim, "dtype": v.dtype,
                     "vectors/doc": ix.vectors.shape[0] / ix.num_docs, "bytes/doc": ix.nbytes / ix.num_docs,
                     "x smaller": base_bytes / ix.nbytes, "nDCG@10": float(m["nDCG@10"].mean()),
                     "MRR@10": float(m["MRR@10"].mean())})
    df = pd.DataFrame(rows)
    df["vs first (points)"] = 100 * (df["nDCG@10"] - df["nDCG@10"].iloc[0])
    return df, per_query


def smallest_within(df: pd.DataFrame, points: float) -> pd.Series | None:
    """The smallest index whose mean nDCG@10 is within ``points`` of the first row's (None if none is)."""
    ok = df[df["vs first (points)"].abs() <= points]
    return ok.sort_values("bytes/doc").iloc[0] if len(ok) else None


def train_candidates(s: Split, depth: int = 16) -> tuple[torch.Tensor, list[int]]:
    """Each train query's first-stage top-``depth`` and its relevant document: what the projection trains on."""
    return S.first_stage(s.q["single"], s.d["single"], depth), [min(r) for r in s.task.relevant]


def race_quality(s: Split, q_vectors, doc_vectors, depths: Sequence[int], hnsw: bool = True,
                 bm25: bool = True) -> pd.DataFrame:
    """nDCG@10 and recall@100 of each contender of :func:`effnb.retrieval.search.rerank_race` on the same
    split, per depth (a first-stage-only peer's quality does not depend on the depth beyond 10, except
    recall). Keys match the race's providers."""
    rows = []
    ixs = {"ours-fp32": MV.build_index(doc_vectors), "ours-int8": MV.build_index(doc_vectors, "int8")}
    for depth in depths:
        first = S.first_stage(s.q["single"], s.d["single"], depth)
        got = {k: S.rerank(q_vectors, ix, first) for k, ix in ixs.items()}
        got["padded"] = got["ours-fp32"]
        got["exact"] = first.tolist()
        try:
            got["faiss-flat"] = S.faiss_flat(s.q["single"], s.d["single"], depth)[0]
            if hnsw:
                got["faiss-hnsw"] = S.faiss_hnsw(s.q["single"], s.d["single"], depth)[0]
        except ImportError:
            pass
        if bm25:
            try:
                got["bm25"] = S.bm25(s.task.queries, s.task.docs, depth)[0]
            except ImportError:
                pass
        for k, ranked in got.items():
            m = s.evaluate(ranked)
            rows.append({"provider": k, "depth": depth, "nDCG@10": float(m["nDCG@10"].mean()),
                         "recall@depth": float(m["recall@100"].mean())})
    return pd.DataFrame(rows)
