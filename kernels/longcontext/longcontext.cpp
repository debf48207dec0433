// Chapter 10's kernel family: long context on a compressed KV cache.
//
//   longcontext_kv_decode  (kvdecode.cpp)  one new token's attention over int8 / int4 codes, dequantized in registers
//
// Written against the attention family's vector layer (kernels/attention/simd.h: AVX-512, AVX2+FMA or plain
// C++, chosen at compile time from the build's -march level); this file names the path and registers it.
#include "longcontext.h"

EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)

TORCH_LIBRARY_IMPL(effnb, CPU, m) { m.impl("longcontext_kv_decode", &effnb_longcontext::kv_decode); }
