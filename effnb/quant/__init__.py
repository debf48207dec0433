"""Weight-only and integer quantization of linear layers (chapter 02).

Why: at batch 1 a linear layer reads every weight once and does two FLOPs
with it, so its time is the weight bytes over the memory bandwidth. Storing
weights in 8 or 4 bits cuts those bytes 4x or ~7x, if unpacking them costs
less than the memory saves. This package packs weights, runs the C++ kernels
(``kernels/quant/quant.cpp``) and keeps a plain torch reference for every one of them.

Schemes are short strings: ``"w8a16"``, ``"w8a8"``, ``"w4a16-g64"``,
``"w4a8-g128"``, optionally ``-asym`` (int4 only: a zero point per group;
the default is symmetric). ``w4a16`` without a group is per output channel.
Chapter 03 adds ``"w2a8-ternary"`` and ``"w1a4-binary"``.

* ``w8``: int8 per output channel, ``W = s[n] * q[n, k]``, q in [-127, 127].
* ``w4``: int4 per group of G along K, ``W = s[n, g] * (u[n, k] - z[n, g])``,
  u in [0, 15], fp16 scales, z = 8 when symmetric, a uint8 per group otherwise.
  Every 64 weights are 32 bytes: byte j holds weight j (low nibble) and weight
  32 + j (high nibble), so two AVX2 instructions unpack 32 weights in order.
* ``w2a8-ternary``: BitNet b1.58's weights, ``W = s[n] * q``, q in {-1, 0, +1},
  s = mean |w| of the row (fp32), 2 bits per weight: every 128 weights are 32
  bytes, byte j holding the codes q + 1 of weights j, 32 + j, 64 + j, 96 + j in
  bits 0-1, 2-3, 4-5, 6-7; int8 activations per token (kernels/quant/ternary.cpp).
* ``w1a4-binary``: sign weights, ``W = s[n] * (+-1)``, s = mean |w|, 1 bit per
  weight (bit i of byte j is weight 8 j + i, 1 for +1); 4-bit symmetric
  activations per token (codes in [-7, 7]); popcounts over bit-planes
  (kernels/quant/binary.cpp, its path in :func:`binary_path`).
* ``a16``: activations stay fp32 (weights dequantized on the fly).
* ``a8``: activations quantized to int8 per token (w8a8) or per token and group
  (w4a8), symmetric, then integer dot products.

Modules: ``formats`` (schemes, packing), ``gptq`` (GPTQ codes, calibration),
``reference`` (torch references), ``ops`` (the C++ ops: schemas, fakes, backend),
``modules`` (quantized ``nn.Linear``), ``variants`` (FineQuant, DGQ, QServe),
``peers`` (torch's and onnxruntime's kernels), ``experiments`` (the chapter's
benchmark and quality runs), ``plots``; for chapter 03, ``qat`` (training through
the rounding) and ``lowbit`` (its race, byte counts and language-model runs).
"""
from __future__ import annotations

from . import ops
from .experiments import (FOUR_BIT_PEERS, INT8_PEERS, INT8_ROOF, OURS, among, backend_of, benchmark, bytes_moved,
                          compute_roof, dequant_share,
                          fidelity, label, measurements, ort_key, peer_factories, quality, ratio, scheme_of,
                          ratio_pivot, speed_table, time_pivot, weight_bytes, machine_limits, settle_roofs,
                          read_beside, beside_phrase, ceiling_phrase)
from .formats import (SCHEME_RE, DGQPacked, Packed, Scheme, dequantize, dgq_dequantize, pack_bits, pack_int4,
                      pack_ternary, parse_scheme, quantize, random_dgq, random_packed, to_panels, to_rows,
                      unpack_bits, unpack_int4, unpack_ternary)
from .gptq import calibrate, gptq_int4
from .modules import KERNEL_MAX_M, FakeQuantLinear, QuantLinear, percentile_clip, quantize_module, replace_linears
from .ops import available, backend, binary_path, dgq_linear, linear, prepack, a8_layout
from .peers import (ORT_PEERS, ort_available, ort_backend, ort_matmulnbits, ort_name, ort_pack, torch_backend,
                    torch_int4pack)
from .plots import plot_qat, plot_roofline, plot_speed, roofline_points
from .reference import dgq_linear_ref, fake_linear, linear_ref, quantize_acts
from .variants import (DGQ_CLIP_PCT, FINEQUANT_GROUPS, FINEQUANT_MAX_SHARE, FINEQUANT_RATIO, dgq_pack, dgq_quantize, finequant_group, finequant_scheme,
                       outlier_share, qserve_quantize, variant_makers)

__all__ = [
    "ops", "FOUR_BIT_PEERS", "INT8_PEERS", "INT8_ROOF", "compute_roof", "OURS", "among", "backend_of", "benchmark", "bytes_moved", "dequant_share",
    "fidelity", "label", "measurements", "ort_key", "peer_factories", "quality", "ratio", "scheme_of",
    "speed_table", "machine_limits", "settle_roofs", "read_beside", "beside_phrase", "time_pivot", "ratio_pivot", "weight_bytes", "SCHEME_RE", "DGQPacked", "Packed", "Scheme", "dequantize", "dgq_dequantize",
    "pack_int4", "pack_ternary", "unpack_ternary", "pack_bits", "unpack_bits", "binary_path", "parse_scheme", "quantize", "random_dgq", "random_packed", "unpack_int4", "calibrate",
    "gptq_int4", "FakeQuantLinear", "QuantLinear", "percentile_clip", "quantize_module", "replace_linears",
    "available", "backend", "dgq_linear", "linear", "prepack", "a8_layout", "to_panels", "to_rows",
    "ORT_PEERS", "ort_available", "ort_matmulnbits", "ort_name",
    "ort_pack", "torch_int4pack", "ort_backend", "torch_backend", "plot_qat", "plot_roofline", "plot_speed", "roofline_points", "dgq_linear_ref",
    "fake_linear", "linear_ref", "quantize_acts", "FINEQUANT_GROUPS", "FINEQUANT_RATIO", "FINEQUANT_MAX_SHARE",
    "DGQ_CLIP_PCT", "KERNEL_MAX_M", "dgq_pack", "dgq_quantize",
    "finequant_group", "finequant_scheme", "outlier_share", "qserve_quantize", "variant_makers",
]
