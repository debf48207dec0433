// int4 weights per group: W4A16 and W4A8 (quant_w4_linear). See quant.h.
#include "panel.h"

#include <cstdlib>
#include <cstring>

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
  // xs and xc transposed, [ng][m] (the 512-bit kernel's 4-token tiles load them as one vector)
  const float* xs_t;
  const float* xc_t;
  int64_t m;
  bool ahead = false;  // one token: fetch the next row block ahead (next_block_ahead)
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

#if EFFNB_Q4_ZMM
// ---------------------------------------------------------------- W4A8 with 512-bit registers
//
// A 64-weight block is 32 bytes, low nibbles = weights 0..31, high nibbles = weights 32..63,
// and its activations are 64 contiguous bytes: the 32 bytes broadcast to both halves of a
// zmm and masked with 0x0F (low half) and 0xF0 (high half) give the 64 codes in order, the
// high ones times 16, so one vpdpbusd per block, row and token does what two 256-bit ones do
// (and no shift: the 16 comes out at the end, a power of two, exact in fp32; EFFNB_Q4Z_SHIFT=1
// shifts instead). The int32 lanes are flushed once per group (no int16 here: far from
// overflow) into fp32 accumulators, scaled by s_w * s_a; integer sums below 2^24 convert
// exactly, true for every group up to G = 2048 (G / 16 products of 240 * 127 per lane, four
// lanes folded); the zero point as in int4_a8_block. A 4-token tile folds its four sums of a
// row into one vector (unpack + add) before the flush: one convert and one fma per row and
// group instead of four; one token folds four rows the same way. The rows' fp16 scales are
// converted once per block of rows (int4_a8_zmm_rows), not once per token tile.
// Groups of whole 64-blocks only; other groups run int4_a8_block.

// sws: the rows' weight scales as fp32, per group g: sws[2Rg + r] = s_w, sws[2Rg + R + r] = s_w * zero
template <int R, int T>
void int4_a8_block_zmm(const Int4Args& A, int64_t row0, int64_t i0, float* py, int64_t n, const float* sws) {
  static_assert(T == 1 || T == 2 || T == 4, "the 512-bit W4A8 tile takes 1, 2 or 4 tokens");
  // T = 4: the four tokens' sums of a row are folded into one vector (lane 4j + t: token t)
  constexpr bool fold = T == 4;
  // T = 1 (R a multiple of 4): the same fold across four rows (lane 4j + r: row r)
  constexpr bool rfold = T == 1 && R % 4 == 0;
  constexpr int NA = fold ? 1 : T;
  constexpr int NQ = rfold ? R / 4 : 1;
  [[maybe_unused]] __m512 accq[NQ];
  [[maybe_unused]] __m128 corrq[NQ];
  for (int q = 0; q < NQ; ++q) accq[q] = _mm512_setzero_ps(), corrq[q] = _mm_setzero_ps();
  const auto fold4 = [](__m512i s0, __m512i s1, __m512i s2, __m512i s3) __attribute__((always_inline)) {
    const __m512i p01 = _mm512_add_epi32(_mm512_unpacklo_epi32(s0, s1), _mm512_unpackhi_epi32(s0, s1));
    const __m512i p23 = _mm512_add_epi32(_mm512_unpacklo_epi32(s2, s3), _mm512_unpackhi_epi32(s2, s3));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(p01, p23), _mm512_unpackhi_epi64(p01, p23));
  };
  const int64_t bpg = A.group / 64, nblocks = A.kp / 64;
#if EFFNB_Q4Z_SHIFT
  const __m512i mask = _mm512_set1_epi8(0x0F);
#else
  // low half 0x0F (weights 0..31), high half 0xF0 (weights 32..63, times 16)
  const __m512i mask = _mm512_inserti64x4(_mm512_set1_epi8(0x0F), _mm256_set1_epi8(static_cast<char>(0xF0)), 1);
#endif
  const uint8_t* w[R];
  const int8_t* a[T];
  for (int r = 0; r < R; ++r) w[r] = A.w + (row0 + r) * (A.kp / 2);
  for (int t = 0; t < T; ++t) a[t] = A.xq + (i0 + t) * A.kp;
  __m512 acc[R][NA];
  float corr[R][T];
  [[maybe_unused]] __m128 corr4[R];
  for (int r = 0; r < R; ++r) corr4[r] = _mm_setzero_ps();
  __m512i s32[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NA; ++t) acc[r][t] = _mm512_setzero_ps();
    for (int t = 0; t < T; ++t) corr[r][t] = 0.0f, s32[r][t] = _mm512_setzero_si512();
  }
  int64_t g = 0, in_group = 0;
  for (int64_t b = 0; b < nblocks; ++b) {
#if EFFNB_Q4Z_PF > 0
    // one token: the rows stream from memory (or L3); ask for them a little ahead, a line a row
    if constexpr (T == 1) {
      if ((b & 1) == 0)
        for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(w[r] + 32 * b + EFFNB_Q4Z_PF), _MM_HINT_T0);
    }
#endif
#if EFFNB_Q4Z_NEXT > 0
    // one token: the next row block is R contiguous rows; fetch it as one linear stream,
    // R / 2 lines per 64-weight block, so that it is in L1 when this thread gets there
    if constexpr (T == 1) {
      if (A.ahead) {
        const uintptr_t next = reinterpret_cast<uintptr_t>(A.w + (row0 + R) * (A.kp / 2)) + 32 * R * b;
        for (int l = 0; l < R / 2; ++l) _mm_prefetch(reinterpret_cast<const char*>(next + 64 * l), _MM_HINT_T0);
      }
    }
#endif
    __m512i u[R];
    for (int r = 0; r < R; ++r) {
      const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + 32 * b)));
#if EFFNB_Q4Z_SHIFT
      u[r] = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4), mask);
#else
      u[r] = _mm512_and_si512(v, mask);
#endif
    }
    for (int t = 0; t < T; ++t) {
      const __m512i x = _mm512_loadu_si512(a[t] + 64 * b);
      for (int r = 0; r < R; ++r) s32[r][t] = _mm512_dpbusd_epi32(s32[r][t], u[r], x);
    }
    if (++in_group < bpg) continue;
    // end of group g: int32 sums -> fp32, scaled by s_w * s_a; the zero-point term
    in_group = 0;
    if constexpr (rfold) {
      const __m512 xsb = _mm512_set1_ps(A.xs[i0 * A.ng + g]);
      const __m128 xcb = _mm_set1_ps(A.xc[i0 * A.ng + g]);
      for (int q = 0; q < NQ; ++q) {
        const __m512i f = fold4(s32[4 * q][0], s32[4 * q + 1][0], s32[4 * q + 2][0], s32[4 * q + 3][0]);
        const __m512 swv = _mm512_broadcast_f32x4(_mm_loadu_ps(sws + 2 * R * g + 4 * q));
        accq[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(f), _mm512_mul_ps(swv, xsb), accq[q]);
        corrq[q] = _mm_fmadd_ps(_mm_loadu_ps(sws + 2 * R * g + R + 4 * q), xcb, corrq[q]);
      }
      for (int r = 0; r < R; ++r) s32[r][0] = _mm512_setzero_si512();
      ++g;
      continue;
    }
    float xs[T];
    [[maybe_unused]] __m512 xsv;
    [[maybe_unused]] __m128 xcv;
    if constexpr (fold) {
      xsv = _mm512_broadcast_f32x4(_mm_loadu_ps(A.xs_t + g * A.m + i0));
      xcv = _mm_loadu_ps(A.xc_t + g * A.m + i0);
    } else {
      for (int t = 0; t < T; ++t) xs[t] = A.xs[(i0 + t) * A.ng + g];
    }
    for (int r = 0; r < R; ++r) {
      const float sw = sws[2 * R * g + r], swz = sws[2 * R * g + R + r];
      if constexpr (fold) {
        const __m512i q = fold4(s32[r][0], s32[r][1], s32[r][2], s32[r][3]);
        acc[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(xsv, _mm512_set1_ps(sw)), acc[r][0]);
        corr4[r] = _mm_fmadd_ps(_mm_set1_ps(swz), xcv, corr4[r]);
      } else {
        for (int t = 0; t < T; ++t) {
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32[r][t]), _mm512_set1_ps(sw * xs[t]), acc[r][t]);
          corr[r][t] += swz * A.xc[(i0 + t) * A.ng + g];
        }
      }
      for (int t = 0; t < T; ++t) s32[r][t] = _mm512_setzero_si512();
    }
    ++g;
  }
#if EFFNB_Q4Z_SHIFT
  const __m512 unscale = _mm512_set1_ps(1.0f);
#else
  // the high half summed 16 u * a: exact to take out in fp32 (a power of two)
  const __m512 unscale = _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(1.0f))),
                         _mm256_castps_pd(_mm256_set1_ps(1.0f / 16.0f)), 1));
#endif
  // lanes 4j + c of a folded vector belong to token (or row) c
  const auto unfold4 = [&](__m512 v) __attribute__((always_inline)) {
    v = _mm512_mul_ps(v, unscale);
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  };
  if constexpr (rfold) {
    for (int q = 0; q < NQ; ++q) {
      alignas(16) float rows[4];
      _mm_store_ps(rows, _mm_sub_ps(unfold4(accq[q]), corrq[q]));
      for (int r = 0; r < 4; ++r) py[i0 * n + row0 + 4 * q + r] = rows[r];
    }
    return;
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < NA; ++t) acc[r][t] = _mm512_mul_ps(acc[r][t], unscale);
    if constexpr (fold) {
      // lanes t, t + 4, t + 8, t + 12 belong to token t
      const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc[r][0]),
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[r][0]), 1)));
      const __m128 q = _mm_sub_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)), corr4[r]);
      alignas(16) float tok[4];
      _mm_store_ps(tok, q);
      for (int t = 0; t < T; ++t) py[(i0 + t) * n + row0 + r] = tok[t];
    } else {
      for (int t = 0; t < T; ++t) py[(i0 + t) * n + row0 + r] = _mm512_reduce_add_ps(acc[r][t]) - corr[r][t];
    }
  }
}

// Whether the one-token kernel fetches the next row block ahead. Measured cold at M = 1 on a
// 2-core AMD EPYC Zen 5 (3 shapes, 4 interleaved runs): 4096 x 4096 0.27-0.31 ms -> 0.22-0.25 ms,
// 11008 x 4096 0.69-0.79 -> 0.58-0.59 (one noisy 0.85), 4096 x 11008 0.61-0.66 -> 0.60-0.65. Its
// L2 stream prefetcher seems to start each of the R row streams late (not profiled). The
// Intel Xeon's tuning (per-row prefetch only) was not re-measured with it, so Intel keeps it off.
bool next_block_ahead() {
  static const bool amd = __builtin_cpu_is("amd");
  return vendor_choice("EFFNB_W4A8_AHEAD", "1", "0", amd);
}

// Threads over blocks of R rows (the last n % R one at a time); per block the rows' scales are
// converted once into a per-thread buffer, then every token tile of T (a pair, single tokens
// after them) runs against the block.
template <int R, int T>
void int4_a8_zmm_rows(const Int4Args& A, int64_t m, int64_t n, float* py) {
  const int64_t nblocks = (n + R - 1) / R;
#pragma omp parallel
  {
    std::vector<float> sws(2 * R * A.ng);
    auto rows = [&](auto rr, int64_t row0) __attribute__((always_inline)) {
      constexpr int RR = decltype(rr)::value;
      for (int64_t g = 0; g < A.ng; ++g)
        for (int r = 0; r < RR; ++r) {
          const float sw = half_to_float(A.scales[(row0 + r) * A.ng + g]);
          sws[2 * RR * g + r] = sw;
          sws[2 * RR * g + RR + r] = sw * (A.zeros ? static_cast<float>(A.zeros[(row0 + r) * A.ng + g]) : 8.0f);
        }
      int64_t i0 = 0;
      for (; i0 + T <= m; i0 += T) int4_a8_block_zmm<RR, T>(A, row0, i0, py, n, sws.data());
      if constexpr (T > 2) {
        if (m - i0 >= 2) int4_a8_block_zmm<RR, 2>(A, row0, i0, py, n, sws.data()), i0 += 2;
      }
      for (; i0 < m; ++i0) int4_a8_block_zmm<RR, 1>(A, row0, i0, py, n, sws.data());
    };
#pragma omp for schedule(dynamic, EFFNB_Q4Z_CHUNK)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t row0 = b * R;
      if (n - row0 >= R)
        rows(std::integral_constant<int, R>{}, row0);
      else
        for (int64_t row = row0; row < n; ++row) rows(std::integral_constant<int, 1>{}, row);
    }
  }
}
#endif

// xs * code sum per token and group, [M][ng]: the zero point's term of an integer product with
// unsigned int4 codes (sum (u - z) a = sum u a - z sum a)
std::vector<float> zero_terms(const Acts& act) {
  std::vector<float> xc(act.xs.size());
  for (size_t j = 0; j < xc.size(); ++j) xc[j] = act.xs[j] * static_cast<float>(act.xsum[j]);
  return xc;
}

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
  const std::vector<float> xc = a8 ? zero_terms(act) : std::vector<float>{};
  std::vector<float> xs_t, xc_t;
#if EFFNB_Q4_ZMM
  if (a8 && m >= EFFNB_QP_MMIN) {
    panel::run(panel::W4A8{pw, psc, pz, kp, n, ng, group, act.xq.data(), act.xs.data(), xc.data()}, m, n, py);
    return y;
  }
  if (a8 && group % 64 == 0 && m >= EFFNB_Q4Z_MMIN) {
    xs_t.resize(m * ng);
    xc_t.resize(m * ng);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t g = 0; g < ng; ++g) xs_t[g * m + i] = act.xs[i * ng + g], xc_t[g * m + i] = xc[i * ng + g];
  }
#endif
  Int4Args args{pw, psc, pz, kp, ng, group, xp.data(), xsumf.data(), act.xq.data(), act.xs.data(),
                act.xsum.data(), xc.data(), xs_t.data(), xc_t.data(), m};
#if EFFNB_Q4_ZMM && EFFNB_Q4Z_NEXT > 0
  args.ahead = m < EFFNB_Q4Z_MMIN && next_block_ahead();
#endif
#if EFFNB_Q4_ZMM
  if (a8 && group % 64 == 0) {
    if (m >= EFFNB_Q4Z_MMIN)
      int4_a8_zmm_rows<EFFNB_Q4Z_R, EFFNB_Q4Z_T>(args, m, n, py);
    else
      int4_a8_zmm_rows<EFFNB_Q4Z_R1, 1>(args, m, n, py);
    return y;
  }
#endif
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

// W4A8 on int4 panels (formats.to_panels): packed [P, Kp/64, 1024], scales fp16 and zeros uint8
// [P, Kp/group, 32] (the panel's 32 columns side by side, padding columns zero), n the true N.
at::Tensor quant_w4a8_panels(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                             const at::Tensor& zeros, int64_t group, int64_t n) {
  constexpr const char* op = "quant_w4a8_panels";
  TORCH_CHECK(EFFNB_Q4_ZMM, op, ": this build reads int4 rows only (quant_a8_layout() is \"rows\"); ",
              "pass the weight effnb.quant.ops.prepack returns here");
  check_tensor(packed, at::kByte, op, "packed");
  check_tensor(scales, at::kHalf, op, "scales");
  TORCH_CHECK(group >= 32 && group % 32 == 0, op, ": group must be a multiple of 32, got ", group);
  const int64_t np = (n + 31) / 32;
  TORCH_CHECK(n >= 0 && packed.dim() == 3 && packed.size(0) == np && packed.size(2) == 1024, op,
              ": packed must be [ceil(N/32), Kp/64, 1024] = [", np, ", Kp/64, 1024] for N=", n);
  const int64_t kp = packed.size(1) * 64;
  TORCH_CHECK(kp % group == 0, op, ": packed K=", kp, " must be a multiple of the group ", group);
  const int64_t ng = kp / group;
  TORCH_CHECK(scales.dim() == 3 && scales.size(0) == np && scales.size(1) == ng && scales.size(2) == 32, op,
              ": scales must be [ceil(N/32), Kp/group, 32] = [", np, ", ", ng, ", 32]");
  const bool has_zero = zeros.numel() > 0;
  if (has_zero) {
    check_tensor(zeros, at::kByte, op, "zeros");
    TORCH_CHECK(zeros.sizes() == scales.sizes(), op, ": zeros must be shaped like scales, or empty");
  }
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
#if EFFNB_Q4_ZMM
  const Acts act = prepare_acts(x, kp, group, true);
  const std::vector<float> xc = zero_terms(act);
  panel::run(panel::W4A8Panels{{packed.data_ptr<uint8_t>(), scales.data_ptr<at::Half>(),
                                has_zero ? zeros.data_ptr<uint8_t>() : nullptr, kp, n, ng, group, act.xq.data(),
                                act.xs.data(), xc.data()}},
             m, n, y.data_ptr<float>());
#endif
  return y;
}

}  // namespace effnb::quant
