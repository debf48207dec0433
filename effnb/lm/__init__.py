"""Language models offline, shared by every chapter about them.

Why: most seed papers left are about language models, and a claim about one
needs a real pretrained model, small models we can train, and text, all on
the machine already. This package has them: a pinned, snapshotted corpus
(:mod:`.corpus`), one Llama-style module (:mod:`.model`), SmolLM2-135M loaded
from the GGUF file a pip package ships (:mod:`.smollm2`), tiny byte-level
models (:mod:`.bytelm`, trained by :mod:`.train`), generation and
perplexity (:mod:`.generate`) and the speed race against transformers
(:mod:`.benchmarks`).

    from effnb import lm
    from effnb.lm.generate import generate
    model, tok = lm.load("smollm2-135m")
    ids = generate(model, tok.encode("The capital of France is"), 8)
"""
from __future__ import annotations

MODELS = ("smollm2-135m", "byte-xs", "byte-s")


def load(name: str):
    """``(model, tokenizer)`` for one of :data:`MODELS`, built offline from what is installed."""
    if name == "smollm2-135m":
        from . import smollm2
        return smollm2.load(name)
    if name in ("byte-xs", "byte-s"):
        from . import bytelm
        return bytelm.load(name)
    raise ValueError(f"unknown model {name!r}; effnb.lm knows {', '.join(MODELS)}")

