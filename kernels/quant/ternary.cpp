// Ternary weights x int8 activations, W2A8 (quant_ternary_linear). See quant.h.
#include "quant.h"

namespace effnb::quant {
namespace {

// ---------------------------------------------------------------- ternary x int8
//
// W[n, k] = scales[n] * (c[n, k] - 1), c in {0, 1, 2} (BitNet b1.58's {-1, 0, +1} plus one),
// 2 bits per weight: every 128 weights are 32 bytes, byte j holding weight j in bits 0-1,
// 32 + j in bits 2-3, 64 + j in bits 4-5 and 96 + j in bits 6-7 (effnb/quant/formats.py,
// pack_ternary). So (v >> 2j) & 3 over one 32-byte load v is 32 consecutive codes, already
// unsigned bytes: exactly the u8 operand of the u8 x s8 dot-product step (vpdpbusd, or maddubs
// + madd on plain AVX2), with the int8 activation codes as the s8 operand. The -1 comes out
// once per output with the token's activation code sum (computed when x is quantized):
//   sum_k (c - 1) a = sum_k c a - sum_k a.
// No int16 overflow on plain AVX2: a maddubs lane is at most 2 x 2 x 127 = 508, and the int16
// sums of one 128-weight block (4 steps) are widened to int32 after each block.
// Register tile of R rows x T tokens: each unpacked weight vector serves T tokens, each
// activation load R rows. VNNI with AVX-512VL (32 vector registers): 4 x 4 (16 accumulators);
// otherwise 2 x 2 (AVX2 has 16 registers and needs int16 sums beside the int32 ones).
// Every step of a block is written out (j = 0..3, a fixed shift each), so GCC keeps the
// accumulators in registers instead of copying them once per step. Small VNNI tiles (batch 1
// runs 4 rows x 1 token) give each step its own accumulators, so that consecutive vpdpbusd do
// not wait for one another (at 4 x 1 with one set the kernel was latency-bound: slower than
// W4A8 on one thread).

struct TernArgs {
  const uint8_t* w;
  const float* scales;
  int64_t kp;
  const int8_t* xq;
  const float* xs;
  const int32_t* xsum;
};

#if defined(EFFNB_QAVX2)
#if defined(EFFNB_QDOT32) && defined(__AVX512VL__)
constexpr int kTR = 4, kTT = 4;
#else
constexpr int kTR = 2, kTT = 2;
#endif
// below this many tokens rows are walked one at a time: at batch 1 the weights stream from memory,
// and 4 interleaved rows were read at less than half the speed of one (6 against 15 GB/s cold here)
constexpr int64_t kTRMIN = 4;

// step j of a 128-weight block: codes (v >> 2j) & 3 of R rows against T tokens' 32 activations
template <int R, int T, int J, class Acc>
inline __attribute__((always_inline)) void ternary_step(const __m256i (&v)[R], const int8_t* x0, int64_t kp,
                                                        int64_t k, Acc (&s)[R][T]) {
  const __m256i mask = _mm256_set1_epi8(3);
  __m256i c[R];
  for (int r = 0; r < R; ++r) c[r] = _mm256_and_si256(J == 0 ? v[r] : _mm256_srli_epi16(v[r], 2 * J), mask);
  for (int t = 0; t < T; ++t) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + t * kp + k + 32 * J));
    for (int r = 0; r < R; ++r) {
#if defined(EFFNB_QDOT32)
      s[r][t] = EFFNB_DPBUSD(s[r][t], c[r], a);
#else
      s[r][t] = _mm256_add_epi16(s[r][t], _mm256_maddubs_epi16(c[r], a));
#endif
    }
  }
}

template <int R, int T>
void ternary_tile(const TernArgs& A, int64_t row0, int64_t i0, float* py, int64_t n) {
  const int64_t kp = A.kp, kb = kp / 4;  // weights and bytes per row
  const uint8_t* w0 = A.w + row0 * kb;
  const int8_t* x0 = A.xq + i0 * kp;
  __m256i acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_si256();
#if defined(EFFNB_QDOT32)
  // small tiles (batch 1: R x 1) would chain the 4 steps of a block through one accumulator each
  // (4 x the vpdpbusd latency per block); steps J use set J % S, S independent sets summed at the end
  constexpr int S = R * T <= 4 ? 4 : (R * T <= 8 ? 2 : 1);
  __m256i more[S > 1 ? S - 1 : 1][R][T];
  for (int q = 0; q < S - 1; ++q)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) more[q][r][t] = _mm256_setzero_si256();
  const auto set = [&](int j) -> __m256i (&)[R][T] { return j % S == 0 ? acc : more[j % S - 1]; };
#else
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (int64_t b = 0; b < kb; b += 32) {
    __m256i v[R];
    for (int r = 0; r < R; ++r) v[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + r * kb + b));
    const int64_t k = 4 * b;  // first weight of the block
#if defined(EFFNB_QDOT32)
    ternary_step<R, T, 0>(v, x0, kp, k, set(0));
    ternary_step<R, T, 1>(v, x0, kp, k, set(1));
    ternary_step<R, T, 2>(v, x0, kp, k, set(2));
    ternary_step<R, T, 3>(v, x0, kp, k, set(3));
#else
    __m256i s16[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) s16[r][t] = _mm256_setzero_si256();
    ternary_step<R, T, 0>(v, x0, kp, k, s16);
    ternary_step<R, T, 1>(v, x0, kp, k, s16);
    ternary_step<R, T, 2>(v, x0, kp, k, s16);
    ternary_step<R, T, 3>(v, x0, kp, k, s16);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(s16[r][t], ones));
#endif
  }
#if defined(EFFNB_QDOT32)
  for (int q = 0; q < S - 1; ++q)
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_add_epi32(acc[r][t], more[q][r][t]);
#endif
  for (int r = 0; r < R; ++r) {
    const float sw = A.scales[row0 + r];
    for (int t = 0; t < T; ++t) {
      const int32_t dot = hsum_i32(acc[r][t]) - A.xsum[i0 + t];
      py[(i0 + t) * n + row0 + r] = sw * A.xs[i0 + t] * static_cast<float>(dot);
    }
  }
}

// tokens [i0, m) against rows [row0, row0 + R): tiles of T tokens, the rest as one smaller tile
template <int R, int T = kTT>
void ternary_rows(const TernArgs& A, int64_t row0, int64_t i0, int64_t m, float* py, int64_t n) {
  for (; i0 + T <= m; i0 += T) ternary_tile<R, T>(A, row0, i0, py, n);
  if constexpr (T > 1) {
    if (m > i0) ternary_rows<R, T - 1>(A, row0, i0, m, py, n);
  }
}
#endif

#if !defined(EFFNB_QAVX2)
// one row, one token, a code at a time: the scalar path
void ternary_row_scalar(const TernArgs& A, int64_t row, int64_t i, float* py, int64_t n) {
  const uint8_t* w = A.w + row * (A.kp / 4);
  const int8_t* x = A.xq + i * A.kp;
  int32_t d = 0;
  for (int64_t k = 0; k < A.kp; ++k) {
    const int32_t c = (w[(k / 128) * 32 + k % 32] >> (2 * ((k % 128) / 32))) & 3;
    d += c * x[k];
  }
  py[i * n + row] = A.scales[row] * A.xs[i] * static_cast<float>(d - A.xsum[i]);
}
#endif

}  // namespace

at::Tensor quant_ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales) {
  constexpr const char* op = "quant_ternary_linear";
  check_tensor(packed, at::kByte, op, "packed");
  check_tensor(scales, at::kFloat, op, "scales");
  TORCH_CHECK(packed.dim() == 2 && packed.size(1) % 32 == 0, op,
              ": packed must be [N, Kp/4] with Kp a multiple of 128 (4 codes per byte), got ", packed.sizes());
  const int64_t n = packed.size(0), kp = packed.size(1) * 4;
  TORCH_CHECK(scales.dim() == 1 && scales.numel() == n, op, ": scales must have one value per output row (", n,
              "), got ", scales.sizes());
  TORCH_CHECK(kp < (int64_t{1} << 22), op, ": K=", kp, " is too long for int32 accumulation");
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
  const Acts act = prepare_acts(x, kp, kp, true);  // int8, one scale and one code sum per token
  const TernArgs args{packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), kp, act.xq.data(), act.xs.data(),
                      act.xsum.data()};
  float* py = y.data_ptr<float>();
#if defined(EFFNB_QAVX2)
  if (m < kTRMIN) {  // batch 1-3: one row at a time, the access pattern the prefetchers follow best
#pragma omp parallel for schedule(dynamic, 32)
    for (int64_t row = 0; row < n; ++row) ternary_rows<1>(args, row, 0, m, py, n);
    return y;
  }
  const int64_t nblocks = (n + kTR - 1) / kTR;
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t row0 = b * kTR;
    if (n - row0 >= kTR) {
      ternary_rows<kTR>(args, row0, 0, m, py, n);
    } else {
      for (int64_t row = row0; row < n; ++row) ternary_rows<1>(args, row, 0, m, py, n);
    }
  }
#else
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t row = 0; row < n; ++row)
    for (int64_t i = 0; i < m; ++i) ternary_row_scalar(args, row, i, py, n);
#endif
  return y;
}

}  // namespace effnb::quant
