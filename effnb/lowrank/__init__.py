"""Making an encoder's matrices smaller: low rank, Linformer, physical pruning, hard attention (chapter 05).

Why: Greenformers claims the Low-Rank Transformer (every linear ``W ~ U V`` at rank r) suits sequences up
to 512 tokens and Linformer (keys and values projected along the sequence to length k) longer ones.
This package builds both on the real pretrained MiniLM-L6 encoder, races them
(:func:`~.crossover.layer_race`) and counts their FLOPs and attention memory, so the chapter can put the
measured crossover beside the counted one and the paper's 512.

:mod:`.prune` removes heads and FFN neurons physically (ranked by gradient importance, stopped by a
validation metric, then distilled back); :mod:`.hard_attention` keeps each query's top-k keys;
:mod:`.experiments` scores every variant on the standard-library tasks and races them; :mod:`.plots`
draws the chapter's figures.

Importing it registers ``"linformer"`` as a transformers attention implementation (and its mask builder).
"""
from .crossover import PAPER_N, VARIANTS, counted_crossover, crossover, flops, layer_race, memory
from .factorize import (FactorizedEmbedding, FactorizedLinear, factorize_embeddings, factorize_model,
                        param_bytes, param_count, rank_for_energy, relative_error, worth_factorizing)
from .linformer import attention_error, key_keep, linformer_attention, linformer_model, random_projections

__all__ = ["PAPER_N", "VARIANTS", "FactorizedEmbedding", "FactorizedLinear", "attention_error",
           "counted_crossover", "crossover", "factorize_embeddings", "factorize_model", "flops", "key_keep",
           "layer_race", "linformer_attention", "linformer_model", "memory", "param_bytes", "param_count",
           "random_projections", "rank_for_energy", "relative_error", "worth_factorizing"]
