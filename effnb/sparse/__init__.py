"""Weight sparsity that pays: sparse layouts, their kernels, pruning and the chapter-04 experiments.

A pruned weight only saves time if a kernel skips the zeros *and* reads fewer
bytes than the dense one. :func:`sparsify` turns a dense weight into one of
three layouts the C++ kernels in ``kernels/sparse/sparse.cpp`` understand:

* ``"unstructured"``: CSR (row pointer int32, column index uint16 when the
  layer has at most 65536 inputs, else int32; fp32 values), plus, where it
  reads fewer bytes, the vector kernel's column blocks (8 nonzeros share a
  uint16 base column and store uint8 offsets from it: 5.25 bytes a nonzero);
* ``"1x4"``: groups of four output rows share one column pattern
  (SparseByteNN's fine-grained group sparsity), values stored 4 per column;
* ``"dense"``: no zeros skipped, the weight packed ``[ceil(N/4), K, 4]`` for the
  dense kernel that runs *the same loops* as the 1x4 one.

Modules: ``formats`` (layouts, magnitude masks), ``reference`` (what the
kernels must compute), ``ops`` (schemas, fake kernels, the kernel call and
:func:`backend`), ``layers`` (Linear and 1x1 conv on sparse weights),
``pruning`` and ``training`` (gradual pruning of a digits CNN), ``experiments``
(Sparse-IFT, Random Search, paired tests), ``benchmarks`` (the chapter's
:mod:`effnb.perf` specs and the checks that their timings measured the work),
``plots`` and ``words`` (prose whose direction comes from a measurement).
"""
from . import ops, words
from .benchmarks import (MOBILENET_1X1, LinearCase, break_even, break_even_table, by_case, bytes_of,
                         cnn_latency_benchmark, conv_benchmark, conv_validity, group_benchmark, linear_benchmark,
                         measured_the_work, roof_pct, same_predictions, sparse_twin)
from .experiments import (CONFIDENCE, CONVERGED, MaskedMLP, epochs_to_reach, iso_flop_sparsities, node_mask_mlp,
                          one_sided_p, paired_test, prune_regrow, random_search_trial, sparse_ift_trial,
                          superiority_power)
from .formats import PATTERNS, SparseWeight, index_bytes, magnitude_mask, sparsify
from .layers import SparseConv1x1, SparseLinear, conv1x1, is_pointwise, linear, prunable, sparsify_module
from .ops import OPS, available, backend, matmul
from .plots import plot_speedups, plot_tradeoff, plot_trials
from .pruning import apply_masks, gradual_sparsity, prune_masks
from .training import (PRUNE_END, accuracies, accuracy, accuracy_summary, accuracy_vs_sparsity, digits, digits_cnn,
                       train, train_pruned)

__all__ = [
    "ops", "words", "PATTERNS", "index_bytes", "OPS", "SparseWeight", "sparsify", "magnitude_mask", "available", "backend", "matmul",
    "linear", "conv1x1", "SparseLinear", "SparseConv1x1", "is_pointwise", "prunable", "sparsify_module",
    "gradual_sparsity", "prune_masks", "apply_masks",
    "digits", "digits_cnn", "accuracy", "train", "train_pruned", "PRUNE_END", "accuracy_vs_sparsity", "accuracy_summary",
    "accuracies",
    "MaskedMLP", "iso_flop_sparsities", "prune_regrow", "sparse_ift_trial", "node_mask_mlp", "epochs_to_reach",
    "random_search_trial", "paired_test", "one_sided_p", "superiority_power", "CONFIDENCE", "CONVERGED",
    "MOBILENET_1X1", "LinearCase", "linear_benchmark", "conv_benchmark", "group_benchmark", "cnn_latency_benchmark",
    "sparse_twin", "same_predictions", "by_case", "break_even", "break_even_table", "roof_pct", "bytes_of",
    "measured_the_work", "conv_validity",
    "plot_speedups", "plot_tradeoff", "plot_trials",
]
