"""Chapter 01's technique family: count the work, measure the time, model it.

* :mod:`.counts`: FLOPs and compulsory bytes of GEMM, GEMV, convolution and
  STREAM triad; their ratio places a kernel on the roofline.
* :mod:`.workloads`: those kernels in torch, timed against the machine's
  limits, and the 1x1 vs depthwise 3x3 convolution race.
* :mod:`.runtime_model`: generation latency of the tiny decoder
  (:mod:`effnb.models.tiny_decoder`, re-exported here) on a grid of lengths,
  and the idealized-runtime fit judged on held-out lengths.
* :mod:`.plots`: the roofline and runtime-fit figures.
"""
from ..models.tiny_decoder import flops_per_token, generate, generate_nocache, tiny_decoder
from .counts import FP32, conv2d_counts, gemm_counts, gemv_counts, triad_counts
from .plots import plot_roofline, plot_runtime_fit
from .runtime_model import RuntimeModel, fit_runtime, length_grid, mape, measure_generation
from .workloads import (Workload, conv, conv_benchmark, conv_pairs, depthwise_fraction, gemm, gemv,
                        measure_workloads, suite, torch_backend, triad)

__all__ = ["FP32", "gemm_counts", "gemv_counts", "conv2d_counts", "triad_counts", "Workload", "torch_backend",
           "gemm", "gemv", "conv", "triad", "suite", "measure_workloads", "conv_benchmark", "conv_pairs",
           "depthwise_fraction", "tiny_decoder", "flops_per_token", "generate", "generate_nocache", "length_grid",
           "measure_generation", "RuntimeModel", "fit_runtime", "mape", "plot_roofline", "plot_runtime_fit"]
