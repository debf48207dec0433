// The int8 arithmetic roof of this build: how many 8-bit multiply-adds per second
// the integer dot-product step the W8A8/W4A8 kernels use can do, with nothing
// else in the loop (operands in registers, kChains independent accumulators, so
// no instruction waits for a result). A GEMM cannot beat it with the same step;
// a peer that does uses another one.
//
//   torch.ops.effnb.quant_peak_int8(out, iters)   out: int32, 16 per thread
//
// The step per 32 byte pairs, as the kernels do it (quant.h): vpdpbusd on a VNNI
// build; maddubs + madd(ones) + add into int32 on plain AVX2; a scalar loop
// otherwise. multiply-adds = threads x iters x kChains x 32 (effnb.quant.peak_int8).
#include "quant.h"

namespace effnb::quant {

namespace {
constexpr int kChains = 12;
}

void quant_peak_int8(const at::Tensor& out, int64_t iters) {
  effnb::check_cpu_contiguous(out, "quant_peak_int8", "out");
  effnb::check_dtype(out, at::kInt, "quant_peak_int8", "out");
  TORCH_CHECK(iters > 0, "quant_peak_int8: iters must be > 0, got ", iters);
  const int threads = omp_get_max_threads();
  TORCH_CHECK(out.numel() >= threads * 16, "quant_peak_int8: out needs 16 int32 per thread (", threads * 16,
              "), got ", out.numel(), "; pass torch.empty(threads * 16, dtype=torch.int32)");
  int32_t* o = out.data_ptr<int32_t>();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
#if defined(EFFNB_QAVX2)
    __m256i acc[kChains], u[4], s[3];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) u[c] = _mm256_set1_epi8(static_cast<char>(3 + c));
    for (int c = 0; c < 3; ++c) s[c] = _mm256_set1_epi8(static_cast<char>(-5 - c));
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < iters; ++i) {
      // distinct operand pairs per chain: the compiler cannot share one product between chains
      for (int c = 0; c < kChains; ++c) {
#if defined(EFFNB_QDOT32)
        acc[c] = EFFNB_DPBUSD(acc[c], u[c % 4], s[c % 3]);
#else
        acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(u[c % 4], s[c % 3]), ones));
#endif
      }
      __asm__ volatile("" : "+x"(u[0]), "+x"(s[0]));  // keeps the operands live, not loop-invariant
    }
    __m256i sum = acc[0];
    for (int c = 1; c < kChains; ++c) sum = _mm256_add_epi32(sum, acc[c]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16 * t), sum);
    for (int k = 8; k < 16; ++k) o[16 * t + k] = 0;
#else
    int32_t acc[kChains] = {};
    volatile int8_t a = 3, b = -5;
    const int8_t av = a, bv = b;
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c)
        for (int j = 0; j < 32; ++j) acc[c] += static_cast<int32_t>(av + c) * (bv - j);
    for (int k = 0; k < 16; ++k) o[16 * t + k] = k < kChains ? acc[k] : 0;
#endif
  }
}

int64_t quant_peak_chains(const at::Tensor&) { return kChains; }

}  // namespace effnb::quant
