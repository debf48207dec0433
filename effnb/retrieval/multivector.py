"""Late-interaction token vectors from MiniLM, and the ways to store fewer, smaller ones.

A late-interaction index keeps one vector per document token, so its size is
(vectors per document) x (dimensions) x (bytes per number). Each factor has a
lever here: whole-word pooling and vector removal cut the vectors (ColBERTer's
BOW^2 and contextualized stopwords), a low-dimension :class:`Projection` cuts
the dimensions (ColBERT's 128-d layer; PCA is the training-free stand-in), and
the int8 :class:`~effnb.retrieval.index.PackedIndex` cuts the bytes.

MiniLM was trained as a mean-pooled sentence encoder, not for MaxSim; its last
hidden states are used as token vectors as they are. Every number this module
feeds into a chapter is about that off-the-shelf use.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import minilm
from .index import PackedIndex

# Dropped by ``drop="stopwords"``: the most frequent English function words (a subset of the classic
# SMART/NLTK lists, lowercase) plus any word made of punctuation only. Small on purpose: a fixed list
# can only remove what is uninformative in every context; the learned :class:`Gate` is the rest.
STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from as into onto over under about
is are was were be been being am do does did has have had having it its it's this that these those
there here which who whom whose what when where why how not no nor so than too very can will would
shall should may might must i me my we our you your he him his she her they them their s t
""".split())


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ValueError("no texts: pass a non-empty list of strings")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be strings; pass a list of str")
    return texts


def tokenize_words(model, texts: Sequence[str], max_len: int = 128, batch_size: int = 64) -> list[dict]:
    """:func:`effnb.models.minilm.tokenize`'s batches with ``words=True`` (each token's word and each
    word's text), after checking the input: whole-word pooling and stopword removal need them."""
    texts = _check_texts(texts)
    if batch_size < 1 or max_len < 3:
        raise ValueError(f"batch_size={batch_size}, max_len={max_len}: pass batch_size >= 1 and max_len >= 3")
    return minilm.tokenize(model, texts, max_len, batch_size, words=True)


def is_stopword(word: str) -> bool:
    """True for a word of :data:`STOPWORDS` or one without a letter or digit (punctuation)."""
    return word.lower() in STOPWORDS or not any(c.isalnum() for c in word)


def _real_rows(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden states of one row's real tokens without the first and last ([CLS] and [SEP]: a BERT
    tokenizer frames every single text so, truncated or not)."""
    n = int(mask.sum())
    return hidden[1:max(n - 1, 1)]


def _pool_words(hidden: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """The mean of each word's subword vectors [words, d], words in order of first appearance
    (word ids of one row rise, so that is word-id order)."""
    ids = word_ids[word_ids >= 0]
    rows = hidden[word_ids >= 0]
    uniq, inverse = torch.unique_consecutive(ids, return_inverse=True)
    sums = torch.zeros(len(uniq), hidden.shape[1], dtype=hidden.dtype).index_add_(0, inverse, rows)
    counts = torch.bincount(inverse, minlength=len(uniq)).to(hidden.dtype)
    return sums / counts[:, None]


def token_vectors(bert, batches: list[dict], proj: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  whole_words: bool = False, tokenizer_word_ids: list[torch.Tensor] | None = None,
                  drop: "str | Gate | None" = None) -> list[torch.Tensor]:
    """One unit vector per real token (or per word) of every text, as a list of [n_i, d] fp32 tensors in
    the texts' original order (``batches`` carry ``"index"``).

    The last hidden states of tokens that are not padding and not [CLS]/[SEP] (the first and last
    real token of each row); with ``whole_words`` the subword states of each word are averaged first (word ids from
    ``batch["word_ids"]``, as :func:`tokenize_words` makes them, or ``tokenizer_word_ids``, one [B, L]
    tensor per batch); then ``proj`` (e.g. a :class:`Projection` to 32..128 dims), then L2 normalisation.
    ``drop="stopwords"`` removes the vectors of :data:`STOPWORDS` and punctuation words (needs
    ``batch["words"]``, so ``whole_words=True``); a :class:`Gate` removes the vectors it scores below its
    threshold. Removal keeps at least the best-scoring vector of a text so no document becomes empty.
    Why one function: every reduction is a step on the same rows, so they compose in any combination."""
    view = {"proj": proj, "whole_words": whole_words, "drop": drop}
    return encode_views(bert, batches, {"tokens": view}, single=False, tokenizer_word_ids=tokenizer_word_ids)["tokens"]


def _check_view(name: str, view: Mapping) -> None:
    unknown = set(view) - {"proj", "whole_words", "drop"}
    if unknown:
        raise ValueError(f"view {name!r}: unknown settings {sorted(unknown)}; use proj, whole_words and drop")
    drop = view.get("drop")
    if drop is not None and not (drop == "stopwords" or isinstance(drop, Gate)):
        raise ValueError(f"view {name!r}: drop={drop!r}: pass None, 'stopwords' or a Gate from train_gate")
    if drop == "stopwords" and not view.get("whole_words"):
        raise ValueError(f"view {name!r}: drop='stopwords' works on words: pass whole_words=True with batches "
                         "from tokenize_words")


def _row_vectors(hidden: torch.Tensor, mask: torch.Tensor, wids: torch.Tensor | None, words: list[str] | None,
                 proj=None, whole_words: bool = False, drop=None) -> torch.Tensor:
    """One text's vectors under one view (see :func:`token_vectors`)."""
    if whole_words:
        v = _pool_words(hidden, wids.masked_fill(~mask.bool(), -1))
    else:
        v = _real_rows(hidden, mask)
    v = F.normalize(proj(v) if proj is not None else v, dim=-1)
    if drop == "stopwords":
        keep = torch.tensor([not is_stopword(x) for x in words[:len(v)]], dtype=torch.bool)
        v = v[keep] if bool(keep.any()) or len(v) == 0 else v[:1]
    elif isinstance(drop, Gate):
        v = drop.prune(v)
    return v.contiguous()


def encode_views(bert, batches: list[dict], views: Mapping[str, Mapping], single: bool = True,
                 tokenizer_word_ids: list[torch.Tensor] | None = None) -> dict:
    """Several readings of ONE encoder pass: ``{name: list of [n_i, d] tensors}`` for each view (a dict of
    :func:`token_vectors`' settings ``proj``, ``whole_words``, ``drop``), plus ``"single"``, the unit
    mean-pooled sentence embeddings [n, d] (as :func:`effnb.models.minilm.encode` computes them), when
    ``single``. Why: the encoder is the expensive step; every index variant reads the same hidden states."""
    if not batches:
        raise ValueError("no batches: tokenize a non-empty list of texts first (tokenize_words or minilm.tokenize)")
    if "single" in views:
        raise ValueError("'single' names the sentence embeddings: call the view something else")
    for name, view in views.items():
        _check_view(name, view)
    needs_words = any(v.get("whole_words") for v in views.values())
    out: dict[str, dict[int, torch.Tensor]] = {name: {} for name in views}
    pooled, index = [], []
    with torch.inference_mode():
        for n, b in enumerate(batches):
            hidden = bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state.float()
            wids = tokenizer_word_ids[n] if tokenizer_word_ids is not None else b.get("word_ids")
            if needs_words and wids is None:
                raise ValueError("whole_words=True needs word ids: build the batches with tokenize_words "
                                 "(or pass tokenizer_word_ids, one [B, L] tensor per batch)")
            if any(v.get("drop") == "stopwords" for v in views.values()) and "words" not in b:
                raise ValueError("drop='stopwords' needs each word's text: build the batches with tokenize_words")
            if single:
                mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
                index += b["index"]
            for r, i in enumerate(b["index"]):
                words = b["words"][r] if "words" in b else None
                for name, view in views.items():
                    out[name][i] = _row_vectors(hidden[r], b["attention_mask"][r],
                                                wids[r] if wids is not None else None, words, **view)
    result: dict = {name: [vs[i] for i in sorted(vs)] for name, vs in out.items()}
    if single:
        result["single"] = torch.cat(pooled)[torch.argsort(torch.tensor(index))]
    return result


@dataclass(frozen=True)
class Projection:
    """``x -> x @ components``: the top ``dim`` principal directions of token vectors ([d_in, dim]).

    ColBERT learns its 768 -> 128 layer end to end with the ranking loss; the PCA of the train split's
    token vectors is the training-free stand-in. It is UNCENTRED (eigenvectors of the raw vectors'
    second moment): MaxSim scores are dot products of the vectors themselves, and the top directions
    are the ``dim``-dimensional subspace that keeps the most of their squared length (the best rank-``dim``
    reconstruction in least squares); centring would shift every dot product. At full dimension the
    map is orthogonal, so normalised vectors and MaxSim scores come out unchanged."""
    components: torch.Tensor
    explained: float = 1.0      # share of the vectors' squared norm the kept directions hold

    @classmethod
    def fit(cls, vectors: Sequence[torch.Tensor], dim: int) -> "Projection":
        """The PCA of the rows of ``vectors`` (a list of [n_i, d] tensors, e.g. :func:`token_vectors` of
        the train documents) keeping ``dim`` directions."""
        rows = [v for v in vectors if len(v)]
        if not rows:
            raise ValueError("no vectors to fit: pass token vectors of some training texts")
        x = torch.cat(rows).double()
        if not 1 <= dim <= x.shape[1]:
            raise ValueError(f"dim={dim}: pass a dimension from 1 to the vectors' {x.shape[1]}")
        energy, vecs = torch.linalg.eigh(x.T @ x)     # the [d, d] second moment: a full orthonormal basis
        energy, vecs = energy.flip(0).clamp(min=0), vecs.flip(1)   # even with fewer rows than dimensions
        return cls(vecs[:, :dim].float().contiguous(), float(energy[:dim].sum() / energy.sum()))

    @property
    def dim(self) -> int:
        return self.components.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.components.dtype) @ self.components


def project(vectors: Sequence[torch.Tensor], proj: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``proj`` applied to unit token vectors already computed, re-normalised: the same as encoding again
    with ``token_vectors(..., proj=proj)``, since a linear map and a row's length commute."""
    return [F.normalize(proj(v), dim=-1).contiguous() for v in vectors]


@dataclass(frozen=True)
class Gate:
    """ColBERTer's learned vector removal, kept tiny: ``s = sigmoid(w . v + b)``; at index time a
    document keeps the vectors with ``s >= threshold`` (and at least its best one)."""
    w: torch.Tensor
    b: float
    threshold: float = 0.5
    scale: bool = True

    def scores(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(v @ self.w + self.b)

    def prune(self, v: torch.Tensor) -> torch.Tensor:
        """The rows of ``v`` [n, d] the gate keeps (the best one when it would keep none), each scaled by
        its gate when ``scale`` (as in training, and as ColBERTer stores them)."""
        if len(v) == 0:
            return v
        s = self.scores(v)
        keep = s >= self.threshold
        if not bool(keep.any()):
            keep = s == s.max()
        return (v * s[:, None])[keep] if self.scale else v[keep]


def _pad(vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, L, d] zero-padded and the real-row mask [N, L]."""
    width = max(1, max(len(v) for v in vectors))
    d = next(v.shape[1] for v in vectors)
    out = torch.zeros(len(vectors), width, d)
    mask = torch.zeros(len(vectors), width, dtype=torch.bool)
    for i, v in enumerate(vectors):
        out[i, :len(v)], mask[i, :len(v)] = v, True
    return out, mask


def _labelled(cand: torch.Tensor, positives: Sequence[int]) -> torch.Tensor:
    """A copy of ``cand`` [Q, C] with each query's positive in column 0 (the label of a cross-entropy over
    the candidates), the other candidates after it in order, padded with the positive if too few."""
    cand = cand.clone()
    for i, p in enumerate(positives):
        others = cand[i][cand[i] != p][:cand.shape[1] - 1]
        cand[i] = torch.cat([torch.tensor([p]), others, others.new_full((cand.shape[1] - 1 - len(others),), p)])
    return cand


def _check_training(q_vectors, candidates, positives) -> torch.Tensor:
    cand = torch.as_tensor(candidates, dtype=torch.int64)
    if cand.dim() != 2 or len(cand) != len(q_vectors) or len(positives) != len(q_vectors) or not len(cand):
        raise ValueError(f"pass candidates [Q, C] and positives [Q] for the Q={len(q_vectors)} queries; "
                         f"got {tuple(cand.shape)} and {len(positives)}")
    return _labelled(cand, positives)


def train_projection(q_vectors: Sequence[torch.Tensor], doc_vectors: Sequence[torch.Tensor], candidates: torch.Tensor,
                     positives: Sequence[int], dim: int = 128, steps: int = 300, batch: int = 32, lr: float = 1e-3,
                     seed: int = 0, progress: bool = False) -> tuple[Projection, list[float]]:
    """ColBERT's linear layer (d -> ``dim``), learned with the encoder frozen: starting from the PCA of the
    candidates' vectors, Adam on the cross-entropy of re-ranking each train query's ``candidates`` [Q, C]
    (a first stage's top-C, the positive put in column 0) by MaxSim of the projected, re-normalised vectors.
    ``batch`` queries per step. Returns the :class:`Projection` (``explained`` is NaN: not a PCA) and the
    per-step losses. Why train only this layer: the encoder was trained for mean pooling, the layer can
    re-weight its directions for token matching, and it costs a few matrix products per step."""
    from ..plots import quiet_tqdm
    cand = _check_training(q_vectors, candidates, positives)
    if not 1 <= dim <= q_vectors[0].shape[1] or steps < 1 or batch < 1:
        raise ValueError(f"dim={dim}, steps={steps}, batch={batch}: pass 1 <= dim <= {q_vectors[0].shape[1]}, "
                         "steps >= 1 and batch >= 1")
    used = torch.unique(cand)
    dv, dmask = _pad([doc_vectors[i] for i in used.tolist()])       # [U, L, d], padded once
    where = torch.searchsorted(used, cand)                           # [Q, C] rows of dv
    qv, qmask = _pad(q_vectors)                                      # [Q, m, d]
    w = Projection.fit([doc_vectors[i] for i in used.tolist()], dim).components.clone().requires_grad_()
    opt = torch.optim.Adam([w], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in quiet_tqdm()(range(steps), desc="projection", leave=False, disable=not progress):
        qi = torch.randint(0, len(cand), (min(batch, len(cand)),), generator=g)
        q = F.normalize(qv[qi] @ w, dim=-1)                                      # [B, m, k]
        d = F.normalize(dv[where[qi]] @ w, dim=-1)                               # [B, C, L, k]
        s = torch.einsum("bmk,bclk->bcml", q, d).masked_fill(~dmask[where[qi]][:, :, None, :], -1e4).amax(-1)
        score = (s * qmask[qi][:, None, :]).sum(-1)                              # [B, C]
        loss = F.cross_entropy(score, torch.zeros(len(qi), dtype=torch.int64))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return Projection(w.detach().contiguous(), float("nan")), losses


def train_gate(q_vectors: Sequence[torch.Tensor], doc_vectors: Sequence[torch.Tensor], candidates: torch.Tensor,
               positives: Sequence[int], steps: int = 100, l1: float = 0.2, lr: float = 0.01,
               threshold: float = 0.5, seed: int = 0) -> tuple[Gate, list[float]]:
    """Fit a :class:`Gate` on train queries: ``candidates`` [Q, C] document numbers per query (a first
    stage's top-C; each query's positive is put in if missing), ``positives`` the relevant document of each.

    Loss: the cross-entropy of re-ranking the candidates by MaxSim with GATED document vectors
    (``s_j * v_j``), positive as the label, plus ``l1`` times the mean gate (the push to remove). The
    query-document dot products do not depend on the gate, so they are computed once and the few hundred
    Adam steps only touch ``[Q, C, m, L]`` sums: seconds on a CPU. Returns the gate and per-step losses.
    The defaults stop early on purpose: with tens of train queries the gate has more weights (d + 1)
    than the ranking constrains, and longer or faster training lowers the train loss while test
    re-ranking gets worse (the gate turns into a query-set-specific re-weighting)."""
    cand = _check_training(q_vectors, candidates, positives)
    used = torch.unique(cand)
    dv, dmask = _pad([doc_vectors[i] for i in used.tolist()])       # [U, L, d]
    where = torch.searchsorted(used, cand)                           # [Q, C] rows of dv
    qv, qmask = _pad(q_vectors)                                      # [Q, m, d]
    sims = torch.einsum("qmd,qcld->qcml", qv, dv[where])             # fixed: [Q, C, m, L]
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(dv.shape[2], generator=g)).requires_grad_()
    b = torch.tensor(2.0, requires_grad=True)                        # start open: keep everything
    opt = torch.optim.Adam([w, b], lr=lr)
    losses = []
    for _ in range(steps):
        gates = torch.sigmoid(dv @ w + b)                            # [U, L]
        gc = gates[where]                                            # [Q, C, L]
        s = (sims * gc[:, :, None, :]).masked_fill(~dmask[where][:, :, None, :], -1e4).amax(-1)  # [Q, C, m]
        score = (s * qmask[:, None, :]).sum(-1)                      # [Q, C]
        ce = F.cross_entropy(score, torch.zeros(len(score), dtype=torch.int64))
        loss = ce + l1 * gates[dmask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return Gate(w.detach().clone(), float(b.detach()), threshold), losses


def build_index(vectors: Sequence[torch.Tensor], dtype: str = "fp32") -> PackedIndex:
    """The packed index of per-document vectors (``"fp32"`` or ``"int8"``), what :func:`~.ops.maxsim` reads."""
    vectors = list(vectors)
    if not vectors:
        raise ValueError("no documents: pass token_vectors(...) of a non-empty list of texts")
    return PackedIndex.from_list(vectors, dtype)


def plain_bytes(n_vectors: int, n_docs: int, dim: int = 384) -> int:
    """Bytes of a plain fp32 multi-vector index (every real token, ``dim`` dims) with these counts."""
    return 4 * n_vectors * dim + 8 * (n_docs + 1)


def storage_table(indexes: Mapping[str, PackedIndex], baseline: str | None = None):
    """Per index: documents, vectors per document, dims, dtype, bytes per document, and how many times
    smaller than ``baseline`` (default: the first entry, meant to be plain fp32 at 384 dims, every
    token) it is, as a pandas DataFrame. Why: the storage claims are ratios to that plain index."""
    import pandas as pd
    if not indexes:
        raise ValueError("no indexes: pass {name: PackedIndex}")
    base = baseline if baseline is not None else next(iter(indexes))
    if base not in indexes:
        raise ValueError(f"baseline {base!r} is not one of {list(indexes)}")
    rows = {}
    for name, ix in indexes.items():
        rows[name] = {"docs": ix.num_docs, "vectors/doc": ix.vectors.shape[0] / max(ix.num_docs, 1),
                      "dims": ix.dim, "dtype": ix.dtype, "bytes/doc": ix.nbytes / max(ix.num_docs, 1),
                      "x smaller": indexes[base].nbytes / ix.nbytes}
    return pd.DataFrame.from_dict(rows, orient="index")
