"""Efficient attention (chapter 09; chapter 10 builds on it): attention that reads less.

:mod:`.routing`: Routing Transformer attention (spherical k-means per head, a
counting sort by cluster, dense attention inside each cluster); :mod:`.decode`:
decoding SmolLM2 against a long KV cache, where the time goes, and block top-k
decode attention; :mod:`.contrastive`: PamC's meta-node contrastive loss for
graph clustering against the pairwise loss; :mod:`.peers`: SDPA, a naive
softmax and FlexAttention; :mod:`.ops`: the C++ kernels (family
``attention``), :mod:`.reference`: their plain torch references;
:mod:`.experiments`: the chapter's races and studies.
"""
