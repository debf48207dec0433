"""Two-stage retrieval (single-vector first stage, MaxSim re-rank) and the peers it is raced against.

The pipeline a late-interaction system runs: an exact (or approximate)
single-vector search returns the top candidates, then MaxSim over the token
vectors re-orders them. Every function returns what :func:`effnb.data.ranking.evaluate`
accepts (a [Q, D] score matrix or ranked lists), and every peer also returns a
callable that answers ONE query (by number), which is what the race times.

faiss (flat and HNSW indexes) and bm25s (BM25) are optional: they are imported
inside the functions that need them, with a message saying what to install.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import perf
from .. import threads as threads_mod
from . import ops, reference
from .index import PackedIndex

SearchOne = Callable[[int], object]      # query number -> that query's top documents


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("faiss is not installed: `pip install faiss-cpu bm25s` for the search peers") from exc
    return faiss


def _bm25s():
    try:
        import bm25s
    except ImportError as exc:
        raise ImportError("bm25s is not installed: `pip install faiss-cpu bm25s` for the search peers") from exc
    return bm25s


def _check_k(k: int, n_docs: int) -> int:
    """``k`` clipped to the corpus (asking for more documents than exist returns them all)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: pass a whole number of documents >= 1")
    if n_docs < 1:
        raise ValueError("the corpus is empty: pass at least one document")
    return min(k, n_docs)


def _check_emb(qemb: torch.Tensor, demb: torch.Tensor) -> None:
    if qemb.dim() != 2 or demb.dim() != 2 or qemb.shape[1] != demb.shape[1]:
        raise ValueError(f"pass query and document embeddings [Q, d] and [D, d] of one d, got "
                         f"{tuple(qemb.shape)} and {tuple(demb.shape)}")
    if len(qemb) == 0 or len(demb) == 0:
        raise ValueError("no queries or no documents: pass non-empty embeddings")


def single_vector(bert, batches: list[dict]) -> torch.Tensor:
    """Mean-pooled unit embeddings [n, 384] in the texts' order (:func:`effnb.models.minilm.encode`):
    the sentence-transformers view of the same encoder, the first stage's input."""
    from ..models import minilm
    if not batches:
        raise ValueError("no batches: tokenize a non-empty list of texts first")
    return minilm.encode(bert, batches)


def first_stage(qemb: torch.Tensor, demb: torch.Tensor, k: int = 100) -> torch.Tensor:
    """Top-``k`` documents per query by exact cosine (dot products of unit vectors), [Q, min(k, D)] int64,
    best first. Why exact: at tens of thousands of documents one matmul is cheap and has no recall loss."""
    from ..data import ranking
    _check_emb(qemb, demb)
    return ranking.topk(qemb @ demb.T, _check_k(k, len(demb)))


def rerank_scores(q_vectors: Sequence[torch.Tensor], index: PackedIndex, candidates) -> list[torch.Tensor]:
    """MaxSim score of each query's candidates (in the candidates' order), one fp32 tensor per query."""
    cand = list(candidates)
    if len(cand) != len(q_vectors):
        raise ValueError(f"{len(q_vectors)} queries but {len(cand)} candidate lists: pass one list per query")
    return [ops.maxsim(q, index, c) for q, c in zip(q_vectors, cand)]


def rerank(q_vectors: Sequence[torch.Tensor], index: PackedIndex, candidates) -> list[list[int]]:
    """Each query's candidates re-ordered by MaxSim (best first, ties kept in first-stage order):
    ranked lists that :func:`effnb.data.ranking.evaluate` scores directly."""
    out = []
    for c, s in zip(candidates, rerank_scores(q_vectors, index, candidates)):
        c = torch.as_tensor(c, dtype=torch.int64)
        out.append(c[torch.sort(s, descending=True, stable=True).indices].tolist())
    return out


def scores_matrix(candidates, scores: Sequence[torch.Tensor], n_docs: int) -> torch.Tensor:
    """A [Q, D] matrix with each query's candidate scores in place and -inf elsewhere. Evaluate it at
    k no larger than the candidate count: past the candidates every document ties at -inf."""
    cand = list(candidates)
    out = torch.full((len(cand), n_docs), float("-inf"))
    for i, (c, s) in enumerate(zip(cand, scores)):
        out[i, torch.as_tensor(c, dtype=torch.int64)] = torch.as_tensor(s, dtype=torch.float32)
    return out


# ---------------------------------------------------------------- peers: (scores or ranked lists, one query)

def exact_search(qemb: torch.Tensor, demb: torch.Tensor, k: int = 100) -> tuple[torch.Tensor, SearchOne]:
    """sentence-transformers-style exact search: the [Q, D] cosine matrix, and a callable that returns
    query i's top-``k`` (a matmul and a top-k)."""
    _check_emb(qemb, demb)
    k = _check_k(k, len(demb))
    return qemb @ demb.T, lambda i: torch.topk(demb @ qemb[i], k).indices


def _as_np(x: torch.Tensor):
    return x.detach().to(torch.float32).contiguous().numpy()


def faiss_flat(qemb: torch.Tensor, demb: torch.Tensor, k: int = 100) -> tuple[list[list[int]], SearchOne]:
    """faiss ``IndexFlatIP`` (exact inner product, faiss's BLAS): ranked top-``k`` lists and one-query search."""
    faiss = _faiss()
    _check_emb(qemb, demb)
    k = _check_k(k, len(demb))
    index = faiss.IndexFlatIP(demb.shape[1])
    index.add(_as_np(demb))
    q = _as_np(qemb)
    _, ids = index.search(q, k)
    return ids.tolist(), lambda i: index.search(q[i:i + 1], k)[1]


def faiss_hnsw(qemb: torch.Tensor, demb: torch.Tensor, k: int = 100, m: int = 32, ef_search: int = 128,
               ef_construction: int = 40) -> tuple[list[list[int]], SearchOne]:
    """faiss ``IndexHNSWFlat`` (M=``m``, efSearch=``ef_search``, inner-product metric): the approximate
    graph search a production first stage uses. ``efSearch`` is raised to ``k`` when smaller (HNSW
    cannot return more than it explores). Unfound slots (-1) are dropped from the lists."""
    faiss = _faiss()
    _check_emb(qemb, demb)
    k = _check_k(k, len(demb))
    index = faiss.IndexHNSWFlat(demb.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(_as_np(demb))
    index.hnsw.efSearch = max(ef_search, k)
    q = _as_np(qemb)
    _, ids = index.search(q, k)
    return [[d for d in row if d >= 0] for row in ids.tolist()], lambda i: index.search(q[i:i + 1], k)[1]


def bm25(queries: Sequence[str], docs: Sequence[str], k: int = 100) -> tuple[list[list[int]], SearchOne]:
    """BM25 via bm25s (its default English stopwords; the Snowball stemmer only when PyStemmer is
    installed): ranked top-``k`` lists and a one-query search that includes tokenizing the query."""
    bm25s = _bm25s()
    queries, docs = list(queries), list(docs)
    if not queries or not docs:
        raise ValueError("no queries or no documents: pass non-empty lists of strings")
    k = _check_k(k, len(docs))
    try:
        import Stemmer
        stemmer = Stemmer.Stemmer("english").stemWords
    except ImportError:
        stemmer = None
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)

    def search(texts: list[str]):
        toks = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
        return retriever.retrieve(toks, k=k, show_progress=False, n_threads=1).documents

    return search(queries).tolist(), lambda i: search([queries[i]])


# ---------------------------------------------------------------- the race

def rerank_race(qemb: torch.Tensor, demb: torch.Tensor, q_vectors: Sequence[torch.Tensor],
                doc_vectors: Sequence[torch.Tensor], queries: Sequence[str] | None = None,
                docs: Sequence[str] | None = None, depths: Sequence[int] = (10, 100), threads: int = 1,
                repeats: int = 5, rounds: int = 1) -> perf.Benchmark:
    """A :class:`effnb.perf.Benchmark` of the time to answer one query (unit "s"), x = the re-rank
    depth (candidates the first stage hands over; the first-stage-only peers return that many).

    Ours: exact single-vector search, then MaxSim of the top ``depth`` on the fp32 and on the int8
    index. Baseline: the same pipeline with MaxSim written as the padded batched matmul
    (``reference.maxsim_padded``) on the same candidates. First-stage peers: the torch matmul alone,
    faiss flat, faiss HNSW (M=32, efSearch=128) and, given ``queries`` and ``docs``, BM25 (faiss and
    bm25s only when installed). Each call answers the next query in turn, so the median is over queries.
    Query encoding is excluded (the same MiniLM pass for every dense contender; BM25 includes its own
    tokenizing). Every provider runs on ``threads`` threads."""
    n_threads = threads_mod.validate_threads(threads)
    _check_emb(qemb, demb)
    if len(q_vectors) != len(qemb) or len(doc_vectors) != len(demb):
        raise ValueError("pass one token-vector set per query and per document (as many as the embeddings)")
    depths = sorted(set(depths))
    if not depths or depths[0] < 1 or depths[-1] > len(demb):
        raise ValueError(f"depths={depths}: pass re-rank depths from 1 to the {len(demb)} documents")
    index = {"fp32": PackedIndex.from_list(doc_vectors), "int8": PackedIndex.from_list(doc_vectors, "int8")}
    qv = [q.to(torch.float32).contiguous() for q in q_vectors]

    def cycling(one: Callable[[int], object]) -> Callable[[], object]:
        state = [0]

        def call():
            i, state[0] = state[0], (state[0] + 1) % len(qemb)
            return one(i)
        return call

    def two_stage(score_fn, dtype):
        def factory(depth):
            threads_mod.set_threads(n_threads)
            ix = index[dtype]

            def one(i):
                cand = torch.topk(demb @ qemb[i], depth).indices
                return cand[torch.argsort(score_fn(qv[i], ix, cand), descending=True)]
            return cycling(one)
        return factory

    def peer(build):
        def factory(depth):
            threads_mod.set_threads(n_threads)
            try:
                _faiss().omp_set_num_threads(n_threads)
            except ImportError:
                pass
            return cycling(build(depth))
        return factory

    cpp = ops.backend()
    providers = [
        perf.Provider("ours-fp32", "exact top-k + effnb MaxSim fp32", two_stage(ops.maxsim, "fp32"),
                      ours=True, backend=cpp),
        perf.Provider("ours-int8", "exact top-k + effnb MaxSim int8", two_stage(ops.maxsim, "int8"),
                      ours=True, backend=cpp),
        perf.Provider("padded", "exact top-k + torch padded MaxSim", two_stage(reference.maxsim_padded, "fp32")),
        perf.Provider("exact", "single-vector exact (torch matmul)", peer(lambda d: exact_search(qemb, demb, d)[1])),
    ]
    notes = ["time per query, query encoding excluded; each call answers the next query in turn"]
    try:
        _faiss()
        providers += [
            perf.Provider("faiss-flat", "faiss IndexFlatIP", peer(lambda d: faiss_flat(qemb, demb, d)[1]),
                          backend="faiss"),
            perf.Provider("faiss-hnsw", "faiss HNSW (M=32, efSearch=128)",
                          peer(lambda d: faiss_hnsw(qemb, demb, d)[1]), backend="faiss")]
    except ImportError:
        notes.append("faiss not installed: its providers are left out")
    if queries is not None and docs is not None:
        try:
            _bm25s()
            providers.append(perf.Provider("bm25", "BM25 (bm25s)", peer(lambda d: bm25(queries, docs, d)[1]),
                                           backend="bm25s"))
        except ImportError:
            notes.append("bm25s not installed: BM25 is left out")
    return perf.Benchmark(
        name=f"one query: first stage + MaxSim re-rank, {len(demb)} documents, {n_threads} threads",
        x="re-rank depth", x_values=depths, providers=providers, baseline="padded", unit="s",
        repeats=repeats, rounds=rounds, notes=notes)
