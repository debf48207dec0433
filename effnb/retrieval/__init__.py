"""Late-interaction (ColBERT-style) retrieval: a packed ragged multi-vector index and MaxSim kernels.

A late-interaction model keeps one vector per token, and scores a document by
``sum_i max_j q_i . v_j`` over query tokens i and document tokens j (MaxSim).
Re-ranking a candidate set is then many small matrix products with a max in
between, which is what ``kernels/retrieval/retrieval.cpp`` fuses: it reads each
document's rows once, keeps the running max per query token in registers'
reach, and never materialises the [m, n] similarity matrix or pads documents.

Modules: ``index`` (:class:`PackedIndex`, fp32 or int8 with a scale per vector),
``reference`` (the plain loop the kernels must match and the padded batched
matmul a user would write), ``ops`` (schemas, fake kernels, :func:`maxsim`,
:func:`backend`), ``bench`` (the re-ranking race), ``multivector`` (MiniLM token vectors, whole-word
pooling, vector removal, PCA projection, storage), ``search`` (two-stage retrieval, faiss/BM25 peers,
the per-query race: ``search.rerank_race``, not the kernel race above), ``distill`` (Margin-MSE query
encoder), ``experiments`` (chapter 15's steps: one encoder pass per split, index recipes, their size and
quality) and ``plots``.
"""
from . import distill, multivector, ops, reference, search
from .bench import rerank_race
from .index import DTYPES, PackedIndex, quantize_rows
from .multivector import Gate, Projection, build_index, storage_table, token_vectors, tokenize_words
from .ops import OPS, available, backend, maxsim

__all__ = ["ops", "reference", "DTYPES", "PackedIndex", "quantize_rows", "OPS", "available", "backend", "maxsim",
           "rerank_race", "multivector", "search", "distill", "Gate", "Projection", "build_index", "storage_table",
           "token_vectors", "tokenize_words"]
