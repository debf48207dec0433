// The int8 arithmetic roof of this build: how many 8-bit multiply-adds per second
// the integer dot-product step the W8A8/W4A8 kernels use can do, with nothing
// else in the loop (operands in registers, kChains independent accumulators, so
// no instruction waits for a result). A GEMM cannot beat it with the same step;
// a peer that does uses another one.
//
//   torch.ops.effnb.quant_peak_int8(out, iters)   out: int32, 16 per thread
//
// The step, as the kernels do it (quant.h): 512-bit vpdpbusd where the build runs its 512-bit
// W8A8/W4A8 paths (EFFNB_Q4_ZMM: the panels and row tiles use nothing narrower), 256-bit vpdpbusd
// on other VNNI builds, maddubs + madd(ones) + add into int32 on plain AVX2, a scalar loop
// otherwise. multiply-adds = threads x iters x kChains x 4 x lanes (effnb.quant.peak_int8; lanes:
// quant_peak_lanes, the int32 lanes of one step).
#include "quant.h"

namespace effnb::quant {

namespace {
constexpr int kChains = 12;

#if EFFNB_Q4_ZMM
using Vec = __m512i;
constexpr int kLanes = 16;
inline Vec splat(int8_t b) { return _mm512_set1_epi8(b); }
inline Vec zero() { return _mm512_setzero_si512(); }
inline Vec step(Vec acc, Vec u, Vec s) { return _mm512_dpbusd_epi32(acc, u, s); }
inline Vec add(Vec a, Vec b) { return _mm512_add_epi32(a, b); }
inline void store(int32_t* o, Vec v) { _mm512_storeu_si512(o, v); }
#elif defined(EFFNB_QAVX2)
using Vec = __m256i;
constexpr int kLanes = 8;
inline Vec splat(int8_t b) { return _mm256_set1_epi8(b); }
inline Vec zero() { return _mm256_setzero_si256(); }
inline Vec step(Vec acc, Vec u, Vec s) {
#if defined(EFFNB_QDOT32)
  return EFFNB_DPBUSD(acc, u, s);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}
inline Vec add(Vec a, Vec b) { return _mm256_add_epi32(a, b); }
inline void store(int32_t* o, Vec v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), v); }
#else
constexpr int kLanes = 8;  // the scalar loop sums 32 products per chain and iteration
#endif
}  // namespace

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
    Vec acc[kChains], u[4], s[3];
    for (int c = 0; c < kChains; ++c) acc[c] = zero();
    for (int c = 0; c < 4; ++c) u[c] = splat(static_cast<int8_t>(3 + c));
    for (int c = 0; c < 3; ++c) s[c] = splat(static_cast<int8_t>(-5 - c));
    for (int64_t i = 0; i < iters; ++i) {
      // distinct operand pairs per chain: the compiler cannot share one product between chains
      for (int c = 0; c < kChains; ++c) acc[c] = step(acc[c], u[c % 4], s[c % 3]);
      __asm__ volatile("" : "+v"(u[0]), "+v"(s[0]));  // keeps the operands live, not loop-invariant
    }
    Vec sum = acc[0];
    for (int c = 1; c < kChains; ++c) sum = add(sum, acc[c]);
    for (int k = 0; k < 16; ++k) o[16 * t + k] = 0;
    store(o + 16 * t, sum);
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

int64_t quant_peak_lanes(const at::Tensor&) { return kLanes; }

}  // namespace effnb::quant
