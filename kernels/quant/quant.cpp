// Weight-only (W8A16, W4A16) and integer (W8A8, W4A8) linear layers as torch custom operators.
//
//   torch.ops.effnb.quant_w8_linear(x, q, scales, a8)                  -> y = x @ W^T
//   torch.ops.effnb.quant_w4_linear(x, packed, scales, zeros, group, a8) -> y = x @ W^T
//   torch.ops.effnb.quant_dgq_linear(x, packed, kint, scale, group)      -> y = x @ W^T (DGQ, W4A8)
//
// x is fp32 [M, K]; y is fp32 [M, N]. effnb/quant.py builds the packed weights
// and explains the formats; in short:
//
// int8, per output channel:  W[n, k] = scales[n] * q[n, k],  q int8 in [-127, 127], [N, Kp]
// int4, per group of G:      W[n, k] = scales[n, g] * (u[n, k] - zeros[n, g]),  g = k / G
//   u in [0, 15]; symmetric schemes have no zeros tensor (zero = 8 everywhere);
//   scales are fp16 [N, Kp/G], zeros uint8 [N, Kp/G].
//   Nibble layout, chosen so that AVX2 unpacks 32 weights with two instructions:
//   every block of 64 weights is 32 bytes; byte j holds weight j in its low
//   nibble and weight 32 + j in its high nibble. (v & 0xF) is then weights
//   0..31 in order and ((v >> 4) & 0xF) weights 32..63.
// Kp is K rounded up (to 32 for int8, to a multiple of 64 and of G for int4);
// the padding weights are zero and x is padded with zeros here.
//
// a8 = false (W8A16 / W4A16): weights are turned into fp32 on the fly and
//   multiplied with fp32 activations (fp32 accumulation).
// a8 = true (W8A8 / W4A8): activations are first quantized to int8, per token
//   (W8A8: one scale per row of x) or per token and group (W4A8: one scale per
//   G activations), then the dot products run on 8-bit integers:
//   _mm256_maddubs_epi16 multiplies unsigned by signed bytes and adds pairs
//   into int16, _mm256_madd_epi16 with ones widens to int32. The int4 weights
//   are unsigned already (u in [0, 15]), so u * a needs no trick; the zero point
//   is taken out afterwards with the group sum of a:  sum (u - z) a = sum u a - z sum a.
//   int8 weights are signed, so we use the sign trick |w| * sign(a, w) = w * a.
//   No int16 overflow: 15 * 127 * 2 and 127 * 127 * 2 are below 32767.
//
// Threads: OpenMP over output rows n (each thread owns whole rows, so no
// reduction), handed out a few rows at a time as threads become free
// (schedule(dynamic)): on a shared machine a thread that loses its core for a
// moment does not make the others wait for its fixed share.
// W4A8: a register tile of R = 2 rows x T = 3 tokens (int4_a8_block): each
// unpacked weight vector serves T tokens and each activation load R rows.
// W4A16: each row is walked once per tile of up to 4 tokens.
// int8: one row against up to 4 tokens, 32 weights at a time, in registers.
//
// Paths: AVX2 when the library is built for x86-64-v3 or higher (decided at
// compile time; the build is keyed by the CPU's features, so each feature set
// gets its own). With AVX512-VNNI (+VL) or AVX-VNNI, the integer dot products
// use vpdpbusd into int32 lanes instead of maddubs + madd; ext.py adds the flag
// when the CPU has it. Plain C++ loops otherwise.

#include "effnb.h"
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EFFNB_QAVX2 1
// u8 x s8 dot products into int32 lanes. With VNNI one instruction (vpdpbusd)
// does it; the build for such a CPU has the flag (effnb/ext.py). The plain AVX2
// path instead sums pairs into int16 (maddubs) and widens once per group.
// EFFNB_QDOT32_EMULATE compiles the VNNI code path with an AVX2 stand-in for
// vpdpbusd, so that its accumulation logic is tested on CPUs without VNNI.
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx512-vnni"
#define EFFNB_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#elif defined(__AVXVNNI__)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx-vnni"
#define EFFNB_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#elif defined(EFFNB_QDOT32_EMULATE)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx2-emulated-vnni"
#define EFFNB_DPBUSD(acc, u, s) \
  _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#endif
#ifndef EFFNB_Q4_R
#define EFFNB_Q4_R 2
#endif
#ifndef EFFNB_Q4_RMIN
#define EFFNB_Q4_RMIN 8
#endif
#ifndef EFFNB_Q4_T
#define EFFNB_Q4_T 3
#endif
#elif defined(__F16C__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------- checks

void check_cpu_contig(const at::Tensor& t, const char* name, at::ScalarType dt) {
  TORCH_CHECK(t.device().is_cpu(), "effnb quant: ", name, " must be on the CPU; pass ", name, ".cpu()");
  TORCH_CHECK(t.scalar_type() == dt, "effnb quant: ", name, " must be ", dt, ", got ", t.scalar_type(),
              "; build it with effnb.quant.quantize(...)");
  TORCH_CHECK(t.is_contiguous(), "effnb quant: ", name, " must be contiguous; pass ", name, ".contiguous()");
}

void check_x(const at::Tensor& x, int64_t kp) {
  TORCH_CHECK(x.device().is_cpu(), "effnb quant: x must be on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "effnb quant: x must be float32, got ", x.scalar_type(),
              "; pass x.float()");
  TORCH_CHECK(x.dim() == 2, "effnb quant: x must be 2-D [M, K], got ", x.dim(), " dims");
  TORCH_CHECK(x.is_contiguous(), "effnb quant: x must be contiguous; pass x.contiguous()");
  TORCH_CHECK(x.size(1) <= kp,
              "effnb quant: x has K=", x.size(1), " columns but the weight was packed for K padded to ", kp);
}

// x [M, K] -> xp [M, Kp], zero padded (so every kernel can run whole blocks)
std::vector<float> pad_rows(const at::Tensor& x, int64_t kp) {
  const int64_t m = x.size(0), k = x.size(1);
  std::vector<float> xp(static_cast<size_t>(m * kp), 0.0f);
  const float* px = x.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i) std::copy(px + i * k, px + (i + 1) * k, xp.data() + i * kp);
  return xp;
}

// ---------------------------------------------------------------- activations to int8
//
// Symmetric, one scale per block of `block` values of a row: s = max|x| / 127,
// q = round-half-even(x * (127 / max|x|)). sums[] keeps the sum of q per block
// (the zero-point correction of int4 weights needs it).

void quantize_acts(const float* xp, int64_t m, int64_t kp, int64_t block, int8_t* q, float* s, int32_t* sums) {
  const int64_t nb = kp / block;
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = xp + i * kp + b * block;
      float amax = 0.0f;
      for (int64_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(v[j]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t total = 0;
      int8_t* out = q + i * kp + b * block;
      for (int64_t j = 0; j < block; ++j) {
        const float r = std::nearbyint(v[j] * inv);
        const int32_t c = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, r)));
        out[j] = static_cast<int8_t>(c);
        total += c;
      }
      s[i * nb + b] = amax / 127.0f;
      sums[i * nb + b] = total;
    }
  }
}

// ---------------------------------------------------------------- small helpers

#if defined(EFFNB_QAVX2)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}
#endif

// fp16 scale -> fp32: one F16C instruction where available (c10's portable
// conversion is a dozen integer instructions, paid once per group per row)
inline float half_to_float(const at::Half& h) {
#if defined(__F16C__)
  return _cvtsh_ss(h.x);
#else
  return static_cast<float>(h);
#endif
}

// Threads over output rows; each row against the tokens in tiles of up to 4, the tile size a
// compile-time constant: tile(std::integral_constant<int, MT>, row, i0) runs one tile.
template <class Tile>
void over_rows_in_token_tiles(int64_t n, int64_t m, Tile&& tile) {
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t row = 0; row < n; ++row) {
    for (int64_t i0 = 0; i0 < m; i0 += 4) {
      switch (std::min<int64_t>(4, m - i0)) {
        case 1: tile(std::integral_constant<int, 1>{}, row, i0); break;
        case 2: tile(std::integral_constant<int, 2>{}, row, i0); break;
        case 3: tile(std::integral_constant<int, 3>{}, row, i0); break;
        default: tile(std::integral_constant<int, 4>{}, row, i0); break;
      }
    }
  }
}

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
      const __m128i va = _mm256_castsi256_si128(v), vb = _mm256_extracti128_si256(v, 1);
      const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(va));
      const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(va, 8)));
      const __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(vb));
      const __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(vb, 8)));
      for (int t = 0; t < MT; ++t) {
        const float* x = A.xp + (i0 + t) * A.kp + k;
        acc[t] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(x), acc[t]);
        acc[t] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), acc[t]);
        acc[t] = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), acc[t]);
        acc[t] = _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), acc[t]);
      }
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

// ---------------------------------------------------------------- int8 weights

at::Tensor quant_w8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, bool a8) {
  check_cpu_contig(q, "q", at::kChar);
  check_cpu_contig(scales, "scales", at::kFloat);
  TORCH_CHECK(q.dim() == 2 && q.size(1) % 32 == 0, "effnb quant: q must be [N, Kp] with Kp a multiple of 32");
  const int64_t n = q.size(0), kp = q.size(1);
  TORCH_CHECK(scales.numel() == n, "effnb quant: scales must have one value per output row (", n, ")");
  TORCH_CHECK(kp < (int64_t{1} << 17), "effnb quant: K=", kp, " is too long for int32 accumulation");
  check_x(x, kp);
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const std::vector<float> xp = pad_rows(x, kp);
  std::vector<int8_t> xq;
  std::vector<float> xs;
  std::vector<int32_t> xsum;
  if (a8) {
    xq.resize(m * kp);
    xs.resize(m);
    xsum.resize(m);
    quantize_acts(xp.data(), m, kp, kp, xq.data(), xs.data(), xsum.data());
  }
  const int8_t* pq = q.data_ptr<int8_t>();
  const float* ps = scales.data_ptr<float>();
  float* py = y.data_ptr<float>();
  const Int8Args args{pq, ps, kp, xp.data(), xq.data(), xs.data()};
  over_rows_in_token_tiles(n, m, [&](auto mt, int64_t row, int64_t i0) {
    int8_tile<decltype(mt)::value>(args, row, i0, a8, py, n);
  });
  return y;
}


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
      const __m128i ua = _mm256_castsi256_si128(u), ub = _mm256_extracti128_si256(u, 1);
      const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(ua));
      const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(ua, 8)));
      const __m256 f2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(ub));
      const __m256 f3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(ub, 8)));
      for (int t = 0; t < MT; ++t) {
        const float* x = A.xp + (i0 + t) * A.kp + 32 * c;
        s[t] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(x), s[t]);
        s[t] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), s[t]);
        s[t] = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), s[t]);
        s[t] = _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), s[t]);
      }
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
// ---------------------------------------------------------------- int4 x int8 block kernel (AVX2, VNNI)
//
// R output rows x T tokens at once. Per 32-weight chunk: R weight vectors are
// unpacked once and each token's 32 activation bytes are loaded once, then
// R * T maddubs (or vpdpbusd). Against one row x 4 tokens (the first version)
// this cuts activation loads per multiply by R; larger tiles than 2 x 3 ran
// slower here (AVX2 has 16 vector registers and the sums spill). int16 sums
// are flushed to fp32 every group or every 8 chunks (8 * 2 * 15 * 127 < 32767).

// one 32-weight chunk (HI: the high nibbles of its 64-weight block at byte `off`)
// into the R x T int16 sums
template <int R, int T, bool HI>
inline __attribute__((always_inline)) void int4_a8_chunk(const uint8_t* const* w, const int8_t* const* a,
                                                         int64_t off, int64_t k, __m256i (&s16)[R][T]) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  __m256i u[R];
  for (int r = 0; r < R; ++r) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[r] + off));
    u[r] = _mm256_and_si256(HI ? _mm256_srli_epi16(v, 4) : v, mask);
  }
  for (int t = 0; t < T; ++t) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[t] + k));
    for (int r = 0; r < R; ++r) {
#if defined(EFFNB_QDOT32)
      s16[r][t] = EFFNB_DPBUSD(s16[r][t], u[r], x);  // int32 lanes here
#else
      s16[r][t] = _mm256_add_epi16(s16[r][t], _mm256_maddubs_epi16(u[r], x));
#endif
    }
  }
}

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

// all tokens against rows [row0, row0 + R)
template <int R>
void int4_a8_rows(const Int4Args& A, int64_t row0, int64_t m, float* py, int64_t n) {
  int64_t i0 = 0;
  for (; i0 + EFFNB_Q4_T <= m; i0 += EFFNB_Q4_T) int4_a8_block<R, EFFNB_Q4_T>(A, row0, i0, py, n);
  for (; i0 < m; ++i0) int4_a8_block<R, 1>(A, row0, i0, py, n);
}

// Threads over blocks of R output rows, a few blocks at a time as threads become free; the last
// n % R rows one at a time. Below EFFNB_Q4_RMIN tokens the callers take R = 1: at M = 1 the weights
// stream from memory, and rows one after another is the pattern the prefetchers follow best
// (two interleaved rows were read more slowly cold on the machine of chapter 02).
template <int R, class Args>
void over_row_blocks(const Args& A, int64_t m, int64_t n, float* py,
                     void (*rows_r)(const Args&, int64_t, int64_t, float*, int64_t),
                     void (*rows_1)(const Args&, int64_t, int64_t, float*, int64_t)) {
  static_assert(R >= 1 && EFFNB_Q4_T >= 1, "a tile needs at least one row and one token");
  const int64_t nblocks = (n + R - 1) / R;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t row0 = b * R;
    if (n - row0 >= R) {
      rows_r(A, row0, m, py, n);
    } else {
      for (int64_t row = row0; row < n; ++row) rows_1(A, row, m, py, n);
    }
  }
}
#endif

// ---------------------------------------------------------------- int4 weights

at::Tensor quant_w4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                           const at::Tensor& zeros, int64_t group, bool a8) {
  check_cpu_contig(packed, "packed", at::kByte);
  check_cpu_contig(scales, "scales", at::kHalf);
  TORCH_CHECK(group >= 32 && group % 32 == 0, "effnb quant: group must be a multiple of 32, got ", group);
  TORCH_CHECK(packed.dim() == 2, "effnb quant: packed must be [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2;
  TORCH_CHECK(kp % 64 == 0 && kp % group == 0, "effnb quant: packed K=", kp,
              " must be a multiple of 64 and of the group ", group);
  const int64_t ng = kp / group;
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.size(1) == ng,
              "effnb quant: scales must be [N, Kp/group] = [", n, ", ", ng, "]");
  const bool has_zero = zeros.numel() > 0;
  if (has_zero) {
    check_cpu_contig(zeros, "zeros", at::kByte);
    TORCH_CHECK(zeros.dim() == 2 && zeros.size(0) == n && zeros.size(1) == ng,
                "effnb quant: zeros must be [N, Kp/group] = [", n, ", ", ng, "] or empty");
  }
  check_x(x, kp);
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const std::vector<float> xp = pad_rows(x, kp);
  // per token and group: activation scale and sum (the sum takes out the zero point)
  std::vector<int8_t> xq;
  std::vector<float> xs, xsumf(m * ng);
  std::vector<int32_t> xsum;
  if (a8) {
    xq.resize(m * kp);
    xs.resize(m * ng);
    xsum.resize(m * ng);
    quantize_acts(xp.data(), m, kp, group, xq.data(), xs.data(), xsum.data());
  } else {
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
  for (size_t j = 0; j < xc.size(); ++j) xc[j] = xs[j] * static_cast<float>(xsum[j]);
  const Int4Args args{pw, psc, pz, kp, ng, group, xp.data(), xsumf.data(), xq.data(), xs.data(), xsum.data(), xc.data()};
#if defined(EFFNB_QAVX2)
  if (a8) {
    if (m >= EFFNB_Q4_RMIN)
      over_row_blocks<EFFNB_Q4_R>(args, m, n, py, &int4_a8_rows<EFFNB_Q4_R>, &int4_a8_rows<1>);
    else
      over_row_blocks<1>(args, m, n, py, &int4_a8_rows<1>, &int4_a8_rows<1>);
    return y;
  }
#endif
  over_rows_in_token_tiles(n, m, [&](auto mt, int64_t row, int64_t i0) {
    int4_tile<decltype(mt)::value>(args, row, i0, a8, py, n);
  });
  return y;
}

// ---------------------------------------------------------------- DGQ: int4 codes, integer group scales
//
// DGQ's dual-grained format: W[n, k] = s[n] * kint[n, g] * (u[n, k] - 8), u in [0, 15] (the int4
// layout above), kint in [1, 15] an integer per group, s one fp32 per row. Activations are int8 with
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

template <int R>
void dgq_rows(const DgqArgs& A, int64_t row0, int64_t m, float* py, int64_t n) {
  int64_t i0 = 0;
  for (; i0 + EFFNB_Q4_T <= m; i0 += EFFNB_Q4_T) dgq_block<R, EFFNB_Q4_T>(A, row0, i0, py, n);
  for (; i0 < m; ++i0) dgq_block<R, 1>(A, row0, i0, py, n);
}
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

at::Tensor quant_dgq_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& kint,
                            const at::Tensor& scale, int64_t group) {
  check_cpu_contig(packed, "packed", at::kByte);
  check_cpu_contig(kint, "kint", at::kByte);
  check_cpu_contig(scale, "scale", at::kFloat);
  TORCH_CHECK(group >= 64 && group % 64 == 0, "effnb quant: the DGQ group must be a multiple of 64, got ", group);
  TORCH_CHECK(packed.dim() == 2, "effnb quant: packed must be [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2;
  TORCH_CHECK(kp % group == 0, "effnb quant: packed K=", kp, " must be a multiple of the group ", group);
  TORCH_CHECK(kp <= 65536, "effnb quant: K=", kp, " is too long for DGQ's int32 sums (at most 65536)");
  const int64_t ng = kp / group;
  TORCH_CHECK(kint.dim() == 2 && kint.size(0) == n && kint.size(1) == ng,
              "effnb quant: kint must be [N, Kp/group] = [", n, ", ", ng, "]");
  TORCH_CHECK(scale.numel() == n, "effnb quant: scale must have one value per output row (", n, ")");
  check_x(x, kp);
  const int64_t m = x.size(0);
  at::Tensor y = at::empty({m, n}, x.options());
  if (m == 0 || n == 0) return y;
  const std::vector<float> xp = pad_rows(x, kp);
  std::vector<int8_t> xq(m * kp);
  std::vector<float> xs(m);
  std::vector<int32_t> xsum(m), gsum(m * ng, 0);
  quantize_acts(xp.data(), m, kp, kp, xq.data(), xs.data(), xsum.data());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < kp; ++k) gsum[i * ng + k / group] += xq[i * kp + k];
  const DgqArgs args{packed.data_ptr<uint8_t>(), kint.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                     kp, ng, group, xq.data(), xs.data(), gsum.data()};
  float* py = y.data_ptr<float>();
#if defined(EFFNB_QAVX2)
  if (m >= EFFNB_Q4_RMIN)
    over_row_blocks<EFFNB_Q4_R>(args, m, n, py, &dgq_rows<EFFNB_Q4_R>, &dgq_rows<1>);
  else
    over_row_blocks<1>(args, m, n, py, &dgq_rows<1>, &dgq_rows<1>);
#else
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t row = 0; row < n; ++row)
    for (int64_t i = 0; i < m; ++i) dgq_scalar(args, row, i, py, n);
#endif
  return y;
}

}  // namespace

// which integer dot-product path this build runs (every result names it)
#if defined(EFFNB_QDOT32)
EFFNB_ISA_PATH(EFFNB_QDOT32_NAME)
#elif defined(EFFNB_QAVX2)
EFFNB_ISA_PATH("avx2")
#else
EFFNB_ISA_PATH("scalar")
#endif

TORCH_LIBRARY_FRAGMENT(effnb, m) {
  m.def("quant_dgq_linear(Tensor x, Tensor packed, Tensor kint, Tensor scale, int group) -> Tensor");
  m.def("quant_w8_linear(Tensor x, Tensor q, Tensor scales, bool a8) -> Tensor");
  m.def("quant_w4_linear(Tensor x, Tensor packed, Tensor scales, Tensor zeros, int group, bool a8) -> Tensor");
}

TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("quant_w8_linear", &quant_w8_linear);
  m.impl("quant_w4_linear", &quant_w4_linear);
  m.impl("quant_dgq_linear", &quant_dgq_linear);
}
