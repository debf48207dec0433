"""Chapter 14's technique family: adaptive computation (spend compute where the input needs it).

:mod:`.contextual` and :mod:`.sirius`: contextual sparsity in SmolLM2's FFNs,
corrected by the full model; :mod:`.entropy`: switching between a small and a
large model on the small one's entropy, and speculative decoding;
:mod:`.exit_head`: a small model cut from SmolLM2 itself (its first blocks
and a trained exit head, weights committed under ``weights/``);
:mod:`.cascades`: early-exit cascades of ensembles and selective automation;
:mod:`.ops`: the CATS sparse-activation FFN kernel (C++ family ``adaptive``).
"""
