// Chapter 09's kernel family: content-based sparse attention.
//
//   attention_topk_decode  (decode.cpp)   block top-k attention of one new token against a KV cache
//   attention_cluster      (cluster.cpp)  clustered (routing) attention: each query sees its cluster's keys
//
// Both are written once against the vector layer of simd.h (AVX-512, AVX2+FMA or plain C++,
// chosen at compile time from the build's -march level); this file names the path and
// registers the implementations. The schemas live in effnb/attention/ops.py.
#include "attention.h"

EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)

TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("attention_topk_decode", &effnb_attention::topk_decode);
  m.impl("attention_cluster", &effnb_attention::cluster_attention);
}
