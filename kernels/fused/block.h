// The three layers of a MobileNetV2 inverted-residual block, as building blocks
// that the fused and the unfused kernel (fused.cpp) share line for line.
//
// Layout: NHWC fp32. A pixel's channels are contiguous, so a 1x1 convolution
// is a matrix product over pixels (rows) and channels (columns), and the
// depthwise 3x3 convolution is a vector FMA across channels. The expanded
// activation (E, after the 1x1 expand) and the depthwise output (D) are our
// own buffers, with the channel count padded to whole SIMD vectors; padded
// weight and bias entries are zero, so the padded channels stay zero.
//
//   gemm(...)    C[P x cols] = epilogue(A[P x K] @ B[K x cols]), B packed and padded
//   dw_row(...)  one row of D = relu6(depthwise3x3(E) + bias), zero padding
#pragma once

#include "effnb.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace fused {

// ---- one vector type per ISA level (the level EFFNB_ISA_LEVEL names) ----
// The AVX-512 and AVX2 paths differ only in the intrinsics' width prefix (_mm512_ / _mm256_).
#define FUSED_SIMD(P, V)                                                                        \
  using vf = V;                                                                                 \
  inline vf vload(const float* p) { return P##_loadu_ps(p); }                                   \
  inline void vstore(float* p, vf v) { P##_storeu_ps(p, v); }                                   \
  inline vf vset1(float x) { return P##_set1_ps(x); }                                           \
  inline vf vzero() { return P##_setzero_ps(); }                                                \
  inline vf vfma(vf a, vf b, vf c) { return P##_fmadd_ps(a, b, c); }                            \
  inline vf vadd(vf a, vf b) { return P##_add_ps(a, b); }                                       \
  inline vf vclamp6(vf a) { return P##_min_ps(P##_max_ps(a, vzero()), vset1(6.0f)); }

#if defined(__AVX512F__) && defined(__AVX512BW__)
constexpr int VL = 16;
FUSED_SIMD(_mm512, __m512)
constexpr int NVMAX = 4;                                   // column vectors per micro-tile
constexpr int mr_for(int nv) { return nv >= 4 ? 6 : nv == 3 ? 8 : 12; }   // <= 24 accumulators of 32 registers
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int VL = 8;
FUSED_SIMD(_mm256, __m256)
constexpr int NVMAX = 3;
constexpr int mr_for(int nv) { return nv >= 3 ? 4 : nv == 2 ? 6 : 8; }    // <= 12 accumulators of 16 registers
#else
constexpr int VL = 1;                                      // the plain C++ path: one float is one "vector"
using vf = float;
inline vf vload(const float* p) { return *p; }
inline void vstore(float* p, vf v) { *p = v; }
inline vf vset1(float x) { return x; }
inline vf vzero() { return 0.0f; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vclamp6(vf a) { return std::min(std::max(a, 0.0f), 6.0f); }
constexpr int NVMAX = 4;
constexpr int mr_for(int) { return 4; }
#endif
#undef FUSED_SIMD

inline int64_t pad(int64_t n) { return (n + VL - 1) / VL * VL; }

// The last vector of a user-facing row may be partial: go through a small buffer.
inline vf load_part(const float* p, int64_t n) {
  if (n >= VL) return vload(p);
  alignas(64) float t[VL] = {0};
  if (n > 0) std::memcpy(t, p, n * sizeof(float));
  return vload(t);
}

inline void store_part(float* p, vf v, int64_t n) {
  if (n >= VL) return vstore(p, v);
  if (n <= 0) return;
  alignas(64) float t[VL];
  vstore(t, v);
  std::memcpy(p, t, n * sizeof(float));
}

// What happens to C = A @ B before it is stored.
struct Epilogue {
  const float* bias = nullptr;   // padded; added unless accumulate
  bool accumulate = false;       // start from C's current values (a later channel block)
  const float* res = nullptr;    // residual rows added before the store (the block input)
  int64_t ldr = 0;
  bool relu6 = false;
};

// One MR x (NV vectors) tile of C, accumulators in registers; K steps of one broadcast-FMA row each.
template <int MR, int NV>
inline void micro(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                  int64_t ncols, const Epilogue& e) {
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[i][v] = e.accumulate ? load_part(C + i * ldc + v * VL, ncols - v * VL)
                               : (e.bias ? vload(e.bias + v * VL) : vzero());
  for (int64_t k = 0; k < K; ++k) {
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * VL);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf a = vset1(A[i * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vfma(a, b[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vf r = acc[i][v];
      if (e.res) r = vadd(r, load_part(e.res + i * e.ldr + v * VL, ncols - v * VL));
      if (e.relu6) r = vclamp6(r);
      store_part(C + i * ldc + v * VL, r, ncols - v * VL);
    }
}

// All P rows for one column panel of NV vectors. The last P % MR rows go
// through zero-padded copies, so the same register tile runs them at full speed.
template <int NV>
void panel(int64_t P, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
           int64_t ldc, int64_t ncols, Epilogue e) {
  constexpr int MR = mr_for(NV);
  int64_t p = 0;
  const float* res = e.res;
  for (; p + MR <= P; p += MR) {
    e.res = res ? res + p * e.ldr : nullptr;
    micro<MR, NV>(K, A + p * lda, lda, B, ldb, C + p * ldc, ldc, ncols, e);
  }
  const int64_t rows = P - p;
  if (rows == 0) return;
  constexpr int64_t W = NV * VL;
  std::vector<float> a(MR * std::max<int64_t>(K, 1), 0.0f), c(MR * W, 0.0f), r(res ? MR * W : 0, 0.0f);
  const int64_t cols = std::min<int64_t>(ncols, W);
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(&a[i * K], A + (p + i) * lda, K * sizeof(float));
    if (e.accumulate) std::memcpy(&c[i * W], C + (p + i) * ldc, cols * sizeof(float));
    if (res) std::memcpy(&r[i * W], res + (p + i) * e.ldr, cols * sizeof(float));
  }
  e.res = res ? r.data() : nullptr;
  e.ldr = W;
  micro<MR, NV>(K, a.data(), K, B, ldb, c.data(), W, W, e);
  for (int64_t i = 0; i < rows; ++i) std::memcpy(C + (p + i) * ldc, &c[i * W], cols * sizeof(float));
}

// The panel for nv column vectors (nv <= NVMAX): one template per width, chosen at run time.
template <int NV = NVMAX>
inline void panel_of(int nv, int64_t P, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, int64_t ncols, const Epilogue& e) {
  if (nv == NV) return panel<NV>(P, K, A, lda, B, ldb, C, ldc, ncols, e);
  if constexpr (NV > 1) panel_of<NV - 1>(nv, P, K, A, lda, B, ldb, C, ldc, ncols, e);
}

// C[P x ncols] = epilogue(A[P x K] @ B[K x ncols_pad]) where ncols_pad is a whole number of vectors
// (B and the bias are padded to it) and ncols <= ncols_pad the columns C really has.
inline void gemm(int64_t P, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                 int64_t ncols_pad, int64_t ncols, float* C, int64_t ldc, Epilogue e) {
  const float* bias = e.bias;
  const float* res = e.res;
  for (int64_t j = 0; j < ncols_pad; j += NVMAX * VL) {
    const int nv = static_cast<int>(std::min<int64_t>(NVMAX, (ncols_pad - j) / VL));
    e.bias = bias ? bias + j : nullptr;
    e.res = res ? res + j : nullptr;
    panel_of(nv, P, K, A, lda, B + j, ldb, C + j, ldc, ncols - j, e);
  }
}

// Depthwise 3x3, stride 1, zero padding, then bias and ReLU6, for one output row of W pixels.
// up / mid / down are the expanded rows above, at and below it (nullptr past the image's edge),
// ldE floats per pixel; wd is [9][ldw] (tap-major); out gets ldD floats per pixel.
inline void dw_row(const float* up, const float* mid, const float* down, int64_t W, int64_t ldE,
                   int64_t channels, const float* wd, int64_t ldw, const float* bd, float* out, int64_t ldD) {
  const float* rows[3] = {up, mid, down};
  for (int64_t c = 0; c < channels; c += VL) {
    vf k[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; ++t) k[t] = vload(wd + t * ldw + c);
    const vf b = vload(bd + c);
    for (int64_t w = 0; w < W; ++w) {
      vf acc = b;
#pragma GCC unroll 3
      for (int dy = 0; dy < 3; ++dy) {
        if (!rows[dy]) continue;
        const float* p = rows[dy] + w * ldE + c;
        if (w > 0) acc = vfma(vload(p - ldE), k[3 * dy], acc);
        acc = vfma(vload(p), k[3 * dy + 1], acc);
        if (w + 1 < W) acc = vfma(vload(p + ldE), k[3 * dy + 2], acc);
      }
      vstore(out + w * ldD + c, vclamp6(acc));
    }
  }
}

}  // namespace fused
