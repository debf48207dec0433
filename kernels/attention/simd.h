// The attention family's vector layer: one set of float vector operations per ISA path
// (AVX-512, AVX2+FMA, plain C++ with one lane), so each kernel is written once.
//
//   V::W lanes;  load/store (whole vector), loadn/storen (the first n <= W lanes: masked, zero fill),
//   loadn_or (masked, `fill` in the other lanes), keep (lanes >= n zeroed), set1, fma, max, exp,
//   reduce_add, reduce_max, transpose_sum(acc[W]): lane r = the sum of acc[r]'s lanes (W dot
//   products reduced at once).
#pragma once

#include "effnb.h"

#include <cmath>
#include <limits>

namespace effnb_attention {

// exp(x) = 2^n e^r, n = round(x log2 e), |r| <= ln2/2, e^r by its degree-7 Taylor polynomial
// (truncation error < 6e-9 relative); ln 2 split in two so that r keeps full precision.
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;             // exact in 10 bits: n * kLn2Hi is exact
constexpr float kLn2Lo = -2.12194440054690583e-4f;  // ln 2 - kLn2Hi
constexpr float kExpC[8] = {1.f, 1.f, 1.f / 2, 1.f / 6, 1.f / 24, 1.f / 120, 1.f / 720, 1.f / 5040};

#if defined(__AVX512F__) && defined(__AVX512BW__)  // as EFFNB_ISA_LEVEL names it
struct V {
  static constexpr int W = 16;
  using T = __m512;
  using M = __mmask16;
  static M mask(int n) { return static_cast<M>((1u << n) - 1); }
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float x) { return _mm512_set1_ps(x); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static T loadn_or(const float* p, int n, float fill) { return _mm512_mask_loadu_ps(set1(fill), mask(n), p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static void storen(float* p, T v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static T max(T a, T b) { return _mm512_max_ps(a, b); }
  static T keep(T v, int n) { return _mm512_maskz_mov_ps(mask(n), v); }  // lanes >= n set to 0
  static float reduce_add(T v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(T v) { return _mm512_reduce_max_ps(v); }
  static T exp(T x) {
    x = _mm512_max_ps(x, set1(-104.f));  // below: 0 after scalef, no NaN from a huge n
    const T n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(kLog2e)), _MM_FROUND_TO_NEAREST_INT);
    T r = _mm512_fnmadd_ps(n, set1(kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, set1(kLn2Lo), r);
    T p = set1(kExpC[7]);
    for (int i = 6; i >= 0; --i) p = _mm512_fmadd_ps(p, r, set1(kExpC[i]));
    return _mm512_scalef_ps(p, n);  // p 2^n, underflowing to 0 as it should
  }
  // 16 accumulators -> one vector of their 16 sums: pairs of lanes, then halves of 128-bit
  // lanes, then 128-bit lanes across registers; 45 instructions for 16 dot products.
  static T transpose_sum(const T* a) {
    T b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i)
      b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
      c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    // c[i]: 128-bit lane L holds rows 4i..4i+3, partial over lane L of the inputs
    for (int i = 0; i < 2; ++i)
      d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    // d[i] lanes: [rows 8i..+3 (L0+L1), rows 8i..+3 (L2+L3), rows 8i+4..+7 (L0+L1), rows 8i+4..+7 (L2+L3)]
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
  }
};

#elif defined(__AVX2__) && defined(__FMA__)
struct V {
  static constexpr int W = 8;
  using T = __m256;
  static __m256i mask(int n) {
    alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - n));
  }
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float x) { return _mm256_set1_ps(x); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static T loadn_or(const float* p, int n, float fill) {
    const __m256i m = mask(n);
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void storen(float* p, T v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static T max(T a, T b) { return _mm256_max_ps(a, b); }
  static T keep(T v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(mask(n))); }
  static float reduce_add(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float reduce_max(T v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static T exp(T x) {
    x = _mm256_max_ps(x, set1(-87.f));  // 2^n stays a normal float (n >= -126); e^-87 ~ 0 for softmax
    const T n = _mm256_round_ps(_mm256_mul_ps(x, set1(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm256_fnmadd_ps(n, set1(kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, set1(kLn2Lo), r);
    T p = set1(kExpC[7]);
    for (int i = 6; i >= 0; --i) p = _mm256_fmadd_ps(p, r, set1(kExpC[i]));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static T transpose_sum(const T* a) {  // as the AVX-512 one, two levels fewer
    T b[4], c[2];
    for (int i = 0; i < 4; ++i)
      b[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      c[i] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm256_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(c[0], c[1], 0x20), _mm256_permute2f128_ps(c[0], c[1], 0x31));
  }
};

#else
struct V {  // one lane: the kernels' loops over vectors become plain loops over floats
  static constexpr int W = 1;
  using T = float;
  static T zero() { return 0.f; }
  static T set1(float x) { return x; }
  static T load(const float* p) { return *p; }
  static T loadn(const float* p, int n) { return n > 0 ? *p : 0.f; }
  static T loadn_or(const float* p, int n, float fill) { return n > 0 ? *p : fill; }
  static void store(float* p, T v) { *p = v; }
  static void storen(float* p, T v, int n) {
    if (n > 0) *p = v;
  }
  static T fma(T a, T b, T c) { return a * b + c; }
  static T add(T a, T b) { return a + b; }
  static T mul(T a, T b) { return a * b; }
  static T max(T a, T b) { return a > b ? a : b; }
  static T keep(T v, int n) { return n > 0 ? v : 0.f; }
  static float reduce_add(T v) { return v; }
  static float reduce_max(T v) { return v; }
  static T exp(T x) { return std::exp(x); }
  static T transpose_sum(const T* a) { return a[0]; }
};
#endif

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// exp(a - b) for the online softmax's rescale: 0 when a is -inf (nothing seen yet).
inline float rescale(float a, float b) { return a == kNegInf ? 0.f : std::exp(a - b); }

}  // namespace effnb_attention
