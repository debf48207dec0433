// Late-interaction (ColBERT-style) MaxSim scoring over a packed ragged multi-vector index.
//
//   maxsim_f32(q [m, d], vectors [T, d], offsets [D+1], cand [C])                 -> scores [C]
//   maxsim_i8(q8 [m, d], qscale [m], codes [T, d], vscale [T], offsets, cand)    -> scores [C]
//
// Document c owns rows offsets[c]:offsets[c+1] of the index; its score is
// sum_i max_j q_i . v_j (0 for an empty document). The int8 op takes int32 dot
// products of the codes and scales each by qscale_i * vscale_j before the max
// (effnb/retrieval/reference.py computes exactly the same per pair).
//
// Loop order: threads take candidates (OpenMP, dynamic: documents differ in
// length); per candidate, a pair of document rows at a time against a tile of
// R = 4 query rows, vectorised over d. The 8 dot products of a tile accumulate
// in 8 vector registers (every loaded query vector serves two document rows,
// every document vector four query rows), are reduced together by one
// transposing hadd tree (not one horizontal sum per dot), and update a running
// max per query row. The query is copied once per call, zero padded to whole
// vectors and to a multiple of R rows, so the inner loop runs whole vectors;
// the last partial vector of a document row is copied into a zeroed buffer once
// per row pair (masked tails without a masked load of bytes on AVX2).
//
// int8 dot products:
//   AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes into int32 lanes.
//     Signed x signed by a bias: u = q + 128 in [1, 255], so
//     q . v = u . v - 128 * sum(v); sum(v) costs one vpdpbusd with ones per
//     document row, shared by all m query rows.
//   AVX2 (and AVX-512 without VNNI): the sign trick of kernels/quant/quant.h:
//     |v| * sign(q, v) = q * v, maddubs into int16 pairs (|v| <= 128 and
//     |q| <= 127: 2 * 128 * 127 < 32767, no saturation), madd with ones to int32.
//     q = -128 would break it, so the op rejects it (effnb quantizes to [-127, 127]).
// Paths are chosen at compile time from the build's -march level; a plain C++
// path serves any other CPU. EFFNB_ISA_PATH below names the one built.

#include "effnb.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define EFFNB_RET_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define EFFNB_RET_AVX2 1
#endif
#if defined(EFFNB_RET_AVX512) && defined(__AVX512VNNI__)
#define EFFNB_RET_VNNI 1
#endif

namespace {

constexpr int64_t R = 4;  // query rows per register tile
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------- checks (once per call, before any loop)

void check_t(const at::Tensor& t, at::ScalarType dt, const char* op, const char* name) {
  effnb::check_cpu_contiguous(t, op, name);
  effnb::check_dtype(t, dt, op, name);
}

// q [m, d] and the index rows [T, d] agree; offsets [D+1] run from 0 to T; every candidate is a
// document whose rows lie inside the index. O(C), not O(D): a re-ranking call reads few documents.
void check_index(const at::Tensor& q, const at::Tensor& rows, const at::Tensor& offsets,
                 const at::Tensor& cand, const char* op) {
  TORCH_CHECK(q.dim() == 2, op, ": the query must be 2-D [m, d], got shape ", q.sizes());
  TORCH_CHECK(rows.dim() == 2, op, ": the index rows must be 2-D [T, d], got shape ", rows.sizes());
  TORCH_CHECK(rows.size(1) == q.size(1), op, ": the query has d=", q.size(1), " but the index rows have d=",
              rows.size(1), "; pass a query of the index's dimension");
  check_t(offsets, at::kLong, op, "offsets");
  check_t(cand, at::kLong, op, "cand");
  TORCH_CHECK(offsets.dim() == 1 && offsets.numel() >= 1, op,
              ": offsets must be 1-D [D+1] with offsets[0] = 0, got shape ", offsets.sizes());
  TORCH_CHECK(cand.dim() == 1, op, ": cand must be 1-D [C] document numbers, got shape ", cand.sizes());
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t D = offsets.numel() - 1, T = rows.size(0);
  TORCH_CHECK(off[0] == 0 && off[D] == T, op, ": offsets must run from 0 to the index's ", T,
              " rows, got ", off[0], " .. ", off[D], "; pass the offsets of PackedIndex.from_list");
  const int64_t* cv = cand.data_ptr<int64_t>();
  for (int64_t i = 0; i < cand.numel(); ++i) {
    const int64_t c = cv[i];
    TORCH_CHECK(c >= 0 && c < D, op, ": cand[", i, "] = ", c, " is not a document; pass numbers in 0..", D - 1);
    TORCH_CHECK(0 <= off[c] && off[c] <= off[c + 1] && off[c + 1] <= T, op, ": offsets must not decrease, but "
                "document ", c, " has offsets ", off[c], " .. ", off[c + 1], " (index of ", T,
                " rows); pass the offsets of PackedIndex.from_list");
  }
}

// Threads over candidates, each with its own running max per (padded) query row.
template <class F>
void over_candidates(int64_t C, int64_t mp, const F& f) {
#pragma omp parallel if (C > 1)
  {
    std::vector<float> best(static_cast<size_t>(mp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < C; ++c) f(c, best.data());
  }
}

inline float sum_of(const float* best, int64_t m) {
  float s = 0.0f;
  for (int64_t i = 0; i < m; ++i) s += best[i];
  return s;
}

inline int64_t round_up(int64_t n, int64_t w) { return (n + w - 1) / w * w; }

#if defined(EFFNB_RET_AVX2)
// ---------------------------------------------------------------- SIMD kernels

// Four vectors -> their four sums: one transposing hadd tree for the whole tile.
inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
inline __m128i sum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// fp32, 8 lanes
struct F32x8 {
  using T = float;          // index element
  using Q = float;          // padded query element
  using V = __m256;
  using Sum = __m128;
  static constexpr int64_t W = 8;
  struct X { __m256 x; };
  static V zero() { return _mm256_setzero_ps(); }
  static V loadq(const Q* p) { return _mm256_loadu_ps(p); }
  static X loadv(const T* p) { return {_mm256_loadu_ps(p)}; }
  static V step(V acc, V q, const X& v) { return _mm256_fmadd_ps(q, v.x, acc); }
};

// int8, 32 lanes, the sign trick (see the top of the file)
struct I8x32 {
  using T = int8_t;
  using Q = int8_t;         // q itself
  using V = __m256i;
  using Sum = __m128i;
  static constexpr int64_t W = 32;
  struct X { __m256i x, ax; };
  static V zero() { return _mm256_setzero_si256(); }
  static V loadq(const Q* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static X loadv(const T* p) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {x, _mm256_abs_epi8(x)};
  }
  static V step(V acc, V q, const X& v) {
    const __m256i pairs = _mm256_maddubs_epi16(v.ax, _mm256_sign_epi8(q, v.x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static Q code(int8_t c) { return c; }
  static int32_t bias(const T*, int64_t, const T*, bool) { return 0; }
};

#if defined(EFFNB_RET_AVX512)
inline __m256 half_sum(__m512 a) {
  return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}
inline __m256i half_sum(__m512i a) {
  return _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
}
inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  return sum4(half_sum(a0), half_sum(a1), half_sum(a2), half_sum(a3));
}
inline __m128i sum4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  return sum4(half_sum(a0), half_sum(a1), half_sum(a2), half_sum(a3));
}

struct F32x16 {
  using T = float;
  using Q = float;
  using V = __m512;
  using Sum = __m128;
  static constexpr int64_t W = 16;
  struct X { __m512 x; };
  static V zero() { return _mm512_setzero_ps(); }
  static V loadq(const Q* p) { return _mm512_loadu_ps(p); }
  static X loadv(const T* p) { return {_mm512_loadu_ps(p)}; }
  static V step(V acc, V q, const X& v) { return _mm512_fmadd_ps(q, v.x, acc); }
};
#endif

#if defined(EFFNB_RET_VNNI)
// int8, 64 lanes, vpdpbusd on the biased query u = q + 128 (see the top of the file)
struct I8Vnni {
  using T = int8_t;
  using Q = uint8_t;
  using V = __m512i;
  using Sum = __m128i;
  static constexpr int64_t W = 64;
  struct X { __m512i x; };
  static V zero() { return _mm512_setzero_si512(); }
  static V loadq(const Q* p) { return _mm512_loadu_si512(p); }
  static X loadv(const T* p) { return {_mm512_loadu_si512(p)}; }
  static V step(V acc, V q, const X& v) { return _mm512_dpbusd_epi32(acc, q, v.x); }
  static Q code(int8_t c) { return static_cast<uint8_t>(static_cast<int32_t>(c) + 128); }
  // 128 * sum(v) of one document row (whole vectors, then its tail buffer): what the bias adds
  static int32_t bias(const T* v, int64_t nfull, const T* tail, bool has_tail) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i acc = _mm512_setzero_si512();
    for (int64_t k = 0; k < nfull * W; k += W) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(v + k));
    if (has_tail) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(tail));
    return 128 * _mm512_reduce_add_epi32(acc);
  }
};
#endif

// The dot products of R = 4 query rows (q, row stride dp) with document rows v0 and v1: nfull whole
// vectors, then the tails t0, t1 (zero padded) when has_tail. Eight accumulators, named registers.
template <class K>
inline void tile(const typename K::Q* q, int64_t dp, int64_t nfull, bool has_tail, const typename K::T* v0,
                 const typename K::T* v1, const typename K::T* t0, const typename K::T* t1,
                 typename K::Sum& s0, typename K::Sum& s1) {
  using V = typename K::V;
  V a0 = K::zero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  const auto chunk = [&](const typename K::Q* qk, const typename K::X& x, const typename K::X& y) {
    const V q0 = K::loadq(qk), q1 = K::loadq(qk + dp), q2 = K::loadq(qk + 2 * dp), q3 = K::loadq(qk + 3 * dp);
    a0 = K::step(a0, q0, x), b0 = K::step(b0, q0, y);
    a1 = K::step(a1, q1, x), b1 = K::step(b1, q1, y);
    a2 = K::step(a2, q2, x), b2 = K::step(b2, q2, y);
    a3 = K::step(a3, q3, x), b3 = K::step(b3, q3, y);
  };
  int64_t k = 0;
  for (int64_t c = 0; c < nfull; ++c, k += K::W) chunk(q + k, K::loadv(v0 + k), K::loadv(v1 + k));
  if (has_tail) chunk(q + k, K::loadv(t0), K::loadv(t1));
  s0 = sum4(a0, a1, a2, a3);
  s1 = sum4(b0, b1, b2, b3);
}

// One document (n rows at `rows`, d wide) against the padded query: best[i] = max_j score(i, j)
// for every padded query row. `score(s0, s1, i0, rowsum0, rowsum1)` turns a tile's raw sums for
// rows j and j+1 into fp32 scores (fp32: as they are; int8: bias and scales).
template <class K, class Score>
void doc_best(const typename K::Q* q, int64_t mp, int64_t dp, int64_t d, const typename K::T* rows, int64_t n,
              float* best, const Score& score) {
  using T = typename K::T;
  const int64_t nfull = d / K::W, rem = d % K::W;
  alignas(64) T t0[K::W], t1[K::W];
  std::fill(best, best + mp, kNegInf);
  for (int64_t j = 0; j < n; j += 2) {
    const T* v0 = rows + j * d;
    const T* v1 = j + 1 < n ? v0 + d : v0;  // an odd row count scores its last row twice: max(x, x) = x
    if (rem) {
      std::memset(t0, 0, sizeof(t0)), std::memset(t1, 0, sizeof(t1));
      std::memcpy(t0, v0 + nfull * K::W, rem * sizeof(T)), std::memcpy(t1, v1 + nfull * K::W, rem * sizeof(T));
    }
    const auto rs = score.rows(v0, v1, nfull, t0, t1, rem != 0, j);
    for (int64_t i0 = 0; i0 < mp; i0 += R) {
      typename K::Sum s0, s1;
      tile<K>(q + i0 * dp, dp, nfull, rem != 0, v0, v1, t0, t1, s0, s1);
      _mm_storeu_ps(best + i0, _mm_max_ps(_mm_loadu_ps(best + i0), score(s0, s1, i0, rs)));
    }
  }
}

struct F32Score {
  struct Rows {};
  template <class T>
  Rows rows(const T*, const T*, int64_t, const T*, const T*, bool, int64_t) const { return {}; }
  __m128 operator()(__m128 s0, __m128 s1, int64_t, Rows) const { return _mm_max_ps(s0, s1); }
};

// int8: raw int32 sums minus the bias of each row, to fp32 (exact below 2^24), times qscale_i * vscale_j
template <class K>
struct I8Score {
  const float* qs;    // padded query scales
  const float* vs;    // index scales, from the document's first row
  struct Rows { __m128i bias0, bias1; __m128 vs0, vs1; };
  Rows rows(const int8_t* v0, const int8_t* v1, int64_t nf, const int8_t* t0, const int8_t* t1, bool tail,
            int64_t j) const {
    const int64_t j1 = v1 == v0 ? j : j + 1;
    return {_mm_set1_epi32(K::bias(v0, nf, t0, tail)), _mm_set1_epi32(K::bias(v1, nf, t1, tail)),
            _mm_set1_ps(vs[j]), _mm_set1_ps(vs[j1])};
  }
  __m128 operator()(__m128i s0, __m128i s1, int64_t i0, const Rows& r) const {
    const __m128 q4 = _mm_loadu_ps(qs + i0);
    const __m128 f0 = _mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(s0, r.bias0)), _mm_mul_ps(q4, r.vs0));
    const __m128 f1 = _mm_mul_ps(_mm_cvtepi32_ps(_mm_sub_epi32(s1, r.bias1)), _mm_mul_ps(q4, r.vs1));
    return _mm_max_ps(f0, f1);
  }
};

#if defined(EFFNB_RET_AVX512)
using F32K = F32x16;
#else
using F32K = F32x8;
#endif
#if defined(EFFNB_RET_VNNI)
using I8K = I8Vnni;
#else
using I8K = I8x32;
#endif
#endif  // EFFNB_RET_AVX2

// ---------------------------------------------------------------- the ops

at::Tensor maxsim_f32(const at::Tensor& q, const at::Tensor& vectors, const at::Tensor& offsets,
                      const at::Tensor& cand) {
  const char* op = "maxsim_f32";
  check_t(q, at::kFloat, op, "q");
  check_t(vectors, at::kFloat, op, "vectors");
  check_index(q, vectors, offsets, cand, op);
  const int64_t m = q.size(0), d = q.size(1), C = cand.numel();
  auto out = at::zeros({C}, q.options());
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* cv = cand.data_ptr<int64_t>();
  const float* vec = vectors.data_ptr<float>();
  const float* qv = q.data_ptr<float>();
  float* o = out.data_ptr<float>();
#if defined(EFFNB_RET_AVX2)
  const int64_t mp = round_up(m, R), dp = round_up(d, F32K::W);
  std::vector<float> qp(static_cast<size_t>(mp * dp), 0.0f);
  for (int64_t i = 0; i < m; ++i) std::copy(qv + i * d, qv + (i + 1) * d, qp.data() + i * dp);
  over_candidates(C, mp, [&](int64_t c, float* best) {
    const int64_t r0 = off[cv[c]], n = off[cv[c] + 1] - r0;
    if (n == 0) return;  // an empty document scores 0 (out starts at zero)
    doc_best<F32K>(qp.data(), mp, dp, d, vec + r0 * d, n, best, F32Score{});
    o[c] = sum_of(best, m);
  });
#else
  over_candidates(C, m, [&](int64_t c, float* best) {
    const int64_t r0 = off[cv[c]], n = off[cv[c] + 1] - r0;
    if (n == 0) return;
    std::fill(best, best + m, kNegInf);
    for (int64_t j = 0; j < n; ++j) {
      const float* v = vec + (r0 + j) * d;
      for (int64_t i = 0; i < m; ++i) {
        float s = 0.0f;
        for (int64_t k = 0; k < d; ++k) s += qv[i * d + k] * v[k];
        best[i] = std::max(best[i], s);
      }
    }
    o[c] = sum_of(best, m);
  });
#endif
  return out;
}

at::Tensor maxsim_i8(const at::Tensor& q8, const at::Tensor& qscale, const at::Tensor& codes,
                     const at::Tensor& vscale, const at::Tensor& offsets, const at::Tensor& cand) {
  const char* op = "maxsim_i8";
  check_t(q8, at::kChar, op, "q8");
  check_t(qscale, at::kFloat, op, "qscale");
  check_t(codes, at::kChar, op, "codes");
  check_t(vscale, at::kFloat, op, "vscale");
  check_index(q8, codes, offsets, cand, op);
  TORCH_CHECK(qscale.dim() == 1 && qscale.numel() == q8.size(0), op, ": qscale must hold one scale per query row (",
              q8.size(0), "), got shape ", qscale.sizes());
  TORCH_CHECK(vscale.dim() == 1 && vscale.numel() == codes.size(0), op, ": vscale must hold one scale per index row (",
              codes.size(0), "), got shape ", vscale.sizes());
  const int64_t m = q8.size(0), d = q8.size(1), C = cand.numel();
  const int8_t* qv = q8.data_ptr<int8_t>();
  for (int64_t k = 0; k < m * d; ++k)
    TORCH_CHECK(qv[k] != -128, op, ": q8 holds -128; pass query codes in [-127, 127] (symmetric quantization)");
  auto out = at::zeros({C}, qscale.options());
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* cv = cand.data_ptr<int64_t>();
  const int8_t* vec = codes.data_ptr<int8_t>();
  const float* qs = qscale.data_ptr<float>();
  const float* vs = vscale.data_ptr<float>();
  float* o = out.data_ptr<float>();
#if defined(EFFNB_RET_AVX2)
  const int64_t mp = round_up(m, R), dp = round_up(d, I8K::W);
  std::vector<I8K::Q> qp(static_cast<size_t>(mp * dp), I8K::code(0));
  for (int64_t k = 0; k < m * d; ++k) qp[(k / d) * dp + k % d] = I8K::code(qv[k]);
  std::vector<float> qsp(static_cast<size_t>(mp), 0.0f);
  std::copy(qs, qs + m, qsp.data());
  over_candidates(C, mp, [&](int64_t c, float* best) {
    const int64_t r0 = off[cv[c]], n = off[cv[c] + 1] - r0;
    if (n == 0) return;
    doc_best<I8K>(qp.data(), mp, dp, d, vec + r0 * d, n, best, I8Score<I8K>{qsp.data(), vs + r0});
    o[c] = sum_of(best, m);
  });
#else
  over_candidates(C, m, [&](int64_t c, float* best) {
    const int64_t r0 = off[cv[c]], n = off[cv[c] + 1] - r0;
    if (n == 0) return;
    std::fill(best, best + m, kNegInf);
    for (int64_t j = 0; j < n; ++j) {
      const int8_t* v = vec + (r0 + j) * d;
      for (int64_t i = 0; i < m; ++i) {
        int32_t s = 0;
        for (int64_t k = 0; k < d; ++k) s += static_cast<int32_t>(qv[i * d + k]) * static_cast<int32_t>(v[k]);
        best[i] = std::max(best[i], static_cast<float>(s) * (qs[i] * vs[r0 + j]));
      }
    }
    o[c] = sum_of(best, m);
  });
#endif
  return out;
}

}  // namespace

#if defined(EFFNB_RET_VNNI)
EFFNB_ISA_PATH("avx512-vnni")
#elif defined(EFFNB_RET_AVX512)
EFFNB_ISA_PATH("avx512")
#elif defined(EFFNB_RET_AVX2)
EFFNB_ISA_PATH("avx2")
#else
EFFNB_ISA_PATH("scalar")
#endif

// Schemas and fake kernels: effnb/retrieval/ops.py (declared once, in Python).
TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("maxsim_f32", &maxsim_f32);
  m.impl("maxsim_i8", &maxsim_i8);
}
