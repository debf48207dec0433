// The quant kernel family: registers the CPU implementations of the ops that
// effnb/quant/ops.py declares, and names the integer dot-product path this build runs.
//
//   quant_w8_linear   int8.cpp   W8A16, W8A8 (int8 rows, or for W8A8 panels packed once: panel.h)
//   quant_a8_layout   int8.cpp   the W8A8/W4A8 weight layout this build reads: "panels" (AVX-512 VNNI) or "rows"
//   quant_w4_linear   int4.cpp   W4A16, W4A8 (register tile of rows x tokens)
//   quant_w4a8_panels int4.cpp   W4A8 on int4 panels packed once (panel.h; AVX-512 VNNI builds)
//   quant_dgq_linear  dgq.cpp    DGQ: int4 codes, integer group scales, W4A8
//   quant_ternary_linear  ternary.cpp  W2A8: ternary codes (2 bits) x int8, the same u8 x s8 step
//   quant_binary_linear   binary.cpp   W1A4: sign bits x 4-bit activations, popcount over bit-planes
//   quant_binary_path     binary.cpp   the popcount path of that build (avx512-vpopcntdq, avx2-pshufb, scalar)
//   quant_peak_int8   peak.cpp   the int8 dot-product step alone: this build's int8 roof
//
// quant.h explains the formats and the code paths.
#include "quant.h"

// which integer dot-product path this build runs (every result names it)
#if defined(EFFNB_QDOT32)
EFFNB_ISA_PATH(EFFNB_QDOT32_NAME)
#elif defined(EFFNB_QAVX2)
EFFNB_ISA_PATH("avx2")
#else
EFFNB_ISA_PATH("scalar")
#endif

TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("quant_w8_linear", &effnb::quant::quant_w8_linear);
  m.impl("quant_a8_layout", &effnb::quant::quant_a8_layout);
  m.impl("quant_w4_linear", &effnb::quant::quant_w4_linear);
  m.impl("quant_w4a8_panels", &effnb::quant::quant_w4a8_panels);
  m.impl("quant_dgq_linear", &effnb::quant::quant_dgq_linear);
  m.impl("quant_ternary_linear", &effnb::quant::quant_ternary_linear);
  m.impl("quant_binary_linear", &effnb::quant::quant_binary_linear);
  m.impl("quant_binary_path", &effnb::quant::quant_binary_path);
  m.impl("quant_peak_int8", &effnb::quant::quant_peak_int8);
  m.impl("quant_peak_chains", &effnb::quant::quant_peak_chains);
  m.impl("quant_peak_lanes", &effnb::quant::quant_peak_lanes);
}
