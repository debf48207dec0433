// Chapter 09's two kernels; schemas and fake kernels live in effnb/attention/ops.py.
#pragma once

#include "effnb.h"

namespace effnb_attention {

// One new token's query heads (Hq, d) against a KV cache (Hkv, cap, d), attending the topk
// full blocks whose key means (summary) score highest, plus the first `sink` blocks and the partial tail block.
at::Tensor topk_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& summary,
                       int64_t length, int64_t block, int64_t topk, int64_t sink);

// Each query (H, n, d) attends only the keys of its own cluster (optionally causally).
at::Tensor cluster_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_order,
                             const at::Tensor& q_offsets, const at::Tensor& k_order, const at::Tensor& k_offsets,
                             bool causal);

}  // namespace effnb_attention
