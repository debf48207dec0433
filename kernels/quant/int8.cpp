// int8 weights per output channel: W8A16 and W8A8 (quant_w8_linear). See quant.h.
#include "quant.h"

namespace effnb::quant {
namespace {

// ---------------------------------------------------------------- int8 row kernel
//
// One output row against a tile of up to 4 tokens, 32 weights at a time, all in
// registers. a8: |w| * sign(a, w) with maddubs, widened to int32 at once (a
// single maddubs result can reach 2 * 127 * 127 = 32258, so no int16 sums);
// the int32 total of the row is scaled once. a16: int8 -> fp32, fma with x.

struct Int8Args {
  const int8_t* w;
  const float* scales;
  int64_t kp;
  const float* xp;
  const int8_t* xq;
  const float* xs;
};

template <int MT>
void int8_tile(const Int8Args& A, int64_t row, int64_t i0, bool a8, float* py, int64_t n) {
  const int8_t* w = A.w + row * A.kp;
  const float sw = A.scales[row];
#if defined(EFFNB_QAVX2)
  if (a8) {
    [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[MT];
    for (int t = 0; t < MT; ++t) acc[t] = _mm256_setzero_si256();
    for (int64_t k = 0; k < A.kp; k += 32) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      const __m256i wa = _mm256_abs_epi8(wv);
      for (int t = 0; t < MT; ++t) {
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(A.xq + (i0 + t) * A.kp + k));
#if defined(EFFNB_QDOT32)
        acc[t] = EFFNB_DPBUSD(acc[t], wa, _mm256_sign_epi8(a, wv));
#else
        const __m256i p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(a, wv));
        acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(p, ones));
#endif
      }
    }
    for (int t = 0; t < MT; ++t)
      py[(i0 + t) * n + row] = sw * A.xs[i0 + t] * static_cast<float>(hsum_i32(acc[t]));
  } else {
    __m256 acc[MT];
    for (int t = 0; t < MT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < A.kp; k += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
      fma_32_bytes<MT, true>(v, A.xp + i0 * A.kp + k, A.kp, acc);
    }
    for (int t = 0; t < MT; ++t) py[(i0 + t) * n + row] = sw * hsum(acc[t]);
  }
#else
  for (int t = 0; t < MT; ++t) {
    const int64_t i = i0 + t;
    if (a8) {
      int32_t d = 0;
      for (int64_t k = 0; k < A.kp; ++k) d += static_cast<int32_t>(w[k]) * A.xq[i * A.kp + k];
      py[i * n + row] = sw * A.xs[i] * static_cast<float>(d);
    } else {
      float d = 0.0f;
      for (int64_t k = 0; k < A.kp; ++k) d += static_cast<float>(w[k]) * A.xp[i * A.kp + k];
      py[i * n + row] = sw * d;
    }
  }
#endif
}

}  // namespace

// ---------------------------------------------------------------- int8 weights

at::Tensor quant_w8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, bool a8) {
  constexpr const char* op = "quant_w8_linear";
  check_tensor(q, at::kChar, op, "q");
  check_tensor(scales, at::kFloat, op, "scales");
  TORCH_CHECK(q.dim() == 2 && q.size(1) % 32 == 0, op, ": q must be [N, Kp] with Kp a multiple of 32");
  const int64_t n = q.size(0), kp = q.size(1);
  TORCH_CHECK(scales.numel() == n, op, ": scales must have one value per output row (", n, ")");
  TORCH_CHECK(kp < (int64_t{1} << 17), op, ": K=", kp, " is too long for int32 accumulation");
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
  const Acts act = prepare_acts(x, kp, kp, a8);  // W8A8: one scale per token
  const int8_t* pq = q.data_ptr<int8_t>();
  const float* ps = scales.data_ptr<float>();
  float* py = y.data_ptr<float>();
  const Int8Args args{pq, ps, kp, act.xp.data(), act.xq.data(), act.xs.data()};
  over_rows_in_token_tiles(n, m, [&](auto mt, int64_t row, int64_t i0) {
    int8_tile<decltype(mt)::value>(args, row, i0, a8, py, n);
  });
  return y;
}

}  // namespace effnb::quant
