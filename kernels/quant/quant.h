// Weight-only (W8A16, W4A16) and integer (W8A8, W4A8) linear layers as torch custom operators.
//
//   torch.ops.effnb.quant_w8_linear(x, q, scales, a8)                  -> y = x @ W^T
//   torch.ops.effnb.quant_w4_linear(x, packed, scales, zeros, group, a8) -> y = x @ W^T
//   torch.ops.effnb.quant_w4a8_panels(x, packed, scales, zeros, group, n) -> y = x @ W^T (int4 panels)
//   torch.ops.effnb.quant_dgq_linear(x, packed, kint, scale, group)      -> y = x @ W^T (DGQ, W4A8)
//   torch.ops.effnb.quant_ternary_linear(x, packed, scales)              -> y = x @ W^T (W2A8 ternary)
//   torch.ops.effnb.quant_binary_linear(x, packed, scales)               -> y = x @ W^T (W1A4 binary)
//
// ternary.cpp and binary.cpp explain their formats: 2-bit codes c = w + 1 in {0, 1, 2}, four
// per byte (x the int8 codes, the u8 x s8 step below), and sign bits x 4-bit activation
// bit-planes by popcount (its own path: quant_binary_path()).
//
// x is fp32 [M, K]; y is fp32 [M, N]. The schemas (and fake kernels) are declared in
// effnb/quant/ops.py; quant.cpp only registers the CPU implementations, which live in
// int8.cpp, int4.cpp and dgq.cpp. This header holds what they share: the code-path
// macros, input checks, activation quantization, the a16 dequantize-and-fma step, the
// int4 x int8 chunk step and the threading over blocks of rows.
// effnb/quant/formats.py builds the packed weights and explains the formats; in short:
//
// int8, per output channel:  W[n, k] = scales[n] * q[n, k],  q int8 in [-127, 127], [N, Kp]
//   or, for W8A8 where quant_a8_layout() is "panels": uint8 [ceil(N/32), 32 Kp], q + 128 with
//   columns 32p..32p+31 as [Kp/4][32][4] (panel.h reads it in place; formats.to_panels)
// int4, per group of G:      W[n, k] = scales[n, g] * (u[n, k] - zeros[n, g]),  g = k / G
//   (for W4A8 where quant_a8_layout() is "panels": quant_w4a8_panels, formats.to_panels' layout)
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
// unpacked weight vector serves T tokens and each activation load R rows. With
// AVX-512 VNNI, groups of whole 64-blocks run int4_a8_block_zmm instead: 512-bit
// vectors, 8 rows x 1 token at M = 1, 4 rows x 4 tokens from M = 2, the sums of four
// rows (M = 1) or four tokens folded into one vector per group (EFFNB_Q4_ZMM).
// W4A16: each row is walked once per tile of up to 4 tokens.
// From EFFNB_QP_MMIN (16) tokens, AVX-512 VNNI builds run W8A8 and W4A8 on column panels
// instead: output columns in the lanes, the weights repacked per call (panel.h).
// int8: one row against up to 4 tokens, 32 weights at a time, in registers.
//
// Paths: AVX2 when the library is built for x86-64-v3 or higher (decided at
// compile time; the build is keyed by the CPU's features, so each feature set
// gets its own). With AVX512-VNNI (+VL) or AVX-VNNI, the integer dot products
// use vpdpbusd into int32 lanes instead of maddubs + madd; effnb/ext.py adds the
// flag when the CPU has it. Plain C++ loops otherwise. EFFNB_ISA_PATH in quant.cpp
// names the path a build runs.

#pragma once

#include "effnb.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#define EFFNB_QAVX2 1
// u8 x s8 dot products into int32 lanes. With VNNI one instruction (vpdpbusd)
// does it; the build for such a CPU has the flag (effnb/ext.py). The plain AVX2
// path instead sums pairs into int16 (maddubs) and widens once per group.
// EFFNB_QDOT32_EMULATE compiles the VNNI code path with an AVX2 stand-in for
// vpdpbusd, so that its accumulation logic is tested on CPUs without VNNI; asked
// for explicitly, it wins over the real instruction.
#if defined(EFFNB_QDOT32_EMULATE)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx2-emulated-vnni"
// exact for every unsigned x signed byte pair (maddubs would saturate past 2 x 255 x 127 in int16):
// even and odd bytes widened to int16 apart, two madd give the four products of each int32 lane
#define EFFNB_DPBUSD(acc, u, s)                                                                       \
  _mm256_add_epi32(                                                                                 \
      (acc), _mm256_add_epi32(                                                                      \
                 _mm256_madd_epi16(_mm256_and_si256((u), _mm256_set1_epi16(0x00FF)),                \
                                   _mm256_srai_epi16(_mm256_slli_epi16((s), 8), 8)),                \
                 _mm256_madd_epi16(_mm256_srli_epi16((u), 8), _mm256_srai_epi16((s), 8))))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx512-vnni"
#define EFFNB_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#elif defined(__AVXVNNI__)
#define EFFNB_QDOT32 1
#define EFFNB_QDOT32_NAME "avx-vnni"
#define EFFNB_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
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
// W4A8 with 512-bit registers (int4.cpp, int4_a8_block_zmm): one vpdpbusd per 64-weight block,
// row and token, for groups of whole 64-blocks. On when the build has AVX-512 VNNI + BW (not
// under the AVX2 stand-in); -DEFFNB_Q4_ZMM=0 keeps the 256-bit kernel. Its tile: EFFNB_Q4Z_R1
// rows x 1 token below EFFNB_Q4Z_MMIN tokens, EFFNB_Q4Z_R rows x EFFNB_Q4Z_T (1, 2 or 4) tokens
// from there on; EFFNB_Q4Z_CHUNK row blocks handed to a thread at a time; at one token each
// row is prefetched EFFNB_Q4Z_PF bytes ahead (0: off; 256 to 512 helped cold, 2048 did not).
// EFFNB_Q4Z_SHIFT=1 unpacks the high nibbles with a shift instead of the x16 mask (measured
// the same). Chosen on a 2-core AVX-512 VNNI Xeon over 2 or 4 rows at M = 1, 2 or 3 x 4 above.
#if !defined(EFFNB_Q4_ZMM)
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(EFFNB_QDOT32_EMULATE)
#define EFFNB_Q4_ZMM 1
#else
#define EFFNB_Q4_ZMM 0
#endif
#endif
#if EFFNB_Q4_ZMM && (!defined(__AVX512VNNI__) || !defined(__AVX512BW__) || defined(EFFNB_QDOT32_EMULATE))
#error "EFFNB_Q4_ZMM needs AVX-512 VNNI and BW (and not EFFNB_QDOT32_EMULATE)"
#endif
#ifndef EFFNB_Q4Z_SHIFT
#define EFFNB_Q4Z_SHIFT 0
#endif
#ifndef EFFNB_Q4Z_R1
#define EFFNB_Q4Z_R1 8
#endif
#ifndef EFFNB_Q4Z_MMIN
#define EFFNB_Q4Z_MMIN 2
#endif
#ifndef EFFNB_Q4Z_R
#define EFFNB_Q4Z_R 4
#endif
#ifndef EFFNB_Q4Z_T
#define EFFNB_Q4Z_T 4
#endif
#ifndef EFFNB_Q4Z_PF
#define EFFNB_Q4Z_PF 512
#endif
#ifndef EFFNB_Q4Z_CHUNK
#define EFFNB_Q4Z_CHUNK 16
#endif
// At one token, AMD CPUs also fetch the next row block (R contiguous rows) into L1 as one linear
// stream while the current one computes (int4.cpp, next_block_ahead; EFFNB_W4A8_AHEAD=1|0 forces it)
#ifndef EFFNB_Q4Z_NEXT
#define EFFNB_Q4Z_NEXT 1
#endif
#else
#if defined(EFFNB_Q4_ZMM) && EFFNB_Q4_ZMM
#error "EFFNB_Q4_ZMM needs AVX-512 VNNI and BW"
#endif
#undef EFFNB_Q4_ZMM
#define EFFNB_Q4_ZMM 0
#endif

namespace effnb::quant {

// ---------------------------------------------------------------- checks

// a CPU, contiguous tensor of dtype dt (effnb.quant's packing makes every one of them)
inline void check_tensor(const at::Tensor& t, at::ScalarType dt, const char* op, const char* name) {
  effnb::check_cpu_contiguous(t, op, name);
  effnb::check_dtype(t, dt, op, name);
}

inline void check_x(const at::Tensor& x, int64_t kp, const char* op) {
  check_tensor(x, at::kFloat, op, "x");
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D [M, K], got ", x.dim(), " dims");
  TORCH_CHECK(x.size(1) <= kp, op, ": x has K=", x.size(1), " columns but the weight was packed for K padded to ", kp);
}

// x [M, K] -> xp [M, Kp], zero padded (so every kernel can run whole blocks)
inline std::vector<float> pad_rows(const at::Tensor& x, int64_t kp) {
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

// With AVX2 eight values at a time (the same float operations, so the same codes), and
// tokens spread over the threads from 4 of them on: at M = 64 the scalar loop was ~8% of a
// 4096 x 4096 W4A8 call.
inline void quantize_acts(const float* xp, int64_t m, int64_t kp, int64_t block, int8_t* q, float* s, int32_t* sums) {
  const int64_t nb = kp / block;
  const auto row = [&](int64_t i) __attribute__((always_inline)) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = xp + i * kp + b * block;
      float amax = 0.0f;
      int64_t j0 = 0;
#if defined(EFFNB_QAVX2)
      const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
      if (block >= 8) {
        __m256 mx = _mm256_setzero_ps();
        for (; j0 + 8 <= block; j0 += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(v + j0), absmask));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        amax = _mm_cvtss_f32(h);
      }
#endif
      for (int64_t j = j0; j < block; ++j) amax = std::max(amax, std::fabs(v[j]));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t total = 0;
      int8_t* out = q + i * kp + b * block;
      j0 = 0;
#if defined(EFFNB_QAVX2)
      {
        const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
        __m256i tot = _mm256_setzero_si256();
        for (; j0 + 8 <= block; j0 += 8) {
          const __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + j0), vinv),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          const __m256i c = _mm256_cvttps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, r)));
          tot = _mm256_add_epi32(tot, c);
          const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
          _mm_storel_epi64(reinterpret_cast<__m128i*>(out + j0), _mm_packs_epi16(w16, w16));
        }
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(tot), _mm256_extracti128_si256(tot, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
        total = _mm_cvtsi128_si32(t4);
      }
#endif
      for (int64_t j = j0; j < block; ++j) {
        const float r = std::nearbyint(v[j] * inv);
        const int32_t c = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, r)));
        out[j] = static_cast<int8_t>(c);
        total += c;
      }
      s[i * nb + b] = amax / 127.0f;
      sums[i * nb + b] = total;
    }
  };
  if (m < 4) {  // no parallel region at all: even one that runs on one thread costs a one-token call its start-up
    for (int64_t i = 0; i < m; ++i) row(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) row(i);
}

// Activations as every kernel reads them: x padded to Kp with zeros (whole blocks everywhere)
// and, for the integer paths, int8 codes with one scale and one code sum per `block` values.
struct Acts {
  std::vector<float> xp;
  std::vector<int8_t> xq;
  std::vector<float> xs;
  std::vector<int32_t> xsum;
};

// The integer paths read only the codes: where K is already whole blocks (x.size(1) == Kp) they
// are quantized from x itself and xp stays empty (the padded copy was a third of the activation
// work at M = 64).
inline Acts prepare_acts(const at::Tensor& x, int64_t kp, int64_t block, bool a8) {
  const bool direct = a8 && x.size(1) == kp;
  Acts a{direct ? std::vector<float>{} : pad_rows(x, kp), {}, {}, {}};
  if (a8) {
    const int64_t m = x.size(0), blocks = m * (kp / block);
    a.xq.resize(m * kp);
    a.xs.resize(blocks);
    a.xsum.resize(blocks);
    quantize_acts(direct ? x.data_ptr<float>() : a.xp.data(), m, kp, block, a.xq.data(), a.xs.data(), a.xsum.data());
  }
  return a;
}

// every op's start: x checked against the packed K, and y [M, N] allocated
inline at::Tensor output_for(const at::Tensor& x, int64_t kp, int64_t n, const char* op) {
  check_x(x, kp, op);
  return at::empty({x.size(0), n}, x.options());
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

// acc[t] += 32 weights (bytes of v, signed int8 or unsigned codes) times token t's 32 fp32
// activations at x0 + t * stride: the dequantize-and-fma step of the a16 paths
template <int MT, bool SIGNED>
inline __attribute__((always_inline)) void fma_32_bytes(__m256i v, const float* x0, int64_t stride,
                                                         __m256 (&acc)[MT]) {
  const auto to_ps = [](__m128i b) {
    return _mm256_cvtepi32_ps(SIGNED ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b));
  };
  const __m128i va = _mm256_castsi256_si128(v), vb = _mm256_extracti128_si256(v, 1);
  const __m256 f0 = to_ps(va), f1 = to_ps(_mm_srli_si128(va, 8)), f2 = to_ps(vb), f3 = to_ps(_mm_srli_si128(vb, 8));
  for (int t = 0; t < MT; ++t) {
    const float* x = x0 + t * stride;
    acc[t] = _mm256_fmadd_ps(f0, _mm256_loadu_ps(x), acc[t]);
    acc[t] = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + 8), acc[t]);
    acc[t] = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + 16), acc[t]);
    acc[t] = _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + 24), acc[t]);
  }
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

// all tokens against rows [row0, row0 + R): tiles of EFFNB_Q4_T tokens, then one token at a time.
// Kernel::block<R, T> is a block kernel (int4_a8_block, dgq_block) as a type, so it inlines.
template <int R, class Kernel, class Args>
void tokens_against_rows(const Args& A, int64_t row0, int64_t m, float* py, int64_t n) {
  int64_t i0 = 0;
  for (; i0 + EFFNB_Q4_T <= m; i0 += EFFNB_Q4_T) Kernel::template block<R, EFFNB_Q4_T>(A, row0, i0, py, n);
  for (; i0 < m; ++i0) Kernel::template block<R, 1>(A, row0, i0, py, n);
}

// Threads over blocks of R output rows, a few blocks at a time as threads become free; the last
// n % R rows one at a time. Below EFFNB_Q4_RMIN tokens the callers take R = 1: at M = 1 the weights
// stream from memory, and rows one after another is the pattern the prefetchers follow best
// (two interleaved rows were read more slowly cold on the machine of chapter 02).
template <int R, class Kernel, class Args>
void over_row_blocks(const Args& A, int64_t m, int64_t n, float* py) {
  static_assert(R >= 1 && EFFNB_Q4_T >= 1, "a tile needs at least one row and one token");
  const int64_t nblocks = (n + R - 1) / R;
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t row0 = b * R;
    if (n - row0 >= R) {
      tokens_against_rows<R, Kernel>(A, row0, m, py, n);
    } else {
      for (int64_t row = row0; row < n; ++row) tokens_against_rows<1, Kernel>(A, row, m, py, n);
    }
  }
}
#endif

at::Tensor quant_w8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, bool a8);
std::string quant_a8_layout(const at::Tensor& probe);
at::Tensor quant_w4a8_panels(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                             const at::Tensor& zeros, int64_t group, int64_t n);
at::Tensor quant_w4_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                           const at::Tensor& zeros, int64_t group, bool a8);
at::Tensor quant_dgq_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& kint,
                            const at::Tensor& scale, int64_t group);
at::Tensor quant_ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales);
at::Tensor quant_binary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales);
std::string quant_binary_path(const at::Tensor& probe);
void quant_peak_int8(const at::Tensor& out, int64_t iters);
int64_t quant_peak_chains(const at::Tensor& out);
int64_t quant_peak_lanes(const at::Tensor& out);

}  // namespace effnb::quant
