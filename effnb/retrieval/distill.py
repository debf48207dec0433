"""A shallower MiniLM student trained by Margin-MSE to copy a teacher's score margins.

Hofstätter et al.'s Margin-MSE trains a student so that ``score(q, pos) - score(q, neg)``
matches the teacher's margin on the same triple. It only needs the teacher's
MARGINS, not its score scale, which is why it works across architectures (a
cross-encoder or a late-interaction teacher, a bi-encoder student). Here the
student is MiniLM with some encoder layers removed (DistilBERT-style: initialised
from the teacher's own layers), scored as a bi-encoder (dot product of unit
mean-pooled embeddings); the teacher is any scorer of (query, documents).
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


def triples(task, bert_teacher, query_batches: list[dict], doc_batches: list[dict], negatives: int = 4,
            teacher: Teacher | None = None) -> Triples:
    """For each query of ``task`` (a :class:`~effnb.data.stdlib_tasks.RetrievalTask`, e.g. the train split)
    and each of its relevant documents: ``negatives`` hard negatives, the teacher's single-vector top
    documents that are not relevant, and the margins. ``teacher`` scores (query number, document numbers);
    by default the teacher's single-vector cosine, or pass e.g. a MaxSim scorer for a cross-architecture
    teacher. The batches are the tokenized ``task.queries`` and ``task.docs``."""
    from ..models import minilm
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        raise ValueError(f"negatives={negatives!r}: pass a whole number >= 1")
    if not task.queries:
        raise ValueError("the task has no queries: pass a retrieval task with some")
    if negatives >= len(task.docs):
        raise ValueError(f"negatives={negatives} but the corpus has {len(task.docs)} documents: pass fewer")
    qemb, demb = minilm.encode(bert_teacher, query_batches), minilm.encode(bert_teacher, doc_batches)
    if len(qemb) != len(task.queries) or len(demb) != len(task.docs):
        raise ValueError("the batches must tokenize task.queries and task.docs (same counts, same order)")
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


def _embed(bert, tokenizer, texts: list[str], max_len: int) -> torch.Tensor:
    """Unit mean-pooled embeddings with gradients (the student's bi-encoder view)."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    hidden = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)


def margin_loss(student, tokenizer, queries: Sequence[str], docs: Sequence[str], batch: Triples,
                max_len: int = 128) -> torch.Tensor:
    """Margin-MSE of one batch: mean of ``((s(q,pos) - s(q,neg)) - teacher margin)^2``, s the student's
    cosine. Each distinct text is encoded once per batch."""
    texts = sorted({queries[i] for i in batch.query.tolist()} | {docs[i] for i in batch.pos.tolist()}
                   | {docs[i] for i in batch.neg.tolist()})
    emb = _embed(student, tokenizer, texts, max_len)
    at = {t: k for k, t in enumerate(texts)}
    q = emb[[at[queries[i]] for i in batch.query.tolist()]]
    pos = emb[[at[docs[i]] for i in batch.pos.tolist()]]
    neg = emb[[at[docs[i]] for i in batch.neg.tolist()]]
    return F.mse_loss((q * pos).sum(-1) - (q * neg).sum(-1), batch.margin)


def margin_mse(student, teacher_margins: Triples, tokenizer, queries: Sequence[str], docs: Sequence[str],
               epochs: int = 2, batch_size: int = 16, lr: float = 3e-5, max_len: int = 128, seed: int = 0,
               progress: bool = True) -> list[float]:
    """Train ``student`` in place with Margin-MSE on ``teacher_margins`` (from :func:`triples`), AdamW,
    ``epochs`` shuffled passes of ``batch_size`` triples; returns the loss of every step. The student is
    left in eval mode. Why the margin and not the score: the student's scores may live on any scale;
    only the order, and how far apart documents are, has to match the teacher's."""
    from ..plots import quiet_tqdm
    tr = teacher_margins
    if len(tr) == 0:
        raise ValueError("no triples: pass triples(...) of a task with queries")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs}, batch_size={batch_size}: pass whole numbers >= 1")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    losses = []
    steps = epochs * -(-len(tr) // batch_size)
    bar = quiet_tqdm()(total=steps, desc="Margin-MSE", leave=False, disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(tr), generator=g)
        for s in range(0, len(tr), batch_size):
            idx = order[s:s + batch_size]
            batch = Triples(tr.query[idx], tr.pos[idx], tr.neg[idx], tr.margin[idx])
            loss = margin_loss(student, tokenizer, queries, docs, batch, max_len)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            bar.update(1)
    bar.close()
    student.eval()
    return losses
