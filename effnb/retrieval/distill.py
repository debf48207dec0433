"""A shallower MiniLM query encoder trained by Margin-MSE to copy a teacher's score margins.

Hofstätter et al.'s Margin-MSE trains a student so that ``score(q, pos) - score(q, neg)``
matches the teacher's margin on the same triple. It only needs the teacher's
MARGINS, not its score scale, which is why it works across architectures (a
cross-encoder or a late-interaction teacher, a bi-encoder student). Here the
student is MiniLM with some encoder layers removed (DistilBERT-style: initialised
from the teacher's own layers) that encodes the QUERIES only, scored by the dot
product with the teacher's document embeddings (the index is built offline, once);
the teacher is any scorer of (query, documents). Two controls train the same
student on the labels alone or on the teacher's query vectors.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Teacher = Callable[[int, torch.Tensor], torch.Tensor]   # (query number, document numbers) -> scores


def student_from(bert, layers: Sequence[int] = (0, 2, 4)):
    """A deep copy of ``bert`` keeping only the encoder ``layers`` (in the order given), embeddings and
    pooler included. Why copy the teacher's layers: a student that starts as a subset of the teacher
    starts close to it (DistilBERT's initialisation), so a short distillation is enough."""
    n = len(bert.encoder.layer)
    layers = list(layers)
    if not layers or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n for i in layers):
        raise ValueError(f"layers={layers}: pass a non-empty list of layer numbers from 0 to {n - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers={layers} repeats a layer: pass each layer number once")
    student = copy.deepcopy(bert)
    student.encoder.layer = torch.nn.ModuleList([student.encoder.layer[i] for i in layers])
    for new, layer in enumerate(student.encoder.layer):     # attention modules remember their position
        for mod in layer.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new
    student.config.num_hidden_layers = len(layers)
    return student


@dataclass
class Triples:
    """Training triples (query, positive, hard negative) as document/query numbers, with the teacher's
    margin ``score(q, pos) - score(q, neg)`` for each."""
    query: torch.Tensor      # [N] int64
    pos: torch.Tensor        # [N] int64
    neg: torch.Tensor        # [N] int64
    margin: torch.Tensor     # [N] fp32

    def __len__(self) -> int:
        return len(self.query)


def triples(task, qemb: torch.Tensor, demb: torch.Tensor, negatives: int = 4,
            teacher: Teacher | None = None) -> Triples:
    """For each query of ``task`` (a :class:`~effnb.data.stdlib_tasks.RetrievalTask`, e.g. the train split)
    and each of its relevant documents: ``negatives`` hard negatives, the teacher's single-vector top
    documents that are not relevant, and the margins. ``qemb`` and ``demb`` are the teacher's unit
    embeddings of ``task.queries`` and ``task.docs`` (e.g. ``encode_views(...)["single"]``). ``teacher``
    scores (query number, document numbers); by default the teacher's single-vector cosine, or pass e.g. a
    MaxSim scorer for a cross-architecture teacher."""
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        raise ValueError(f"negatives={negatives!r}: pass a whole number >= 1")
    if not task.queries:
        raise ValueError("the task has no queries: pass a retrieval task with some")
    if negatives >= len(task.docs):
        raise ValueError(f"negatives={negatives} but the corpus has {len(task.docs)} documents: pass fewer")
    if qemb.dim() != 2 or demb.dim() != 2 or len(qemb) != len(task.queries) or len(demb) != len(task.docs):
        raise ValueError(f"pass the teacher's embeddings of task.queries [{len(task.queries)}, d] and task.docs "
                         f"[{len(task.docs)}, d]; got {tuple(qemb.shape)} and {tuple(demb.shape)}")
    scores = qemb @ demb.T
    if teacher is None:
        def teacher(i: int, d: torch.Tensor) -> torch.Tensor:
            return scores[i, d]
    rows: list[tuple[int, int, int, float]] = []
    for i, rel in enumerate(task.relevant):
        ranked = torch.topk(scores[i], min(len(task.docs), negatives + len(rel))).indices.tolist()
        negs = [d for d in ranked if d not in rel][:negatives]
        for p in sorted(rel):
            s = teacher(i, torch.tensor([p] + negs)).float()
            rows += [(i, p, n, float(s[0] - s[j + 1])) for j, n in enumerate(negs)]
    q, p, n, m = zip(*rows)
    return Triples(torch.tensor(q), torch.tensor(p), torch.tensor(n), torch.tensor(m, dtype=torch.float32))


LOSSES = ("margin-mse", "labels", "embedding")


def _embed(bert, tokenizer, texts: list[str], max_len: int) -> torch.Tensor:
    """Unit mean-pooled embeddings with gradients (the student's bi-encoder view)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


def query_loss(student, tokenizer, queries: Sequence[str], doc_emb: torch.Tensor, batch: Triples,
               loss: str = "margin-mse", teacher_qemb: torch.Tensor | None = None, max_len: int = 32,
               temperature: float = 0.05) -> torch.Tensor:
    """One batch's loss for a query encoder scored against FIXED document embeddings ``doc_emb`` (the
    teacher's index). ``"margin-mse"``: mean of ``((s(q,pos) - s(q,neg)) - teacher margin)^2`` with s the
    cosine of the student's query and the teacher's document. ``"labels"``: the pairwise logistic loss
    ``softplus(-(s(q,pos) - s(q,neg)) / temperature)``, the relevance labels alone (no teacher). ``"embedding"``:
    one minus the cosine to the teacher's own query embedding ``teacher_qemb`` (copying the vector, not
    the ranking). Each distinct query is encoded once per batch."""
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}: pass one of {LOSSES}")
    if loss == "embedding" and teacher_qemb is None:
        raise ValueError("loss='embedding' copies the teacher's query vectors: pass teacher_qemb")
    ids = sorted(set(batch.query.tolist()))
    emb = _embed(student, tokenizer, [queries[i] for i in ids], max_len)
    if loss == "embedding":
        return (1 - (emb * teacher_qemb[ids]).sum(-1)).mean()
    at = {i: k for k, i in enumerate(ids)}
    q = emb[[at[i] for i in batch.query.tolist()]]
    margin = (q * doc_emb[batch.pos]).sum(-1) - (q * doc_emb[batch.neg]).sum(-1)
    if loss == "margin-mse":
        return F.mse_loss(margin, batch.margin)
    return F.softplus(-margin / temperature).mean()


def train_query_encoder(student, triples_: Triples, tokenizer, queries: Sequence[str], doc_emb: torch.Tensor,
                        loss: str = "margin-mse", teacher_qemb: torch.Tensor | None = None, epochs: int = 3,
                        batch_size: int = 16, lr: float = 1e-4, max_len: int = 32, seed: int = 0,
                        progress: bool = True) -> list[float]:
    """Train ``student`` in place as a QUERY encoder against the teacher's fixed document embeddings
    ``doc_emb`` (see :func:`query_loss` for ``loss``), AdamW, ``epochs`` shuffled passes over the queries,
    ``batch_size`` queries per step with all of their triples (each query is encoded once per step, however
    many negatives it has); returns the loss of every step and leaves the student in eval mode.

    Why only the query side: the index is built once, offline, by the teacher; what a user waits for
    is the query's encoding, so that is the network to make small. It also makes training cheap (short
    queries only), and the student's scores stay on the teacher's scale. Why Margin-MSE: only the
    order of the documents and how far apart they are has to match the teacher's."""
    from ..plots import quiet_tqdm
    tr = triples_
    if len(tr) == 0:
        raise ValueError("no triples: pass triples(...) of a task with queries")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}: pass whole numbers >= 1")
    if doc_emb.dim() != 2 or int(max(tr.pos.max(), tr.neg.max())) >= len(doc_emb):
        raise ValueError(f"doc_emb {tuple(doc_emb.shape)} must hold a row for every document of the triples")
    query_loss(student, tokenizer, queries, doc_emb, Triples(tr.query[:1], tr.pos[:1], tr.neg[:1], tr.margin[:1]),
               loss, teacher_qemb, max_len)       # bad settings fail here, before any step
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    losses = []
    queries_ = torch.unique(tr.query)
    bar = quiet_tqdm()(total=epochs * -(-len(queries_) // batch_size), desc=f"query encoder ({loss})", leave=False,
                       disable=not progress)
    for _ in range(epochs):
        order = queries_[torch.randperm(len(queries_), generator=g)]
        for s in range(0, len(order), batch_size):
            idx = torch.isin(tr.query, order[s:s + batch_size]).nonzero().flatten()
            batch = Triples(tr.query[idx], tr.pos[idx], tr.neg[idx], tr.margin[idx])
            value = query_loss(student, tokenizer, queries, doc_emb, batch, loss, teacher_qemb, max_len)
            opt.zero_grad()
            value.backward()
            opt.step()
            losses.append(float(value.detach()))
            bar.update(1)
    bar.close()
    student.eval()
    return losses
