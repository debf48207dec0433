"""Chapter 05's experiments: what factorizing and pruning MiniLM cost in accuracy and buy in size and time.

Every variant of the encoder is scored the same way: a linear probe (logistic
regression on its sentence embeddings, refitted per variant: the probe is part
of the task, not of the encoder) for the library-topic classification, cosine
search for the docstring retrieval, and the encoder's own time on pre-tokenized
batches (the tokenizer costs the same for every variant and is left out).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import minilm
from .factorize import param_bytes


@dataclass
class Split:
    texts: list
    batches: list
    labels: torch.Tensor


@dataclass
class Bench:
    """The tasks, tokenized once for every variant of one encoder."""
    model: object                # the SentenceTransformer (its tokenizer)
    labels: list
    splits: dict = field(default_factory=dict)
    retrieval: object = None     # an effnb.data.stdlib_tasks retrieval task
    q_batches: list = None
    d_batches: list = None


def prepare(model, task, retrieval=None, max_len: int = 128, limit: dict | None = None, batch_size: int = 64,
            seed: int = 0, doc_len: int | None = None) -> Bench:
    """Tokenize the classification splits (``limit`` caps examples per split, chosen with ``seed``)
    and the retrieval queries and documents (documents cut at ``doc_len`` tokens, default ``max_len``)."""
    import random
    b = Bench(model, list(task.labels))
    for name in ("train", "val", "test"):
        rows = list(getattr(task, name))
        cap = (limit or {}).get(name)
        if cap is not None and cap < len(rows):
            rows = random.Random(seed).sample(rows, cap)
        texts, labels = [t for t, _ in rows], [y for _, y in rows]
        b.splits[name] = Split(texts, minilm.tokenize(model, texts, max_len, batch_size), torch.tensor(labels))
    if retrieval is not None:
        b.retrieval = retrieval
        b.q_batches = minilm.tokenize(model, retrieval.queries, max_len, batch_size)
        b.d_batches = minilm.tokenize(model, retrieval.docs, doc_len or max_len, batch_size)
    return b


def fit_probe(emb: torch.Tensor, labels: torch.Tensor, classes: int, c: float = 10.0) -> torch.nn.Linear:
    """A multinomial logistic regression on the embeddings (scikit-learn, lbfgs) as a torch layer."""
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(C=c, max_iter=2000).fit(emb.numpy(), labels.numpy())
    lin = torch.nn.Linear(emb.shape[1], classes)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.fill_(-1e4)  # a class absent from training is never predicted
        lin.weight[clf.classes_] = torch.tensor(clf.coef_, dtype=torch.float32)
        lin.bias[clf.classes_] = torch.tensor(clf.intercept_, dtype=torch.float32)
    return lin.requires_grad_(False)


def correct(bert, b: Bench, split: str = "val") -> torch.Tensor:
    """1.0 where the probe (fitted on train embeddings of the same encoder) is right on ``split``:
    per example, so two encoders can be compared by a paired test."""
    probe = fit_probe(minilm.encode(bert, b.splits["train"].batches), b.splits["train"].labels, len(b.labels))
    pred = probe(minilm.encode(bert, b.splits[split].batches)).argmax(1)
    return (pred == b.splits[split].labels).float()


def accuracy(bert, b: Bench, split: str = "val") -> float:
    """Probe accuracy (%) on ``split``."""
    return 100.0 * float(correct(bert, b, split).mean())


def spectrum(bert):
    """For every linear of every layer: the share of sum(S^2) kept at each rank (one row per rank)."""
    import pandas as pd
    from .factorize import MODULES, _get
    rows = []
    for i, layer in enumerate(bert.encoder.layer):
        for name, path in MODULES.items():
            s2 = torch.linalg.svdvals(_get(layer, path).weight.detach().double()) ** 2
            energy = torch.cumsum(s2, 0) / s2.sum()
            full = len(s2)
            rows += [{"layer": i, "module": name, "rank": r + 1, "rank fraction": (r + 1) / full,
                      "energy": float(energy[r])} for r in range(full)]
    return pd.DataFrame(rows)


def probe_loss(bert, b: Bench):
    """The task loss for gate importances: cross-entropy of the full encoder's probe on train batches."""
    probe = fit_probe(minilm.encode(bert, b.splits["train"].batches), b.splits["train"].labels, len(b.labels))
    labels = b.splits["train"].labels

    def loss(emb, batch):
        return torch.nn.functional.cross_entropy(probe(emb), labels[batch["index"]], reduction="sum")
    return loss


def retrieval_quality(bert, b: Bench) -> dict:
    """MRR@10, nDCG@10 and recall@100 of cosine search with this encoder's embeddings."""
    from ..data import ranking
    q = minilm.encode(bert, b.q_batches)
    d = minilm.encode(bert, b.d_batches)
    return ranking.evaluate(q @ d.T, b.retrieval.relevant)


def scoreboard(variants: dict, b: Bench, base: str, retrieval_of=()) -> tuple:
    """Test accuracy (probe refitted per encoder), size and, for the keys in ``retrieval_of``, retrieval
    quality of each encoder in ``variants`` (name -> module); also each one's per-example correctness,
    for paired tests against ``base``."""
    import pandas as pd
    rows, right = [], {}
    for name, mod in variants.items():
        right[name] = correct(mod, b, "test")
        row = {"encoder": name, "MB (all)": param_mb(mod), "MB (layers)": layers_mb(mod),
               "test accuracy %": 100.0 * float(right[name].mean())}
        if name in retrieval_of and b.retrieval is not None:
            q = retrieval_quality(mod, b)
            row.update({k: q[k] for k in ("nDCG@10", "MRR@10", "recall@100")})
        rows.append(row)
    df = pd.DataFrame(rows)
    ref = df.set_index("encoder").loc[base]
    df.insert(2, "x smaller", ref["MB (all)"] / df["MB (all)"])
    df["vs " + base + " (points)"] = df["test accuracy %"] - ref["test accuracy %"]
    return df, right


def param_mb(module) -> float:
    """Stored parameters in MB (fp32): embeddings included, the size a user ships."""
    return param_bytes(module, buffers=False) / 1e6


def layers_mb(bert) -> float:
    """Parameters of the transformer layers only (MB): what pruning heads and neurons can shrink."""
    return sum(p.numel() * p.element_size() for p in bert.encoder.parameters()) / 1e6
