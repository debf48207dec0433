// The compute roof, measured the way a CPU reaches it: every thread keeps
// kChains independent fused multiply-add chains in vector registers, so the
// FMA units never wait for a result (latency ~4 cycles x 2 ports needs >= 8
// chains). Nothing touches memory inside the loop; the accumulators are
// written out at the end so the compiler cannot drop the work.
//
//   torch.ops.effnb.stream_peak_fma(out, iters)   out: fp32, one row of 16 per thread
//
// flops = threads x iters x kChains x lanes x 2, counted in Python
// (effnb.probes.peak_fma_flops). The lane count follows the build: 16 with
// AVX-512, 8 with AVX2+FMA, 1 for plain C++.
#include "effnb.h"

namespace {

constexpr int kChains = 12;

int64_t lanes() {
#if defined(__AVX512F__)
  return 16;
#elif defined(__AVX2__) && defined(__FMA__)
  return 8;
#else
  return 1;
#endif
}

void stream_peak_fma(const at::Tensor& out, int64_t iters) {
  effnb::check_cpu_contiguous(out, "stream_peak_fma", "out");
  effnb::check_dtype(out, at::kFloat, "stream_peak_fma", "out");
  TORCH_CHECK(iters > 0, "stream_peak_fma: iters must be > 0, got ", iters);
  const int threads = omp_get_max_threads();
  TORCH_CHECK(out.numel() >= threads * 16, "stream_peak_fma: out needs 16 floats per thread (", threads * 16,
              "), got ", out.numel(), "; pass torch.empty(threads * 16)");
  float* o = out.data_ptr<float>();
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const float a = 0.999999f, b = 1e-7f;
#if defined(__AVX512F__)
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.0f + c);
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], va, vb);
    __m512 s = acc[0];
    for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
    _mm512_storeu_ps(o + 16 * t, s);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(1.0f + c);
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b);
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], va, vb);
    __m256 s = acc[0];
    for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
    _mm256_storeu_ps(o + 16 * t, s);
    for (int k = 8; k < 16; ++k) o[16 * t + k] = 0.0f;
#else
    float acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = 1.0f + c;
    for (int64_t i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * a + b;
    float s = 0.0f;
    for (int c = 0; c < kChains; ++c) s += acc[c];
    o[16 * t] = s;
    for (int k = 1; k < 16; ++k) o[16 * t + k] = 0.0f;
#endif
  }
}

int64_t stream_fma_lanes(const at::Tensor&) { return lanes() * kChains; }

}  // namespace

TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("stream_peak_fma", &stream_peak_fma);
  m.impl("stream_fma_width", &stream_fma_lanes);
}
