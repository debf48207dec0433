// DGQ's dual-grained int4 weights with integer group scales, W4A8 (quant_dgq_linear). See quant.h.
#include "quant.h"

namespace effnb::quant {
namespace {

// ---------------------------------------------------------------- DGQ: int4 codes, integer group scales
//
// DGQ's dual-grained format: W[n, k] = s[n] * kint[n, g] * (u[n, k] - 8), u in [0, 15] (the int4
// layout of quant.h), kint in [1, 15] an integer per group, s one fp32 per row. Activations are int8 with
// ONE scale per token. Because the group scale is an integer, the group's int16 sums are multiplied
// by it inside the integer pipeline (madd with kint instead of with ones) and the int32 sums run
// across all groups: no per-group conversion to fp32, one scale multiply per output. The zero point 8
// comes out at the end: 8 * sum_g kint[g] * (sum of the token's int8 activations in group g).
// |u * kint * a| <= 15 * 15 * 127, so the int32 total is safe for K <= 65536 (checked).

struct DgqArgs {
  const uint8_t* w;
  const uint8_t* kint;
  const float* scale;
  int64_t kp, ng, group;
  const int8_t* xq;
  const float* xs;
  const int32_t* gsum;  // per token and group: sum of the int8 activations
};

#if defined(EFFNB_QAVX2)
template <int R, int T>
void dgq_block(const DgqArgs& A, int64_t row0, int64_t i0, float* py, int64_t n) {
  const uint8_t* w[R];
  const int8_t* a[T];
  for (int r = 0; r < R; ++r) w[r] = A.w + (row0 + r) * (A.kp / 2);
  for (int t = 0; t < T; ++t) a[t] = A.xq + (i0 + t) * A.kp;
  __m256i s16[R][T], i32[R][T];
  int64_t zero[R][T];  // sum over groups of kint * (the token's activation sum in the group)
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      s16[r][t] = _mm256_setzero_si256(), i32[r][t] = _mm256_setzero_si256(), zero[r][t] = 0;
  const int64_t bpg = A.group / 64;
  for (int64_t g = 0; g < A.ng; ++g)
    for (int64_t b0 = g * bpg; b0 < (g + 1) * bpg; b0 += 4) {
      const int64_t b1 = std::min((g + 1) * bpg, b0 + 4);
      for (int64_t b = b0; b < b1; ++b) {
        int4_a8_chunk<R, T, false>(w, a, 32 * b, 64 * b, s16);
        int4_a8_chunk<R, T, true>(w, a, 32 * b, 64 * b + 32, s16);
      }
      for (int r = 0; r < R; ++r) {
        const int32_t k = A.kint[(row0 + r) * A.ng + g];
        for (int t = 0; t < T; ++t) {
#if defined(EFFNB_QDOT32)
          i32[r][t] = _mm256_add_epi32(i32[r][t], _mm256_mullo_epi32(s16[r][t], _mm256_set1_epi32(k)));
#else
          i32[r][t] = _mm256_add_epi32(i32[r][t], _mm256_madd_epi16(s16[r][t], _mm256_set1_epi16(static_cast<int16_t>(k))));
#endif
          s16[r][t] = _mm256_setzero_si256();
          if (b1 == (g + 1) * bpg) zero[r][t] += k * A.gsum[(i0 + t) * A.ng + g];
        }
      }
    }
  // the zero point 8 and the scales, once per output
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const int64_t dot = static_cast<int64_t>(hsum_i32(i32[r][t])) - 8 * zero[r][t];
      py[(i0 + t) * n + row0 + r] = A.scale[row0 + r] * A.xs[i0 + t] * static_cast<float>(dot);
    }
  }
}

// the DGQ block kernel as over_row_blocks takes it
struct Dgq {
  template <int R, int T>
  static void block(const DgqArgs& A, int64_t row0, int64_t i0, float* py, int64_t n) {
    dgq_block<R, T>(A, row0, i0, py, n);
  }
};
#endif

// one row, one token, plain loops (CPUs without AVX2)
[[maybe_unused]] void dgq_scalar(const DgqArgs& A, int64_t row, int64_t i, float* py, int64_t n) {
  const uint8_t* w = A.w + row * (A.kp / 2);
  int64_t total = 0;
  for (int64_t g = 0; g < A.ng; ++g) {
    int32_t d = 0;
    for (int64_t k = g * A.group; k < (g + 1) * A.group; ++k) {
      const uint8_t byte = w[(k / 64) * 32 + (k % 32)];
      const int32_t u = (k % 64) < 32 ? (byte & 0x0F) : (byte >> 4);
      d += (u - 8) * A.xq[i * A.kp + k];
    }
    total += static_cast<int64_t>(A.kint[row * A.ng + g]) * d;
  }
  py[i * n + row] = A.scale[row] * A.xs[i] * static_cast<float>(total);
}

}  // namespace

at::Tensor quant_dgq_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& kint,
                            const at::Tensor& scale, int64_t group) {
  constexpr const char* op = "quant_dgq_linear";
  check_tensor(packed, at::kByte, op, "packed");
  check_tensor(kint, at::kByte, op, "kint");
  check_tensor(scale, at::kFloat, op, "scale");
  TORCH_CHECK(group >= 64 && group % 64 == 0, op, ": the DGQ group must be a multiple of 64, got ", group);
  TORCH_CHECK(packed.dim() == 2, op, ": packed must be [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2;
  TORCH_CHECK(kp % group == 0, op, ": packed K=", kp, " must be a multiple of the group ", group);
  TORCH_CHECK(kp <= 65536, op, ": K=", kp, " is too long for DGQ's int32 sums (at most 65536)");
  const int64_t ng = kp / group;
  TORCH_CHECK(kint.dim() == 2 && kint.size(0) == n && kint.size(1) == ng,
              op, ": kint must be [N, Kp/group] = [", n, ", ", ng, "]");
  TORCH_CHECK(scale.numel() == n, op, ": scale must have one value per output row (", n, ")");
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
  const Acts act = prepare_acts(x, kp, kp, true);  // one scale per token
  std::vector<int32_t> gsum(m * ng, 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < kp; ++k) gsum[i * ng + k / group] += act.xq[i * kp + k];
  const DgqArgs args{packed.data_ptr<uint8_t>(), kint.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                     kp, ng, group, act.xq.data(), act.xs.data(), gsum.data()};
  float* py = y.data_ptr<float>();
#if defined(EFFNB_QAVX2)
  if (m >= EFFNB_Q4_RMIN)
    over_row_blocks<EFFNB_Q4_R, Dgq>(args, m, n, py);
  else
    over_row_blocks<1, Dgq>(args, m, n, py);
#else
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t row = 0; row < n; ++row)
    for (int64_t i = 0; i < m; ++i) dgq_scalar(args, row, i, py, n);
#endif
  return y;
}

}  // namespace effnb::quant
