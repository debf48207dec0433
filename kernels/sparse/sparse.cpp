// Sparse weight kernels for pruned Linear and 1x1 convolution layers (chapter 04).
//
// All kernels compute C = W * B with W an (N x K) weight matrix and B a dense
// (K x P) operand: for a Linear layer B is x transposed (P = batch M), for a
// 1x1 convolution B is the activation (Cin x pixels). Following XNNPACK's
// sparse kernels (Fast Sparse ConvNets), the work is vectorised across P: a
// strip of up to 32 columns of B is held in registers as accumulators, and every
// nonzero w[n, k] is broadcast and multiplied into the strip B[k, j:j+32].
//
//   sparse_spmm(rowptr, colidx, values, B, N)   CSR, unstructured
//   sparse_spmv(rowptr, colidx, values, x, N)   the P = 1 case: a gather-dot per row
//   blocked_spmv(bptr, base, offset, values, x, N)  the P = 1 case in column blocks: 8 nonzeros
//                                               share a uint16 base column, 8-bit offsets from it
//                                               (fewer bytes than CSR; effnb/sparse/formats.py)
//   group4_spmm(gptr, colidx, values, B, N)     1x4 groups: 4 output rows share one
//   group4_spmv(gptr, colidx, values, x, N)     column pattern (SparseByteNN), values
//                                               stored [nnz_groups, 4]
//   dense4_spmm(W4, B, N) / dense4_spmv(W4, x, N)  the SAME loops as group4 with every
//                                               column present and no index: W4 is W
//                                               packed [ceil(N/4), K, 4]
//
// Column indices are int32, or int16 holding uint16 values when K <= 65536
// (2 bytes per nonzero saved: at 90% sparsity the index is most of the traffic).
// Threads: OpenMP over blocks of rows (torch.set_num_threads sets their number).
// The hot loops have an AVX2+FMA path (also taken
// by AVX-512 builds, which define __AVX2__; there the CSR SpMM strips use 16-float
// vectors) and a plain C++ path for any other CPU, chosen at compile time from the
// build's -march level, so no CPU meets an instruction it lacks.

#include "effnb.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace {

// Threads take blocks of rows in order as they become free (OpenMP dynamic
// schedule), as in stream.cpp: on a shared machine a thread that loses its core
// for a moment delays one block, not a fixed half of the matrix.
template <typename F>
void for_blocks(int64_t n, int64_t block, const F& f) {
  const int64_t nb = (n + block - 1) / block;
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
  for (int64_t b = 0; b < nb; ++b) f(b * block, std::min(n, (b + 1) * block));
}

constexpr int64_t kRowGrain = 16;

// Input checks run once per call, before any loop: they cost nothing per nonzero.
void check_f32(const at::Tensor& t, const char* op, const char* name) {
  effnb::check_cpu_contiguous(t, op, name);
  effnb::check_dtype(t, at::kFloat, op, name);
}

void check_index(const at::Tensor& ptr, const at::Tensor& col, int64_t groups, const char* op) {
  effnb::check_cpu_contiguous(ptr, op, "the row pointer");
  effnb::check_dtype(ptr, at::kInt, op, "the row pointer");
  TORCH_CHECK(ptr.dim() == 1 && ptr.numel() == groups + 1, op, ": the row pointer has shape ", ptr.sizes(),
              "; expected ", groups + 1, " entries");
  effnb::check_cpu_contiguous(col, op, "the column indices");
  TORCH_CHECK((col.scalar_type() == at::kInt || col.scalar_type() == at::kShort) && col.dim() == 1, op,
              ": column indices must be a 1-D int32 or int16 (holding uint16) tensor, got ", col.scalar_type(),
              " of shape ", col.sizes());
}

template <typename I>
inline int64_t colof(const I* c, int64_t p) {
  if constexpr (sizeof(I) == 2) return static_cast<int64_t>(static_cast<uint16_t>(c[p]));
  else return static_cast<int64_t>(c[p]);
}

// ---------------------------------------------------------------- AVX2 micro-kernels
//
// One output row (or group of four) times one strip of up to 32 columns of B:
// NV full 8-float vectors plus, when TAIL, one masked vector for the last
// 1..7 columns. The accumulators live in registers for the whole row; every
// nonzero costs one broadcast and NV(+1) fused multiply-adds.

#if defined(__AVX2__) && defined(__FMA__)
#define EFFNB_SPARSE_AVX2 1

inline __m256i tail_mask(int64_t r) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - r));
}

// Vector v (< NV: 8 full columns; == NV: the masked tail) of the B row at b.
template <int NV>
inline __m256 strip_load(const float* b, int v, __m256i mask) {
  return v < NV ? _mm256_loadu_ps(b + 8 * v) : _mm256_maskload_ps(b + 8 * v, mask);
}

// The accumulators are named registers, not an array: GCC kept an array of
// __m256 on the stack and stored every accumulator back after each nonzero
// (4 stores per nonzero, the real limit of this loop, ~4 cycles per nonzero).
// Two sets, for even and odd nonzeros, halve the FMA latency chain per register.
template <int NV, bool TAIL, typename I>
inline void csr_strip(int32_t p0, int32_t p1, const I* col, const float* val, const float* B, int64_t P,
                      float* c, __m256i mask) {
  constexpr int V = NV + (TAIL ? 1 : 0);  // vectors per strip, 1..4
  static_assert(V >= 1 && V <= 4, "a strip is 1 to 4 vectors of 8 columns");
  const __m256 z = _mm256_setzero_ps();
  __m256 a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z;
  int32_t p = p0;
  for (; p + 2 <= p1; p += 2) {
    const __m256 w = _mm256_broadcast_ss(val + p), u = _mm256_broadcast_ss(val + p + 1);
    const float* r = B + colof(col, p) * P;
    const float* q = B + colof(col, p + 1) * P;
    a0 = _mm256_fmadd_ps(w, strip_load<NV>(r, 0, mask), a0);
    b0 = _mm256_fmadd_ps(u, strip_load<NV>(q, 0, mask), b0);
    if constexpr (V > 1) {
      a1 = _mm256_fmadd_ps(w, strip_load<NV>(r, 1, mask), a1);
      b1 = _mm256_fmadd_ps(u, strip_load<NV>(q, 1, mask), b1);
    }
    if constexpr (V > 2) {
      a2 = _mm256_fmadd_ps(w, strip_load<NV>(r, 2, mask), a2);
      b2 = _mm256_fmadd_ps(u, strip_load<NV>(q, 2, mask), b2);
    }
    if constexpr (V > 3) {
      a3 = _mm256_fmadd_ps(w, strip_load<NV>(r, 3, mask), a3);
      b3 = _mm256_fmadd_ps(u, strip_load<NV>(q, 3, mask), b3);
    }
  }
  if (p < p1) {
    const __m256 w = _mm256_broadcast_ss(val + p);
    const float* r = B + colof(col, p) * P;
    a0 = _mm256_fmadd_ps(w, strip_load<NV>(r, 0, mask), a0);
    if constexpr (V > 1) a1 = _mm256_fmadd_ps(w, strip_load<NV>(r, 1, mask), a1);
    if constexpr (V > 2) a2 = _mm256_fmadd_ps(w, strip_load<NV>(r, 2, mask), a2);
    if constexpr (V > 3) a3 = _mm256_fmadd_ps(w, strip_load<NV>(r, 3, mask), a3);
  }
  const __m256 out[4] = {_mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1), _mm256_add_ps(a2, b2),
                         _mm256_add_ps(a3, b3)};
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + 8 * v, out[v]);
  if constexpr (TAIL) _mm256_maskstore_ps(c + 8 * NV, mask, out[NV]);
}

#if defined(__AVX512F__)
#define EFFNB_SPARSE_AVX512 1
// csr_strip with 16-float vectors (AVX-512 builds): a strip of up to 32 columns is V = 1 or 2
// vectors, masks m0 and m1 say which of their columns exist. Per nonzero, half the loads and FMAs
// of the 8-float version; the strip of B comes from L1/L2, so loads, not memory, set its pace.
template <int V, typename I>
inline void csr_strip16(int32_t p0, int32_t p1, const I* col, const float* val, const float* B, int64_t P,
                        float* c, __mmask16 m0, __mmask16 m1) {
  static_assert(V == 1 || V == 2, "a strip is 1 or 2 vectors of 16 columns");
  const __m512 z = _mm512_setzero_ps();
  __m512 a0 = z, a1 = z, b0 = z, b1 = z;
  int32_t p = p0;
  for (; p + 2 <= p1; p += 2) {
    const __m512 w = _mm512_set1_ps(val[p]), u = _mm512_set1_ps(val[p + 1]);
    const float* r = B + colof(col, p) * P;
    const float* q = B + colof(col, p + 1) * P;
    a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m0, r), a0);
    b0 = _mm512_fmadd_ps(u, _mm512_maskz_loadu_ps(m0, q), b0);
    if constexpr (V > 1) {
      a1 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m1, r + 16), a1);
      b1 = _mm512_fmadd_ps(u, _mm512_maskz_loadu_ps(m1, q + 16), b1);
    }
  }
  if (p < p1) {
    const __m512 w = _mm512_set1_ps(val[p]);
    const float* r = B + colof(col, p) * P;
    a0 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m0, r), a0);
    if constexpr (V > 1) a1 = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m1, r + 16), a1);
  }
  _mm512_mask_storeu_ps(c, m0, _mm512_add_ps(a0, b0));
  if constexpr (V > 1) _mm512_mask_storeu_ps(c + 16, m1, _mm512_add_ps(a1, b1));
}
#endif

// Named accumulators for the same reason as csr_strip (an array of them was stored
// back to the stack after every stored column).
template <int NV, bool TAIL, bool kDense, typename I>
inline void group_strip(int64_t p0, int64_t p1, const I* col, const float* val, const float* B, int64_t P,
                        float* c0, float* c1, float* c2, float* c3, __m256i mask) {
  constexpr int V = NV + (TAIL ? 1 : 0);  // vectors per strip, 1..2
  static_assert(V >= 1 && V <= 2, "a 1x4 strip is 1 or 2 vectors of 8 columns");
  const __m256 z = _mm256_setzero_ps();
  __m256 a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z;  // a: vector 0, b: vector 1
  for (int64_t p = p0; p < p1; ++p) {
    const float* b = B + (kDense ? p - p0 : colof(col, p)) * P;
    const float* wv = val + 4 * p;
    const __m256 w0 = _mm256_broadcast_ss(wv), w1 = _mm256_broadcast_ss(wv + 1);
    const __m256 w2 = _mm256_broadcast_ss(wv + 2), w3 = _mm256_broadcast_ss(wv + 3);
    const __m256 x0 = strip_load<NV>(b, 0, mask);
    a0 = _mm256_fmadd_ps(w0, x0, a0);
    a1 = _mm256_fmadd_ps(w1, x0, a1);
    a2 = _mm256_fmadd_ps(w2, x0, a2);
    a3 = _mm256_fmadd_ps(w3, x0, a3);
    if constexpr (V > 1) {
      const __m256 x1 = strip_load<NV>(b, 1, mask);
      b0 = _mm256_fmadd_ps(w0, x1, b0);
      b1 = _mm256_fmadd_ps(w1, x1, b1);
      b2 = _mm256_fmadd_ps(w2, x1, b2);
      b3 = _mm256_fmadd_ps(w3, x1, b3);
    }
  }
  float* cs[4] = {c0, c1, c2, c3};
  const __m256 first[4] = {a0, a1, a2, a3}, second[4] = {b0, b1, b2, b3};
  for (int r = 0; r < 4; ++r) {
    if (cs[r] == nullptr) continue;
    const __m256 out[2] = {first[r], second[r]};
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(cs[r] + 8 * v, out[v]);
    if constexpr (TAIL) _mm256_maskstore_ps(cs[r] + 8 * NV, mask, out[NV]);
  }
}
#endif

// ---------------------------------------------------------------- CSR, unstructured

// Strip width: 32 columns (4 AVX2 registers) for the CSR kernel, 16 for the 1x4
// kernel (4 rows x 2 registers). Loop order: when P is small (a Linear layer's
// batch) rows are the outer loop, so each weight row is read from memory once
// and reused from L1 for every strip; when P is large (a convolution's pixels)
// strips are the outer loop, so one strip of B stays in cache for all rows.
constexpr int64_t kSmallP = 64;

template <typename I>
void csr_row_strip(const int32_t* ptr, const I* col, const float* val, const float* B, float* C,
                   int64_t P, int64_t n, int64_t j, int64_t w_) {
#if defined(EFFNB_SPARSE_AVX512)
  const auto lanes = [](int64_t k) { return static_cast<__mmask16>(k >= 16 ? 0xFFFF : (1u << k) - 1); };
  const int32_t q0 = ptr[n], q1 = ptr[n + 1];
  if (w_ > 16)
    csr_strip16<2>(q0, q1, col, val, B + j, P, C + n * P + j, lanes(16), lanes(w_ - 16));
  else
    csr_strip16<1>(q0, q1, col, val, B + j, P, C + n * P + j, lanes(w_), 0);
#elif defined(EFFNB_SPARSE_AVX2)
  const int nv = static_cast<int>(w_ / 8);
  const int64_t r = w_ % 8;
  const __m256i mask = tail_mask(r);
  const float* b = B + j;
  float* c = C + n * P + j;
  const int32_t p0 = ptr[n], p1 = ptr[n + 1];
  switch (nv * 2 + (r ? 1 : 0)) {
    case 1: csr_strip<0, true>(p0, p1, col, val, b, P, c, mask); break;
    case 2: csr_strip<1, false>(p0, p1, col, val, b, P, c, mask); break;
    case 3: csr_strip<1, true>(p0, p1, col, val, b, P, c, mask); break;
    case 4: csr_strip<2, false>(p0, p1, col, val, b, P, c, mask); break;
    case 5: csr_strip<2, true>(p0, p1, col, val, b, P, c, mask); break;
    case 6: csr_strip<3, false>(p0, p1, col, val, b, P, c, mask); break;
    case 7: csr_strip<3, true>(p0, p1, col, val, b, P, c, mask); break;
    default: csr_strip<4, false>(p0, p1, col, val, b, P, c, mask); break;
  }
#else
  float acc[32] = {0};
  for (int32_t p = ptr[n]; p < ptr[n + 1]; ++p) {
    const float w = val[p];
    const float* b = B + colof(col, p) * P + j;
    for (int64_t t = 0; t < w_; ++t) acc[t] += w * b[t];
  }
  float* c = C + n * P + j;
  for (int64_t t = 0; t < w_; ++t) c[t] = acc[t];
#endif
}

template <typename I>
void spmm_rows(const int32_t* ptr, const I* col, const float* val, const float* B, float* C,
               int64_t P, int64_t n0, int64_t n1) {
  constexpr int64_t S = 32;
  if (P <= kSmallP) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t j = 0; j < P; j += S) csr_row_strip(ptr, col, val, B, C, P, n, j, std::min(S, P - j));
  } else {
    for (int64_t j = 0; j < P; j += S)
      for (int64_t n = n0; n < n1; ++n) csr_row_strip(ptr, col, val, B, C, P, n, j, std::min(S, P - j));
  }
}

#ifdef EFFNB_SPARSE_AVX2
template <typename I>
inline __m256i load8(const I* c) {
  if constexpr (sizeof(I) == 2)
    return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
  else
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// Four column indices at once: one 8-byte load and shifts for uint16 indices (the
// loads, not the arithmetic, limit the scalar half of the SpMV loop below).
template <typename I>
inline void cols4(const I* c, int64_t& c0, int64_t& c1, int64_t& c2, int64_t& c3) {
  if constexpr (sizeof(I) == 2) {
    uint64_t q;
    std::memcpy(&q, c, 8);
    c0 = static_cast<int64_t>(q & 0xFFFF), c1 = static_cast<int64_t>((q >> 16) & 0xFFFF);
    c2 = static_cast<int64_t>((q >> 32) & 0xFFFF), c3 = static_cast<int64_t>(q >> 48);
  } else {
    c0 = colof(c, 0), c1 = colof(c, 1), c2 = colof(c, 2), c3 = colof(c, 3);
  }
}

// Four nonzeros p..p+3 into four scalar chains (four chains hide the FMA latency).
template <typename I>
inline void dot4(const I* col, const float* val, const float* x, int64_t p, float& a0, float& a1, float& a2,
                 float& a3) {
  int64_t c0, c1, c2, c3;
  cols4(col + p, c0, c1, c2, c3);
  a0 += val[p] * x[c0];
  a1 += val[p + 1] * x[c1];
  a2 += val[p + 2] * x[c2];
  a3 += val[p + 3] * x[c3];
}

// SpMV: per row, a dot product of its values with x gathered at its columns
// (x is small and stays in L1; the values and indices stream from memory).
// The loop is bound by the x gather, not by memory: about one cycle per nonzero
// whether the eight x values come from one AVX2 gather or from eight scalar loads.
// The gather unit and the scalar load ports work in parallel, so each block of 24
// nonzeros sends 8 through a gather and 16 through scalar loads (indices read four
// at a time): ~0.75 instead of ~1 cycle per nonzero on Zen 4, ~25% less time when
// the weight is in cache. From DRAM on one core the stream itself (~15 GB/s for
// the two arrays here) binds instead, and both loops take the same time.
// Four scalar chains (four hide the FMA latency), summed at the end of a row.
struct Chains {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  float sum() const { return (s0 + s1) + (s2 + s3); }
};

// The row loop of both SpMV layouts (CSR here, column blocks below): per row, L::kWide units at a time
// through L::wide, then L::kStep at a time through L::step (both AVX2), then L::rest with scalar
// loads for what is left (the whole row in a plain C++ build).
template <typename L>
void gather_dot_rows(const L& rows, const int32_t* ptr, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    int64_t p = ptr[n];
    const int64_t e = ptr[n + 1];
    Chains c;
#ifdef EFFNB_SPARSE_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; p + L::kWide <= e; p += L::kWide) acc = rows.wide(p, acc, c);
    for (; p + L::kStep <= e; p += L::kStep) acc = rows.step(p, acc);
    c.s0 += hsum(acc);
#endif
    rows.rest(p, e, c);
    y[n] = c.sum();
  }
}

// CSR rows: a unit is one nonzero; 24 = 8 through the gather and 16 through scalar loads, then 8
// at a time through the gather.
template <typename I>
struct CsrRows {
  const I* col;
  const float* val;
  const float* x;
  static constexpr int64_t kWide = 24, kStep = 8;
#ifdef EFFNB_SPARSE_AVX2
  __m256 step(int64_t p, __m256 acc) const {
    return _mm256_fmadd_ps(_mm256_loadu_ps(val + p), _mm256_i32gather_ps(x, load8(col + p), 4), acc);
  }
  __m256 wide(int64_t p, __m256 acc, Chains& c) const {
    acc = step(p, acc);
    dot4(col, val, x, p + 8, c.s0, c.s1, c.s2, c.s3);
    dot4(col, val, x, p + 12, c.s0, c.s1, c.s2, c.s3);
    dot4(col, val, x, p + 16, c.s0, c.s1, c.s2, c.s3);
    dot4(col, val, x, p + 20, c.s0, c.s1, c.s2, c.s3);
    return acc;
  }
#endif
  void rest(int64_t p, int64_t e, Chains& c) const {
    for (; p + 4 <= e; p += 4) dot4(col, val, x, p, c.s0, c.s1, c.s2, c.s3);
    for (; p < e; ++p) c.s0 += val[p] * x[colof(col, p)];
  }
};

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define EFFNB_SPARSE_GATHER16 1
#endif

#if EFFNB_SPARSE_GATHER16
// Which x gather the SpMV rows use in an AVX-512 build, chosen per call: 16-wide gathers on Intel,
// the AVX2 loop (an 8-wide gather beside scalar loads) on AMD, where Zen 4 and Zen 5 split a
// 16-wide gather into many micro-ops. Development runs, cold 4096 x 4096 at 90%, column blocks:
// Intel Xeon 0.50 ms (AVX2 loop) -> 0.44 ms (16-wide); AMD EPYC Zen 5 0.34 ms (AVX2 loop) vs
// 0.43 ms (16-wide). EFFNB_SPARSE_GATHER=16 or =8 forces one form (the tests run both).
bool wide_gather() {
  static const bool intel = __builtin_cpu_is("intel");
  return effnb::vendor_choice("EFFNB_SPARSE_GATHER", "16", "8", intel);
}

// The 16-wide form: the row is one 16-wide gather after another, four in flight (four
// accumulators), the last 1-15 nonzeros through a masked gather. On the Intel Xeon a 16-wide
// gather took the same time per nonzero as an 8-wide one (~0.2 ns from L1, bound by the load
// ports), and the AVX2 loop's scalar half ran about three times slower per nonzero than that.
template <typename I>
inline __m512i load16(const I* c, __mmask16 k) {
  if constexpr (sizeof(I) == 2)
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, c));
  else
    return _mm512_maskz_loadu_epi32(k, c);
}

template <typename I>
void spmv_rows16(const int32_t* ptr, const I* col, const float* val, const float* x, float* y,
                 int64_t n0, int64_t n1) {
  const auto dot16 = [&](int64_t p, __mmask16 k, __m512 acc) __attribute__((always_inline)) {
    const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, load16(col + p, k), x, 4);
    return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, val + p), g, acc);
  };
  for (int64_t n = n0; n < n1; ++n) {
    int64_t p = ptr[n];
    const int64_t e = ptr[n + 1];
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; p + 64 <= e; p += 64) {
      a0 = dot16(p, 0xFFFF, a0);
      a1 = dot16(p + 16, 0xFFFF, a1);
      a2 = dot16(p + 32, 0xFFFF, a2);
      a3 = dot16(p + 48, 0xFFFF, a3);
    }
    for (; p + 16 <= e; p += 16) a0 = dot16(p, 0xFFFF, a0);
    if (p < e) a1 = dot16(p, static_cast<__mmask16>((1u << (e - p)) - 1), a1);
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}
#else
bool wide_gather() { return false; }
#endif

template <typename I>
void spmv_rows(const int32_t* ptr, const I* col, const float* val, const float* x, float* y,
               int64_t n0, int64_t n1, bool wide) {
#if EFFNB_SPARSE_GATHER16
  if (wide) return spmv_rows16(ptr, col, val, x, y, n0, n1);
#endif
  gather_dot_rows(CsrRows<I>{col, val, x}, ptr, y, n0, n1);
}

at::Tensor sparse_spmm(const at::Tensor& rowptr, const at::Tensor& colidx, const at::Tensor& values,
                       const at::Tensor& B, int64_t N) {
  check_index(rowptr, colidx, N, "sparse_spmm");
  check_f32(values, "sparse_spmm", "values");
  check_f32(B, "sparse_spmm", "B");
  TORCH_CHECK(B.dim() == 2, "sparse_spmm: B must be 2-D (K x P)");
  TORCH_CHECK(values.numel() == colidx.numel(), "sparse_spmm: values and column indices differ in length");
  const int64_t P = B.size(1);
  auto C = at::empty({N, P}, B.options());
  if (N == 0 || P == 0) return C;
  const int32_t* ptr = rowptr.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  const float* b = B.data_ptr<float>();
  float* c = C.data_ptr<float>();
  const bool narrow = colidx.scalar_type() == at::kShort;
  const void* col = colidx.data_ptr();
  for_blocks(N, kRowGrain, [&](int64_t n0, int64_t n1) {
    if (narrow) spmm_rows(ptr, static_cast<const int16_t*>(col), val, b, c, P, n0, n1);
    else spmm_rows(ptr, static_cast<const int32_t*>(col), val, b, c, P, n0, n1);
  });
  return C;
}

at::Tensor sparse_spmv(const at::Tensor& rowptr, const at::Tensor& colidx, const at::Tensor& values,
                       const at::Tensor& x, int64_t N) {
  check_index(rowptr, colidx, N, "sparse_spmv");
  check_f32(values, "sparse_spmv", "values");
  check_f32(x, "sparse_spmv", "x");
  TORCH_CHECK(x.dim() == 1, "sparse_spmv: x must be 1-D (K)");
  TORCH_CHECK(values.numel() == colidx.numel(), "sparse_spmv: values and column indices differ in length");
  auto y = at::empty({N}, x.options());
  if (N == 0) return y;
  const int32_t* ptr = rowptr.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  const float* xv = x.data_ptr<float>();
  float* yv = y.data_ptr<float>();
  const bool narrow = colidx.scalar_type() == at::kShort;
  const void* col = colidx.data_ptr();
  const bool wide = wide_gather();
  for_blocks(N, 64, [&](int64_t n0, int64_t n1) {
    if (narrow) spmv_rows(ptr, static_cast<const int16_t*>(col), val, xv, yv, n0, n1, wide);
    else spmv_rows(ptr, static_cast<const int32_t*>(col), val, xv, yv, n0, n1, wide);
  });
  return y;
}

// ---------------------------------------------------------------- column blocks: SpMV in 5.25 bytes per nonzero
//
// From DRAM on all cores the CSR SpMV above is bound by the bytes it streams: 4 for the value
// and 2 for the uint16 column of every nonzero. Here each row's nonzeros come in blocks of 8 that share
// one base column (uint16, read as unsigned); each entry stores its column as a uint8 offset
// from the base: 4 + 1 + 2/8 = 5.25 bytes per stored entry. A block closes early when the
// next column lies more than 255 past its base, and every row ends on a whole block; the
// unused entries hold value 0 and offset 0 (they read x[base], a valid column, times 0).
// The row pointer counts blocks; block b's entries are 8b..8b+7. K <= 65536.
//
// Per block, the eight x values are loaded into one vector by scalar loads and inserts
// (vmovss, vinsertps from memory: eight offsets from one 8-byte load, taken apart with shifts)
// and multiplied into one vector FMA. On Zen 4 this took 10-15% fewer cycles per nonzero than
// the CSR loop's mix of an AVX2 gather and scalar FMA chains, in cache and from DRAM alike
// (an AVX2 gather, broadcasts and blends, or 16-bit offset loads were slower in our runs).

inline void dot8(const uint8_t* off, const float* v, const float* xb, Chains& c) {
  uint64_t q;
  std::memcpy(&q, off, 8);
  c.s0 += v[0] * xb[q & 0xFF];
  c.s1 += v[1] * xb[(q >> 8) & 0xFF];
  c.s2 += v[2] * xb[(q >> 16) & 0xFF];
  c.s3 += v[3] * xb[(q >> 24) & 0xFF];
  c.s0 += v[4] * xb[(q >> 32) & 0xFF];
  c.s1 += v[5] * xb[(q >> 40) & 0xFF];
  c.s2 += v[6] * xb[(q >> 48) & 0xFF];
  c.s3 += v[7] * xb[q >> 56];
}

#ifdef EFFNB_SPARSE_AVX2
inline __m256 x8(const uint8_t* off, const float* xb) {
  uint64_t q;
  std::memcpy(&q, off, 8);
  __m128 lo = _mm_load_ss(xb + (q & 0xFF));
  lo = _mm_insert_ps(lo, _mm_load_ss(xb + ((q >> 8) & 0xFF)), 0x10);
  lo = _mm_insert_ps(lo, _mm_load_ss(xb + ((q >> 16) & 0xFF)), 0x20);
  lo = _mm_insert_ps(lo, _mm_load_ss(xb + ((q >> 24) & 0xFF)), 0x30);
  __m128 hi = _mm_load_ss(xb + ((q >> 32) & 0xFF));
  hi = _mm_insert_ps(hi, _mm_load_ss(xb + ((q >> 40) & 0xFF)), 0x10);
  hi = _mm_insert_ps(hi, _mm_load_ss(xb + ((q >> 48) & 0xFF)), 0x20);
  hi = _mm_insert_ps(hi, _mm_load_ss(xb + (q >> 56)), 0x30);
  return _mm256_set_m128(hi, lo);
}
#endif

// Column-block rows: a unit is one block of 8, three at a time, then one at a time. (A software
// prefetch of the values 2 KiB ahead made no difference we could measure over the hardware's.)
struct BlockRows {
  const uint16_t* base;
  const uint8_t* off;
  const float* val;
  const float* x;
  static constexpr int64_t kWide = 3, kStep = 1;
#ifdef EFFNB_SPARSE_AVX2
  __m256 step(int64_t b, __m256 acc) const {
    return _mm256_fmadd_ps(_mm256_loadu_ps(val + 8 * b), x8(off + 8 * b, x + base[b]), acc);
  }
  __m256 wide(int64_t b, __m256 acc, Chains&) const {
    return step(b + 2, step(b + 1, step(b, acc)));
  }
#endif
  void rest(int64_t b, int64_t e, Chains& c) const {
    for (; b < e; ++b) dot8(off + 8 * b, val + 8 * b, x + base[b], c);
  }
};

#if EFFNB_SPARSE_GATHER16
// The 16-wide form (where wide_gather() says so): two blocks at a time go through one 16-wide
// gather, their 16 offsets widened to int32 plus each block's base in its half of the vector; four
// gathers in flight, a last lone block through the low half. On the Intel Xeon it beat the scalar
// inserts of x8 (cold 4096 x 4096 at 90%: 0.50 -> 0.44 ms). From DRAM both layouts there read
// ~20 GB/s where dense F.linear reads ~50; prefetching 1-16 KiB ahead changed nothing.
inline void blocked_rows16(const int32_t* ptr, const uint16_t* base, const uint8_t* off, const float* val,
                           const float* x, float* y, int64_t n0, int64_t n1) {
  const auto dot2 = [&](int64_t b, bool two, __m512 acc) __attribute__((always_inline)) {
    const __mmask16 k = two ? 0xFFFF : 0x00FF;
    const __m512i bases = _mm512_mask_set1_epi32(_mm512_set1_epi32(base[b]), 0xFF00, two ? base[b + 1] : 0);
    const __m512i idx = _mm512_add_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, off + 8 * b)), bases);
    const __m512 g = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, idx, x, 4);
    return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, val + 8 * b), g, acc);
  };
  for (int64_t n = n0; n < n1; ++n) {
    int64_t b = ptr[n];
    const int64_t e = ptr[n + 1];
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (; b + 8 <= e; b += 8) {
      a0 = dot2(b, true, a0);
      a1 = dot2(b + 2, true, a1);
      a2 = dot2(b + 4, true, a2);
      a3 = dot2(b + 6, true, a3);
    }
    for (; b + 2 <= e; b += 2) a0 = dot2(b, true, a0);
    if (b < e) a1 = dot2(b, false, a1);
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}
#endif

at::Tensor blocked_spmv(const at::Tensor& bptr, const at::Tensor& base, const at::Tensor& offset,
                        const at::Tensor& values, const at::Tensor& x, int64_t N) {
  const char* op = "blocked_spmv";
  effnb::check_cpu_contiguous(bptr, op, "the block row pointer");
  effnb::check_dtype(bptr, at::kInt, op, "the block row pointer");
  TORCH_CHECK(bptr.dim() == 1 && bptr.numel() == N + 1, op, ": the block row pointer has shape ", bptr.sizes(),
              "; expected ", N + 1, " entries");
  effnb::check_cpu_contiguous(base, op, "the base columns");
  effnb::check_dtype(base, at::kShort, op, "the base columns");
  effnb::check_cpu_contiguous(offset, op, "the offsets");
  effnb::check_dtype(offset, at::kByte, op, "the offsets");
  check_f32(values, op, "values");
  check_f32(x, op, "x");
  TORCH_CHECK(x.dim() == 1 && x.numel() <= 65536, op, ": x must be 1-D with at most 65536 entries (uint16 base "
              "columns), got shape ", x.sizes());
  const int64_t nb = base.numel();
  TORCH_CHECK(base.dim() == 1 && offset.dim() == 1 && values.dim() == 1 && offset.numel() == 8 * nb &&
                  values.numel() == 8 * nb, op, ": a block is one base column, 8 offsets and 8 values; got ", nb,
              " bases, ", offset.numel(), " offsets and ", values.numel(), " values");
  auto y = at::empty({N}, x.options());
  if (N == 0) return y;
  const int32_t* ptr = bptr.data_ptr<int32_t>();
  TORCH_CHECK(ptr[0] == 0 && ptr[N] == nb, op, ": the block row pointer must run from 0 to the ", nb,
              " blocks, got ", ptr[0], " to ", ptr[N]);
  const uint16_t* bs = reinterpret_cast<const uint16_t*>(base.data_ptr<int16_t>());
  const uint8_t* of = offset.data_ptr<uint8_t>();
  const float* val = values.data_ptr<float>();
  const float* xv = x.data_ptr<float>();
  float* yv = y.data_ptr<float>();
#if EFFNB_SPARSE_GATHER16
  if (wide_gather()) {
    for_blocks(N, 64, [&](int64_t n0, int64_t n1) { blocked_rows16(ptr, bs, of, val, xv, yv, n0, n1); });
    return y;
  }
#endif
  const BlockRows rows{bs, of, val, xv};
  for_blocks(N, 64, [&](int64_t n0, int64_t n1) { gather_dot_rows(rows, ptr, yv, n0, n1); });
  return y;
}

// ---------------------------------------------------------------- 1x4 groups and the same-code dense kernel
//
// Group g covers output rows 4g..4g+3. Each stored column k of the group carries
// four weights (one per row), so one strip of B is loaded once and used four
// times: a quarter of the B traffic of the unstructured kernel per nonzero.
// kDense = true is the same loop with every column 0..K-1 present (no index).

template <bool kDense, typename I>
void group4_row_strip(const int32_t* gptr, const I* col, const float* val, const float* B, float* C,
                      int64_t N, int64_t K, int64_t P, int64_t g, int64_t j, int64_t w_) {
  const int64_t p0 = kDense ? g * K : gptr[g];
  const int64_t p1 = kDense ? (g + 1) * K : gptr[g + 1];
  float* cr[4];
  for (int64_t r = 0; r < 4; ++r) cr[r] = 4 * g + r < N ? C + (4 * g + r) * P + j : nullptr;
#ifdef EFFNB_SPARSE_AVX2
  const int nv = static_cast<int>(w_ / 8);
  const int64_t r = w_ % 8;
  const __m256i mask = tail_mask(r);
  const float* b = B + j;
  switch (nv * 2 + (r ? 1 : 0)) {
    case 1: group_strip<0, true, kDense>(p0, p1, col, val, b, P, cr[0], cr[1], cr[2], cr[3], mask); break;
    case 2: group_strip<1, false, kDense>(p0, p1, col, val, b, P, cr[0], cr[1], cr[2], cr[3], mask); break;
    case 3: group_strip<1, true, kDense>(p0, p1, col, val, b, P, cr[0], cr[1], cr[2], cr[3], mask); break;
    default: group_strip<2, false, kDense>(p0, p1, col, val, b, P, cr[0], cr[1], cr[2], cr[3], mask); break;
  }
#else
  float a[4][16] = {{0}};
  for (int64_t p = p0; p < p1; ++p) {
    const float* b = B + (kDense ? p - p0 : colof(col, p)) * P + j;
    const float* v = val + 4 * p;
    for (int64_t t = 0; t < w_; ++t)
      for (int rr = 0; rr < 4; ++rr) a[rr][t] += v[rr] * b[t];
  }
  for (int rr = 0; rr < 4; ++rr)
    if (cr[rr]) for (int64_t t = 0; t < w_; ++t) cr[rr][t] = a[rr][t];
#endif
}

template <bool kDense, typename I>
void group4_rows(const int32_t* gptr, const I* col, const float* val, const float* B, float* C,
                 int64_t N, int64_t K, int64_t P, int64_t g0, int64_t g1) {
  constexpr int64_t S = 16;
  if (P <= kSmallP) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t j = 0; j < P; j += S) group4_row_strip<kDense>(gptr, col, val, B, C, N, K, P, g, j, std::min(S, P - j));
  } else {
    for (int64_t j = 0; j < P; j += S)
      for (int64_t g = g0; g < g1; ++g) group4_row_strip<kDense>(gptr, col, val, B, C, N, K, P, g, j, std::min(S, P - j));
  }
}

template <bool kDense, typename I>
void group4_vec(const int32_t* gptr, const I* col, const float* val, const float* x, float* y,
                int64_t N, int64_t K, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t p0 = kDense ? g * K : gptr[g];
    const int64_t p1 = kDense ? (g + 1) * K : gptr[g + 1];
    int64_t p = p0;
    float a[4] = {0, 0, 0, 0};
#ifdef EFFNB_SPARSE_AVX2
    // two stored columns per register: [4 weights of column p | 4 weights of column p+1]
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; p + 4 <= p1; p += 4) {
      const float x0 = x[kDense ? p - p0 : colof(col, p)], x1 = x[kDense ? p + 1 - p0 : colof(col, p + 1)];
      const float x2 = x[kDense ? p + 2 - p0 : colof(col, p + 2)], x3 = x[kDense ? p + 3 - p0 : colof(col, p + 3)];
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(val + 4 * p), _mm256_set_m128(_mm_set1_ps(x1), _mm_set1_ps(x0)), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(val + 4 * p + 8), _mm256_set_m128(_mm_set1_ps(x3), _mm_set1_ps(x2)), acc1);
    }
    const __m256 s = _mm256_add_ps(acc0, acc1);
    _mm_storeu_ps(a, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
#endif
    for (; p < p1; ++p) {
      const float x0 = x[kDense ? p - p0 : colof(col, p)];
      const float* v = val + 4 * p;
      for (int r = 0; r < 4; ++r) a[r] += v[r] * x0;
    }
    for (int64_t r = 0; r < 4; ++r)
      if (4 * g + r < N) y[4 * g + r] = a[r];
  }
}

int64_t groups_of(int64_t N) { return (N + 3) / 4; }

at::Tensor group4_spmm(const at::Tensor& gptr, const at::Tensor& colidx, const at::Tensor& values,
                       const at::Tensor& B, int64_t N) {
  const int64_t G = groups_of(N);
  check_index(gptr, colidx, G, "group4_spmm");
  check_f32(values, "group4_spmm", "values");
  check_f32(B, "group4_spmm", "B");
  TORCH_CHECK(B.dim() == 2, "group4_spmm: B must be 2-D (K x P)");
  TORCH_CHECK(values.numel() == 4 * colidx.numel(), "group4_spmm: 1x4 values must hold 4 weights per stored column");
  const int64_t K = B.size(0), P = B.size(1);
  auto C = at::empty({N, P}, B.options());
  if (N == 0 || P == 0) return C;
  const int32_t* ptr = gptr.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  const float* b = B.data_ptr<float>();
  float* c = C.data_ptr<float>();
  const bool narrow = colidx.scalar_type() == at::kShort;
  const void* col = colidx.data_ptr();
  for_blocks(G, 4, [&](int64_t g0, int64_t g1) {
    if (narrow) group4_rows<false>(ptr, static_cast<const int16_t*>(col), val, b, c, N, K, P, g0, g1);
    else group4_rows<false>(ptr, static_cast<const int32_t*>(col), val, b, c, N, K, P, g0, g1);
  });
  return C;
}

at::Tensor group4_spmv(const at::Tensor& gptr, const at::Tensor& colidx, const at::Tensor& values,
                       const at::Tensor& x, int64_t N) {
  const int64_t G = groups_of(N);
  check_index(gptr, colidx, G, "group4_spmv");
  check_f32(values, "group4_spmv", "values");
  check_f32(x, "group4_spmv", "x");
  TORCH_CHECK(x.dim() == 1, "group4_spmv: x must be 1-D (K)");
  TORCH_CHECK(values.numel() == 4 * colidx.numel(), "group4_spmv: 1x4 values must hold 4 weights per stored column");
  auto y = at::empty({N}, x.options());
  if (N == 0) return y;
  const int32_t* ptr = gptr.data_ptr<int32_t>();
  const float* val = values.data_ptr<float>();
  const float* xv = x.data_ptr<float>();
  float* yv = y.data_ptr<float>();
  const bool narrow = colidx.scalar_type() == at::kShort;
  const void* col = colidx.data_ptr();
  const int64_t K = x.numel();
  for_blocks(G, 16, [&](int64_t g0, int64_t g1) {
    if (narrow) group4_vec<false>(ptr, static_cast<const int16_t*>(col), val, xv, yv, N, K, g0, g1);
    else group4_vec<false>(ptr, static_cast<const int32_t*>(col), val, xv, yv, N, K, g0, g1);
  });
  return y;
}

void check_w4(const at::Tensor& W4, int64_t N, int64_t K, const char* op) {
  check_f32(W4, op, "W4");
  TORCH_CHECK(W4.dim() == 3 && W4.size(0) == groups_of(N) && W4.size(1) == K && W4.size(2) == 4, op,
              ": W4 must be W packed as [ceil(N/4), K, 4]; got ", W4.sizes());
}

at::Tensor dense4_spmm(const at::Tensor& W4, const at::Tensor& B, int64_t N) {
  check_f32(B, "dense4_spmm", "B");
  TORCH_CHECK(B.dim() == 2, "dense4_spmm: B must be 2-D (K x P)");
  const int64_t K = B.size(0), P = B.size(1), G = groups_of(N);
  check_w4(W4, N, K, "dense4_spmm");
  auto C = at::empty({N, P}, B.options());
  if (N == 0 || P == 0) return C;
  const float* val = W4.data_ptr<float>();
  const float* b = B.data_ptr<float>();
  float* c = C.data_ptr<float>();
  for_blocks(G, 4, [&](int64_t g0, int64_t g1) {
    group4_rows<true, int32_t>(nullptr, nullptr, val, b, c, N, K, P, g0, g1);
  });
  return C;
}

at::Tensor dense4_spmv(const at::Tensor& W4, const at::Tensor& x, int64_t N) {
  check_f32(x, "dense4_spmv", "x");
  TORCH_CHECK(x.dim() == 1, "dense4_spmv: x must be 1-D (K)");
  const int64_t K = x.numel(), G = groups_of(N);
  check_w4(W4, N, K, "dense4_spmv");
  auto y = at::empty({N}, x.options());
  if (N == 0) return y;
  const float* val = W4.data_ptr<float>();
  const float* xv = x.data_ptr<float>();
  float* yv = y.data_ptr<float>();
  for_blocks(G, 16, [&](int64_t g0, int64_t g1) {
    group4_vec<true, int32_t>(nullptr, nullptr, val, xv, yv, N, K, g0, g1);
  });
  return y;
}

}  // namespace

#if defined(EFFNB_SPARSE_AVX512)
EFFNB_ISA_PATH("avx512")  // the SpMM strips; every other loop runs its AVX2 form
#elif defined(EFFNB_SPARSE_AVX2)
EFFNB_ISA_PATH("avx2")
#else
EFFNB_ISA_PATH("scalar")
#endif

// Schemas and fake kernels: effnb/sparse/ops.py (declared once, in Python).
TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("sparse_spmm", &sparse_spmm);
  m.impl("sparse_spmv", &sparse_spmv);
  m.impl("blocked_spmv", &blocked_spmv);
  m.impl("group4_spmm", &group4_spmm);
  m.impl("group4_spmv", &group4_spmv);
  m.impl("dense4_spmm", &dense4_spmm);
  m.impl("dense4_spmv", &dense4_spmv);
}
