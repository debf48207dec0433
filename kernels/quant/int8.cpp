// int8 weights per output channel: W8A16 and W8A8 (quant_w8_linear). See quant.h.
#include "panel.h"

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

#if defined(EFFNB_QDOT32)
// ---------------------------------------------------------------- W8A8 register tile (VNNI)
//
// R rows x T tokens, 32 weights per step. vpdpbusd wants unsigned x signed bytes:
// the weights become unsigned by flipping their sign bit (w ^ 0x80 = w + 128, once
// per load, shared by the T tokens) and the activations stay signed, so
//   sum (w + 128) a = sum w a + 128 sum a,
// and the token's code sum (computed once when the activations are quantized)
// takes the 128 back out: no per-token sign trick, no int16 stage. Each activation
// load serves R rows, each weight load T tokens. Below T tokens the weights stream
// from memory and rows are walked one after another (interleaved rows read cold at
// under half the speed of one row here). The step is 32 bytes (256-bit registers) or,
// with EFFNB_Q8_ZMM, 64: on the AMD Zen 4 of chapter 02 a 512-bit vpdpbusd had half the
// throughput of two 256-bit ones in our development runs, on the Intel Xeon the same rate
// as one (W8A8 at M = 64 then ran ~1.3x faster); -DEFFNB_Q8_ZMM=0 keeps 32 bytes. With AVX-512VL there
// are 32 registers (4 x 4 tile: 16 accumulators; 4 x 6 spilled under GCC 12); AVX2
// has 16 (2 x 4). The K loop is unrolled 4 times: without it GCC copies every
// accumulator between registers once per step, which halved the speed here.
#if defined(__AVX512VL__)
constexpr int kW8R = 4, kW8T = 4;
#else
constexpr int kW8R = 2, kW8T = 4;
#endif

// K is walked in blocks of kW8KB bytes, partial sums waiting in `part` between blocks, so that a
// block of the R weight rows stays in cache while every token tile passes over it. On the machine of
// chapter 02 smaller blocks (512 B to 2 KB) were slower at K = 4096 than none: the loads come from
// L2 fast enough, and each block costs its partial sums' stores and loads.
constexpr int64_t kW8KB = 4096;

// The vector a step works on: 32 bytes (every VNNI build) or 64 (EFFNB_Q8_ZMM: AVX-512 VNNI, where
// one 512-bit vpdpbusd ran at the rate of a 256-bit one on the Intel Xeon of chapter 02, so twice the
// bytes per instruction). K is a multiple of 32, so a 64-byte walk may end with half a vector.
struct Ymm {
  using V = __m256i;
  static constexpr int64_t kBytes = 32;
  static V zero() { return _mm256_setzero_si256(); }
  static V load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static V load_half(const int8_t* p) { return load(p); }  // never called: a 32-byte walk has no half step
  static V flip(V v) { return _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80))); }
  static V dot(V acc, V u, V s) { return EFFNB_DPBUSD(acc, u, s); }
  static int32_t sum(V v) { return hsum_i32(v); }
};
#ifndef EFFNB_Q8_ZMM
#define EFFNB_Q8_ZMM EFFNB_Q4_ZMM
#endif
#if EFFNB_Q8_ZMM
struct Zmm {
  using V = __m512i;
  static constexpr int64_t kBytes = 64;
  static V zero() { return _mm512_setzero_si512(); }
  static V load(const int8_t* p) { return _mm512_loadu_si512(p); }
  // the last 32 bytes of K, upper half zero: a zero weight flips to 128, times a zero activation
  static V load_half(const int8_t* p) {
    return _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V flip(V v) { return _mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))); }
  static V dot(V acc, V u, V s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static int32_t sum(V v) { return _mm512_reduce_add_epi32(v); }
};
using W8Lane = Zmm;
#else
using W8Lane = Ymm;
#endif
using W8Vec = W8Lane::V;

// one step of K at byte k: R weight vectors (sign bit flipped) against T tokens' activations
template <class L, int R, int T, bool HALF>
inline __attribute__((always_inline)) void w8a8_step(const int8_t* w0, const int8_t* x0, int64_t kp, int64_t k,
                                                     typename L::V (&acc)[R][T]) {
  typename L::V w[R];
  for (int r = 0; r < R; ++r) w[r] = L::flip(HALF ? L::load_half(w0 + r * kp + k) : L::load(w0 + r * kp + k));
  for (int t = 0; t < T; ++t) {
    const typename L::V a = HALF ? L::load_half(x0 + t * kp + k) : L::load(x0 + t * kp + k);
    for (int r = 0; r < R; ++r) acc[r][t] = L::dot(acc[r][t], w[r], a);
  }
}

template <int R, int T>
void w8a8_tile(const Int8Args& A, const int32_t* xsum, int64_t row0, int64_t i0, int64_t k0, int64_t k1,
               W8Vec* part, float* py, int64_t n) {
  using L = W8Lane;
  W8Vec acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = k0 == 0 ? L::zero() : part[r * T + t];
  const int64_t kp = A.kp;
  const int8_t* w0 = A.w + row0 * kp;
  const int8_t* x0 = A.xq + i0 * kp;
  const int64_t kfull = k0 + (k1 - k0) / L::kBytes * L::kBytes;
#pragma GCC unroll 4
  for (int64_t k = k0; k < kfull; k += L::kBytes) w8a8_step<L, R, T, false>(w0, x0, kp, k, acc);
  if (kfull < k1) w8a8_step<L, R, T, true>(w0, x0, kp, kfull, acc);
  if (k1 < kp) {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) part[r * T + t] = acc[r][t];
    return;
  }
  for (int r = 0; r < R; ++r) {
    const float sw = A.scales[row0 + r];
    for (int t = 0; t < T; ++t) {
      const int32_t dot = L::sum(acc[r][t]) - 128 * xsum[i0 + t];
      py[(i0 + t) * n + row0 + r] = sw * A.xs[i0 + t] * static_cast<float>(dot);
    }
  }
}

// tokens [i0, m) against rows [row0, row0 + R) over K [k0, k1): tiles of T tokens, then the rest
// as one smaller tile; a tile starting at token i keeps its partial sums at part + i * R
template <int R, int T = kW8T>
void w8a8_rows(const Int8Args& A, const int32_t* xsum, int64_t row0, int64_t i0, int64_t m, int64_t k0,
               int64_t k1, W8Vec* part, float* py, int64_t n) {
  for (; i0 + T <= m; i0 += T) w8a8_tile<R, T>(A, xsum, row0, i0, k0, k1, part + i0 * R, py, n);
  if constexpr (T > 1) {
    if (m > i0) w8a8_rows<R, T - 1>(A, xsum, row0, i0, m, k0, k1, part, py, n);
  }
}

// threads over blocks of kW8R rows (the last n % kW8R rows one at a time); each block walks K in
// blocks, all tokens per K block
void w8a8_blocks(const Int8Args& A, const int32_t* xsum, int64_t m, int64_t n, float* py) {
  if (m < kW8T) {  // few tokens: the weights stream from memory, and one row after another streams fastest
#pragma omp parallel
    {
      std::vector<W8Vec> part(static_cast<size_t>(m));
#pragma omp for schedule(dynamic, 32)
      for (int64_t row = 0; row < n; ++row)
        for (int64_t k0 = 0; k0 < A.kp; k0 += kW8KB)
          w8a8_rows<1>(A, xsum, row, 0, m, k0, std::min(A.kp, k0 + kW8KB), part.data(), py, n);
    }
    return;
  }
  const int64_t nblocks = (n + kW8R - 1) / kW8R;
#pragma omp parallel
  {
    std::vector<W8Vec> part(static_cast<size_t>(m * kW8R));
#pragma omp for schedule(dynamic, 8)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t row0 = b * kW8R;
      for (int64_t k0 = 0; k0 < A.kp; k0 += kW8KB) {
        const int64_t k1 = std::min(A.kp, k0 + kW8KB);
        if (n - row0 >= kW8R) {
          w8a8_rows<kW8R>(A, xsum, row0, 0, m, k0, k1, part.data(), py, n);
        } else {
          for (int64_t row = row0; row < n; ++row) w8a8_rows<1>(A, xsum, row, 0, m, k0, k1, part.data(), py, n);
        }
      }
    }
  }
}
#endif

}  // namespace

// ---------------------------------------------------------------- int8 weights

at::Tensor quant_w8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales, bool a8) {
  constexpr const char* op = "quant_w8_linear";
#if EFFNB_Q4_ZMM
  if (q.scalar_type() == at::kByte) {  // panels packed once (formats.to_panels, panel.h)
    TORCH_CHECK(a8, op, ": panel weights are for W8A8");
    check_tensor(q, at::kByte, op, "q");
    check_tensor(scales, at::kFloat, op, "scales");
    TORCH_CHECK(q.dim() == 2 && scales.dim() == 1, op, ": panel q must be [ceil(N/32), 32 Kp], scales [N]");
    const int64_t n = scales.numel(), kp = q.size(1) / panel::kCols;
    TORCH_CHECK(q.size(0) == (n + panel::kCols - 1) / panel::kCols && q.size(1) % (32 * panel::kCols) == 0, op,
                ": panel q must be [ceil(N/32), 32 Kp] with Kp a multiple of 32 (N = ", n, " scales)");
    TORCH_CHECK(kp < (int64_t{1} << 17), op, ": K=", kp, " is too long for int32 accumulation");
    at::Tensor y = output_for(x, kp, n, op);
    const int64_t m = x.size(0);
    if (m == 0 || n == 0) return y;
    const Acts act = prepare_acts(x, kp, kp, true);
    panel::run(panel::W8A8Panels{{reinterpret_cast<const int8_t*>(q.data_ptr<uint8_t>()), scales.data_ptr<float>(), kp, n,
                                  act.xq.data(), act.xs.data(), act.xsum.data()}},
               m, n, y.data_ptr<float>());
    return y;
  }
#endif
  TORCH_CHECK(q.scalar_type() == at::kChar || !a8, op, ": q is ", q.scalar_type(), ", and panels (uint8) need a build ",
              "whose quant_a8_layout() is \"panels\"; pass int8 rows (effnb.quant.ops.prepack knows which)");
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
#if EFFNB_Q4_ZMM
  if (a8 && m >= EFFNB_QP_MMIN) {
    panel::run(panel::W8A8{pq, ps, kp, n, act.xq.data(), act.xs.data(), act.xsum.data()}, m, n, py);
    return y;
  }
#endif
#if defined(EFFNB_QDOT32)
  if (a8) {
    w8a8_blocks(args, act.xsum.data(), m, n, py);
    return y;
  }
#endif
  over_rows_in_token_tiles(n, m, [&](auto mt, int64_t row, int64_t i0) {
    int8_tile<decltype(mt)::value>(args, row, i0, a8, py, n);
  });
  return y;
}

std::string quant_a8_layout(const at::Tensor& /*probe*/) { return EFFNB_Q4_ZMM ? "panels" : "rows"; }

}  // namespace effnb::quant
