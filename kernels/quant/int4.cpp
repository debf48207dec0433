// int4 weights per group: W4A16 and W4A8 (quant_w4_linear). See quant.h.
#include "quant.h"

namespace effnb::quant {
namespace {

// ---------------------------------------------------------------- int4 row kernel
//
// One output row against a tile of up to 4 tokens, walking the packed row once:
// each 64-weight block is unpacked in registers (and, shift, and) and used for
// every token of the tile, so nothing is written back to memory. Chunk c of 32
// weights belongs to group c / (G/32); when a group ends its partial sums are
// scaled and added to the token's accumulator.
//   a16 (AVX2): u converted to fp32 (the dequantization QServe measures), fma with x.
//   plain C++ (no AVX2): a16 and a8, one weight at a time.
// W4A8 with AVX2 runs int4_a8_block below instead.

struct Int4Args {
  const uint8_t* w;
  const at::Half* scales;
  const uint8_t* zeros;
  int64_t kp, ng, group;
  const float* xp;
  const float* xsumf;
  const int8_t* xq;
  const float* xs;
  const int32_t* xsum;
  const float* xc;  // xs * xsum per token and group: the zero-point correction
};

template <int MT>
void int4_tile(const Int4Args& A, int64_t row, int64_t i0, bool a8, float* py, int64_t n) {
  const uint8_t* w = A.w + row * (A.kp / 2);
  const int64_t cpg = A.group / 32;  // chunks per group
  const int64_t nchunks = A.kp / 32;
  float corr[MT] = {0};
#if defined(EFFNB_QAVX2)
  // with AVX2 this tile runs W4A16 only; W4A8 goes to int4_a8_block
  (void)a8;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256 acc[MT];
  for (int t = 0; t < MT; ++t) acc[t] = _mm256_setzero_ps();
  {
    __m256 s[MT];
    for (int t = 0; t < MT; ++t) s[t] = _mm256_setzero_ps();
    int64_t g = 0, in_group = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 * (c & ~int64_t{1})));
      const __m256i u = (c & 1) == 0 ? _mm256_and_si256(v, mask) : _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      fma_32_bytes<MT, false>(u, A.xp + i0 * A.kp + 32 * c, A.kp, s);
      if (++in_group == cpg) {
        const float sw = half_to_float(A.scales[row * A.ng + g]);
        const float z = A.zeros ? static_cast<float>(A.zeros[row * A.ng + g]) : 8.0f;
        for (int t = 0; t < MT; ++t) {
          acc[t] = _mm256_fmadd_ps(s[t], _mm256_set1_ps(sw), acc[t]);
          s[t] = _mm256_setzero_ps();
          corr[t] += sw * z * A.xsumf[(i0 + t) * A.ng + g];
        }
        ++g;
        in_group = 0;
      }
    }
  }
  for (int t = 0; t < MT; ++t) py[(i0 + t) * n + row] = hsum(acc[t]) - corr[t];
#else
  // plain loops: the same arithmetic, one weight at a time
  float acc[MT] = {0};
  for (int64_t g = 0; g < A.ng; ++g) {
    const float sw = half_to_float(A.scales[row * A.ng + g]);
    const float z = A.zeros ? static_cast<float>(A.zeros[row * A.ng + g]) : 8.0f;
    for (int t = 0; t < MT; ++t) {
      const int64_t i = i0 + t;
      if (a8) {
        int32_t d = 0;
        for (int64_t k = g * A.group; k < (g + 1) * A.group; ++k) {
          const uint8_t byte = w[(k / 64) * 32 + (k % 32)];
          const int32_t u = (k % 64) < 32 ? (byte & 0x0F) : (byte >> 4);
          d += u * A.xq[i * A.kp + k];
        }
        const float sc = sw * A.xs[i * A.ng + g];
        acc[t] += sc * static_cast<float>(d);
        corr[t] += sc * z * static_cast<float>(A.xsum[i * A.ng + g]);
      } else {
        float d = 0.0f;
        for (int64_t k = g * A.group; k < (g + 1) * A.group; ++k) {
          const uint8_t byte = w[(k / 64) * 32 + (k % 32)];
          const float u = static_cast<float>((k % 64) < 32 ? (byte & 0x0F) : (byte >> 4));
          d += u * A.xp[i * A.kp + k];
        }
        acc[t] += sw * d;
        corr[t] += sw * z * A.xsumf[i * A.ng + g];
      }
    }
  }
  for (int t = 0; t < MT; ++t) py[(i0 + t) * n + row] = acc[t] - corr[t];
#endif
}

#if defined(EFFNB_QAVX2)
// int16 sums -> fp32 accumulators, scaled by s_w (sw[r], of group g) * s_a; sums reset
template <int R, int T>
inline __attribute__((always_inline)) void int4_a8_flush(const Int4Args& A, int64_t i0, int64_t g, const float (&sw)[R],
                                                         __m256i (&s16)[R][T], __m256 (&acc)[R][T]) {
  [[maybe_unused]] const __m256i ones = _mm256_set1_epi16(1);
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      const float sc = sw[r] * A.xs[(i0 + t) * A.ng + g];
#if defined(EFFNB_QDOT32)
      const __m256i i32 = s16[r][t];
#else
      const __m256i i32 = _mm256_madd_epi16(s16[r][t], ones);
#endif
      acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_set1_ps(sc), acc[r][t]);
      s16[r][t] = _mm256_setzero_si256();
    }
  }
}

template <int R, int T>
void int4_a8_block(const Int4Args& A, int64_t row0, int64_t i0, float* py, int64_t n) {
  const int64_t cpg = A.group / 32, nchunks = A.kp / 32;
  const uint8_t* w[R];
  const int8_t* a[T];
  for (int r = 0; r < R; ++r) w[r] = A.w + (row0 + r) * (A.kp / 2);
  for (int t = 0; t < T; ++t) a[t] = A.xq + (i0 + t) * A.kp;
  __m256 acc[R][T];
  float corr[R][T];
  __m256i s16[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      acc[r][t] = _mm256_setzero_ps(), corr[r][t] = 0.0f, s16[r][t] = _mm256_setzero_si256();
  // weight scales of group g (fp16 -> fp32 once per group and row), and the group's zero-point term
  auto scales_of = [&](int64_t g, float (&sw)[R]) __attribute__((always_inline)) {
    for (int r = 0; r < R; ++r) sw[r] = half_to_float(A.scales[(row0 + r) * A.ng + g]);
  };
  auto zero_point = [&](int64_t g, const float (&sw)[R]) __attribute__((always_inline)) {
    for (int r = 0; r < R; ++r) {
      const float swz = sw[r] * (A.zeros ? static_cast<float>(A.zeros[(row0 + r) * A.ng + g]) : 8.0f);
      for (int t = 0; t < T; ++t) corr[r][t] += swz * A.xc[(i0 + t) * A.ng + g];
    }
  };

  if (A.group % 64 == 0) {
    // whole 64-weight blocks per group: flush after each group or 4 blocks (8 chunks)
    const int64_t bpg = A.group / 64;
    for (int64_t g = 0; g < A.ng; ++g) {
      float sw[R];
      scales_of(g, sw);
      for (int64_t b0 = g * bpg; b0 < (g + 1) * bpg; b0 += 4) {
        const int64_t b1 = std::min((g + 1) * bpg, b0 + 4);
        for (int64_t b = b0; b < b1; ++b) {
          int4_a8_chunk<R, T, false>(w, a, 32 * b, 64 * b, s16);
          int4_a8_chunk<R, T, true>(w, a, 32 * b, 64 * b + 32, s16);
        }
        int4_a8_flush<R, T>(A, i0, g, sw, s16, acc);
      }
      zero_point(g, sw);
    }
  } else {
    // groups of an odd number of chunks (32, 96, ...): walk chunk by chunk
    int64_t g = 0, in_group = 0, pending = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      if (c & 1)
        int4_a8_chunk<R, T, true>(w, a, 16 * (c - 1), 32 * c, s16);
      else
        int4_a8_chunk<R, T, false>(w, a, 16 * c, 32 * c, s16);
      ++pending;
      const bool end = ++in_group == cpg;
      if (end || pending == 8) {
        float sw[R];
        scales_of(g, sw);
        int4_a8_flush<R, T>(A, i0, g, sw, s16, acc);
        pending = 0;
        if (end) {
          zero_point(g++, sw);
          in_group = 0;
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) py[(i0 + t) * n + row0 + r] = hsum(acc[r][t]) - corr[r][t];
}

// the W4A8 block kernel as over_row_blocks takes it
struct Int4A8 {
  template <int R, int T>
  static void block(const Int4Args& A, int64_t row0, int64_t i0, float* py, int64_t n) {
    int4_a8_block<R, T>(A, row0, i0, py, n);
  }
};
#endif

}  // namespace

// ---------------------------------------------------------------- int4 weights

at::Tensor quant_w4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                           const at::Tensor& zeros, int64_t group, bool a8) {
  constexpr const char* op = "quant_w4_linear";
  check_tensor(packed, at::kByte, op, "packed");
  check_tensor(scales, at::kHalf, op, "scales");
  TORCH_CHECK(group >= 32 && group % 32 == 0, op, ": group must be a multiple of 32, got ", group);
  TORCH_CHECK(packed.dim() == 2, op, ": packed must be [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2;
  TORCH_CHECK(kp % 64 == 0 && kp % group == 0, op, ": packed K=", kp,
              " must be a multiple of 64 and of the group ", group);
  const int64_t ng = kp / group;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == ng,
              op, ": scales must be [N, Kp/group] = [", n, ", ", ng, "]");
  const bool has_zero = zeros.numel() > 0;
  if (has_zero) {
    check_tensor(zeros, at::kByte, op, "zeros");
    TORCH_CHECK(zeros.dim() == 2 && zeros.size(0) == n && zeros.size(1) == ng,
                op, ": zeros must be [N, Kp/group] = [", n, ", ", ng, "] or empty");
  }
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
  // per token and group: activation scale and sum (the sum takes out the zero point)
  const Acts act = prepare_acts(x, kp, group, a8);
  const std::vector<float>& xp = act.xp;
  std::vector<float> xsumf(m * ng);
  if (!a8) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        float s = 0.0f;
        for (int64_t j = 0; j < group; ++j) s += xp[i * kp + g * group + j];
        xsumf[i * ng + g] = s;
      }
  }
  const uint8_t* pw = packed.data_ptr<uint8_t>();
  const at::Half* psc = scales.data_ptr<at::Half>();
  const uint8_t* pz = has_zero ? zeros.data_ptr<uint8_t>() : nullptr;
  float* py = y.data_ptr<float>();
  std::vector<float> xc(a8 ? m * ng : 0);
  for (size_t j = 0; j < xc.size(); ++j) xc[j] = act.xs[j] * static_cast<float>(act.xsum[j]);
  const Int4Args args{pw, psc, pz, kp, ng, group, xp.data(), xsumf.data(), act.xq.data(), act.xs.data(),
                      act.xsum.data(), xc.data()};
#if defined(EFFNB_QAVX2)
  if (a8) {
    if (m >= EFFNB_Q4_RMIN)
      over_row_blocks<EFFNB_Q4_R, Int4A8>(args, m, n, py);
    else
      over_row_blocks<1, Int4A8>(args, m, n, py);
    return y;
  }
#endif
  over_rows_in_token_tiles(n, m, [&](auto mt, int64_t row, int64_t i0) {
    int4_tile<decltype(mt)::value>(args, row, i0, a8, py, n);
  });
  return y;
}

}  // namespace effnb::quant
