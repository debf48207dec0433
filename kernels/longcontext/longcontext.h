// Chapter 10's kernel; its schema and fake kernel live in effnb/longcontext/ops.py.
#pragma once

#include "effnb.h"

namespace effnb_longcontext {

// One new token's query heads (Hq, d) against a KV cache of int8 or int4 codes with a scale and a
// minimum per group of channels (effnb/longcontext/kvquant.py's format), first `length` rows valid.
at::Tensor kv_decode(const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale,
                     const at::Tensor& k_min, const at::Tensor& v_codes, const at::Tensor& v_scale,
                     const at::Tensor& v_min, int64_t length, int64_t bits);

}  // namespace effnb_longcontext
