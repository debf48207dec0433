"""Chapter 01's technique family: count the work, measure the time, model it.

* :mod:`.counts`: FLOPs and compulsory bytes of GEMM, GEMV, convolution and
  STREAM triad; their ratio places a kernel on the roofline.
* :mod:`.workloads`: those kernels in torch, timed against the machine's
  limits, and the 1x1 vs depthwise 3x3 convolution race.
* :mod:`.runtime_model`: generation latency of the tiny decoder
  (:mod:`effnb.models.tiny_decoder`, re-exported here) on a grid of lengths,
  and the idealized-runtime fit judged on held-out lengths.
* :mod:`.guards`: the checks that turn a broken timing into "invalid measurement"
  and the sentences whose direction follows from the data.
* :mod:`.block`, :mod:`.ops`, :mod:`.fusion`: the MobileNetV2 inverted-residual
  block (weights, plain reference, torch's eager block), our fused and unfused
  C++ kernels (family ``fused``) and their race.
* :mod:`.autotune`: the fused kernel's configuration space, measured
  exhaustively, and searched with a surrogate (Bayesian optimisation) and at random.
* :mod:`.plots`: the chapter's figures; :mod:`.tables`: its tables, with units, as the page shows them.
"""
from ..models.tiny_decoder import flops_per_token, generate, generate_nocache, tiny_decoder
from . import autotune, ops, tables
from .block import MOBILENET_V2, IRBlock, block_counts, eager, make_block, parse, reference, reference_nhwc
from .counts import FP32, conv2d_counts, gemm_counts, gemv_counts, triad_counts
from .fusion import (block_benchmark, cache_sizes, compare_phrase, default_tile_rows, fusion_finding, fusion_table,
                     fusion_trend, fusion_validity, race_points, stack_gain)
from .guards import (Contention, caveat, combine, conv_validity, dw_phrase, finding, gemm_trend, generation_validity,
                     over_roof, series_validity, settle_roofs)
from .plots import plot_fusion, plot_race, plot_roofline, plot_runtime_fit, plot_search
from .runtime_model import RuntimeModel, fit_finding, fit_runtime, length_grid, mape, measure_generation
from .workloads import (Workload, conv, conv_benchmark, conv_pairs, depthwise_fraction, gemm, gemv,
                        measure_workloads, place, suite, torch_backend, triad)

__all__ = [
    # counting and the torch workloads
    "FP32", "gemm_counts", "gemv_counts", "conv2d_counts", "triad_counts", "Workload", "torch_backend", "gemm",
    "gemv", "conv", "triad", "suite", "measure_workloads", "place", "conv_benchmark", "conv_pairs",
    "depthwise_fraction",
    # the runtime model
    "tiny_decoder", "flops_per_token", "generate", "generate_nocache", "length_grid", "measure_generation",
    "RuntimeModel", "fit_runtime", "mape", "fit_finding",
    # guards and the sentences that follow from them
    "Contention", "combine", "caveat", "finding", "series_validity", "conv_validity", "dw_phrase",
    "generation_validity", "gemm_trend", "over_roof", "settle_roofs",
    # the fused block, its race and its tuning
    "MOBILENET_V2", "IRBlock", "parse", "make_block", "reference", "reference_nhwc", "eager", "block_counts", "ops",
    "block_benchmark", "default_tile_rows", "fusion_table", "stack_gain", "fusion_validity", "compare_phrase",
    "fusion_finding", "fusion_trend", "race_points", "cache_sizes", "autotune",
    # figures and tables
    "plot_roofline", "plot_runtime_fit", "plot_race", "plot_fusion", "plot_search", "tables"]
