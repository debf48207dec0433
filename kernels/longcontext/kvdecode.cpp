// Decode attention over a quantized KV cache: one new token's query heads against int8 or int4 codes.
//
//   longcontext_kv_decode(q (Hq, d), k_codes, k_scale, k_min, v_codes, v_scale, v_min, length, bits)
//
// The cache format is effnb/longcontext/kvquant.py's: per (kv head, token, group of d / ng channels)
// an fp32 scale and min, and per channel a code, so a channel's value is min + scale * code. Codes
// are uint8 (Hkv, cap, d) at 8 bits, or (Hkv, cap, d / 2) at 4 bits with channel 2j in byte j's low
// nibble and 2j + 1 in its high nibble; scale and min are (Hkv, cap, ng). Only the first `length` rows
// are read. The output is softmax(q k^T / sqrt(d)) v per query head; query head j uses kv head
// j / (Hq / Hkv).
//
// Why fused: a decode step's time is the cache's bytes, so the codes are read once from memory and
// widened to fp32 in registers as they are used (code -> float, then one fma with the group's scale
// and min), never written back out. Rows come in tiles of 64; each K row is widened once for all
// query heads of its group (their dot products of 16 rows reduced together by V::transpose_sum),
// then an online-softmax step, then each V row, widened once, joins every head's weighted sum held
// in registers. The next tile is prefetched while one computes. Groups narrower than a vector
// (and head sizes that are not whole vectors) widen a tile into an L1 buffer first instead.
// The work is cut as in kernels/attention/decode.cpp (flash-decoding): each kv head's rows split into chunks that
// depend only on the shapes, each chunk keeps its own softmax state per query head, and a last step
// merges a head's chunks by their log-sum-exp weights in chunk order, so every thread count gives
// the same bits.

#include "longcontext.h"
#include "../attention/simd.h"  // the attention family's vector layer (V: AVX-512 / AVX2 / one lane)

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

namespace effnb_longcontext {
using namespace effnb_attention;  // V, exp and the reductions of simd.h

namespace {

constexpr int64_t kTile = 64;       // rows per softmax step and per prefetch
constexpr int kVecs = 4;            // output vectors held in registers per pass over a tile
constexpr int64_t kMinChunk = 256;  // rows: a smaller chunk's merge costs more than its parallelism gains
constexpr int64_t kItems = 16;      // about this many chunks over all kv heads, whatever the thread count

// ---------------------------------------------------------------- codes -> floats, W channels at a time
// code_vec<BITS>(row, c): the codes of channels c .. c + W - 1 of a row (c a multiple of W) as floats.

#if defined(__AVX512F__) && defined(__AVX512BW__)
template <int BITS>
inline V::T code_vec(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c));
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
  } else {  // 8 bytes hold 16 channels: split the nibbles, then interleave them back into channel order
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 2));
    const __m128i nib = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, nib), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
template <int BITS>
inline V::T code_vec(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
  } else {  // 4 bytes hold 8 channels
    int32_t word;
    std::memcpy(&word, row + c / 2, sizeof(word));
    const __m128i b = _mm_cvtsi32_si128(word);
    const __m128i nib = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, nib), hi = _mm_and_si128(_mm_srli_epi16(b, 4), nib);
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
  }
}
#else
template <int BITS>
inline V::T code_vec(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) return static_cast<float>(row[c]);
  else return static_cast<float>((row[c >> 1] >> ((c & 1) * 4)) & 0x0F);
}
#endif

// int4 with the nibbles kept apart: the W bytes of block b = u / 2 hold 2W channels; vector 2b is
// their low nibbles (the block's even channels), 2b + 1 their high nibbles (the odd ones). Three
// instructions a vector instead of interleaving the nibbles back; q and the output are permuted to
// match once per call (see split_index).
#if defined(__AVX512F__) && defined(__AVX512BW__)
inline V::T nibble_vec(const uint8_t* row, int64_t u) {
  const __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + (u >> 1) * V::W)));
  return _mm512_cvtepi32_ps((u & 1) ? _mm512_srli_epi32(x, 4) : _mm512_and_si512(x, _mm512_set1_epi32(0x0F)));
}
#elif defined(__AVX2__) && defined(__FMA__)
inline V::T nibble_vec(const uint8_t* row, int64_t u) {
  const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + (u >> 1) * V::W)));
  return _mm256_cvtepi32_ps((u & 1) ? _mm256_srli_epi32(x, 4) : _mm256_and_si256(x, _mm256_set1_epi32(0x0F)));
}
#else
inline V::T nibble_vec(const uint8_t* row, int64_t u) { return code_vec<4>(row, u); }  // one lane: no split
#endif

// Where channel c sits in the split order: blocks of 2W channels, even channels first.
inline int64_t split_index(int64_t c) {
  const int64_t blk = c / (2 * V::W) * (2 * V::W), i = c - blk;
  return blk + (i & 1) * V::W + (i >> 1);
}

// One channel's code, for groups that do not fill whole vectors.
template <int BITS>
inline float code_at(const uint8_t* row, int64_t c) {
  if constexpr (BITS == 8) return static_cast<float>(row[c]);
  else return static_cast<float>((row[c >> 1] >> ((c & 1) * 4)) & 0x0F);
}

// ---------------------------------------------------------------- a tile's rows, W channels at a time
// Two sources of row values with one interface: vec(r, u, g) is vector u of row r (channels
// u*W .. u*W + W - 1, or split order; g: their group), group_vecs() how many vectors share a scale and min.

// The cache itself, widened in registers: groups are whole vectors (group % W == 0). BITS = 4 with
// SPLIT: nibble_vec's order (groups then hold whole blocks of 2W channels).
template <int BITS, bool SPLIT = false>
struct QuantRows {
  const uint8_t* codes;
  const float* scale;
  const float* mins;
  int64_t width, ng, gvecs;
  int64_t group_vecs() const { return gvecs; }
  V::T vec(int64_t r, int64_t u, int64_t g) const {
    const uint8_t* row = codes + r * width;
    const V::T c = SPLIT ? nibble_vec(row, u) : code_vec<BITS>(row, u * V::W);
    return V::fma(c, V::set1(scale[r * ng + g]), V::set1(mins[r * ng + g]));
  }
};

// Rows already widened into fp32 (d floats each): groups that split a vector; the last vector masked.
struct FloatRows {
  const float* x;
  int64_t d, nvd;
  int64_t group_vecs() const { return nvd; }
  V::T vec(int64_t r, int64_t u, int64_t) const {
    const int64_t c = u * V::W;
    return c + V::W <= d ? V::load(x + r * d + c) : V::loadn(x + r * d + c, static_cast<int>(d - c));
  }
};

// Widen n rows channel by channel into out (n x d): the slow path for groups narrower than a vector.
template <int BITS>
void widen_rows(const uint8_t* codes, const float* scale, const float* mins, int64_t n, int64_t d, int64_t ng,
                float* out) {
  const int64_t group = d / ng, width = d * BITS / 8;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < d; ++c)
      out[r * d + c] = mins[r * ng + c / group] + scale[r * ng + c / group] * code_at<BITS>(codes + r * width, c);
}

// s[j][0:n] = q_j . row_r for HB query heads (q_j at q + j * dp, zero past d; s rows kTile apart). Each
// row is widened once for all HB heads; the W rows of a block are reduced together by transpose_sum.
// NVD > 0: the row's vector count known at compile time (the loops unroll, q stays in registers).
template <class Rows, int HB, int NVD>
void tile_scores(const Rows& rows_in, int64_t n, const float* q, int64_t dp, int64_t nvd_rt, float* s) {
  constexpr int W = V::W;
  const Rows rows = rows_in;  // a local copy: its fields stay in registers across the stores below
  const int64_t gv = rows.group_vecs(), nvd = NVD > 0 ? NVD : nvd_rt;
  int64_t grp[NVD > 0 ? NVD : 1];
  V::T qv[HB][NVD > 0 ? NVD : 1];  // held in registers over the tile (the stores to s could alias q)
  if constexpr (NVD > 0)
    for (int u = 0; u < NVD; ++u) {
      grp[u] = u / gv;
      for (int j = 0; j < HB; ++j) qv[j][u] = V::load(q + j * dp + u * W);
    }
  V::T part[HB][W];
  for (int64_t r0 = 0; r0 < n; r0 += W) {
    const int cnt = static_cast<int>(std::min<int64_t>(W, n - r0));
    for (int i = 0; i < W; ++i) {
      V::T a[HB];
      for (int j = 0; j < HB; ++j) a[j] = V::zero();
      if (i < cnt) {
        if constexpr (NVD > 0) {
          for (int u = 0; u < NVD; ++u) {
            const V::T x = rows.vec(r0 + i, u, grp[u]);
            for (int j = 0; j < HB; ++j) a[j] = V::fma(qv[j][u], x, a[j]);
          }
        } else {
          for (int64_t u0 = 0, g = 0; u0 < nvd; u0 += gv, ++g)
            for (int64_t u = u0; u < std::min(nvd, u0 + gv); ++u) {
              const V::T x = rows.vec(r0 + i, u, g);
              for (int j = 0; j < HB; ++j) a[j] = V::fma(V::load(q + j * dp + u * W), x, a[j]);
            }
        }
      }
      for (int j = 0; j < HB; ++j) part[j][i] = a[j];
    }
    for (int j = 0; j < HB; ++j) V::storen(s + j * kTile + r0, V::transpose_sum(part[j]), cnt);
  }
}

// The row widths that get their own unrolled scores: 4 and 8 vectors (d = 64, 128 with AVX-512;
// d = 32, 64 with AVX2); any other width takes the run-time loop.
template <class Rows, int HB>
void tile_scores_any(const Rows& rows, int64_t n, const float* q, int64_t dp, int64_t nvd, float* s) {
  if (nvd == 4) tile_scores<Rows, HB, 4>(rows, n, q, dp, nvd, s);
  else if (nvd == 8) tile_scores<Rows, HB, 8>(rows, n, q, dp, nvd, s);
  else tile_scores<Rows, HB, 0>(rows, n, q, dp, nvd, s);
}

// o_j[cols] = alpha_j * o_j[cols] + sum_r p_j[r] row_r[cols] for HB heads (o_j at o + j * dp, p_j at
// p + j * kTile), cols = vectors u0 .. u0 + NV - 1: HB * NV accumulators held over the tile's rows.
template <class Rows, int HB, int NV>
void tile_weigh(const Rows& rows_in, int64_t n, const float* p, const float* alpha, float* o, int64_t dp, int64_t u0) {
  constexpr int W = V::W;
  const Rows rows = rows_in;
  const int64_t gv = rows.group_vecs();
  int64_t grp[NV];
  for (int v = 0; v < NV; ++v) grp[v] = (u0 + v) / gv;
  V::T a[HB][NV];
  for (int j = 0; j < HB; ++j) {
    const V::T al = V::set1(alpha[j]);
    for (int v = 0; v < NV; ++v) a[j][v] = V::mul(V::load(o + j * dp + (u0 + v) * W), al);
  }
  for (int64_t r = 0; r < n; ++r) {
    V::T x[NV];
    for (int v = 0; v < NV; ++v) x[v] = rows.vec(r, u0 + v, grp[v]);
    for (int j = 0; j < HB; ++j) {
      const V::T pr = V::set1(p[j * kTile + r]);
      for (int v = 0; v < NV; ++v) a[j][v] = V::fma(pr, x[v], a[j][v]);
    }
  }
  for (int j = 0; j < HB; ++j)
    for (int v = 0; v < NV; ++v) V::store(o + j * dp + (u0 + v) * W, a[j][v]);
}

template <class Rows, int HB>
void tile_weigh_all(const Rows& rows, int64_t n, const float* p, const float* alpha, float* o, int64_t dp,
                    int64_t nvd) {
  for (int64_t u0 = 0; u0 < nvd; u0 += kVecs) {
    switch (std::min<int64_t>(kVecs, nvd - u0)) {
      case 1: tile_weigh<Rows, HB, 1>(rows, n, p, alpha, o, dp, u0); break;
      case 2: tile_weigh<Rows, HB, 2>(rows, n, p, alpha, o, dp, u0); break;
      case 3: tile_weigh<Rows, HB, 3>(rows, n, p, alpha, o, dp, u0); break;
      default: tile_weigh<Rows, HB, kVecs>(rows, n, p, alpha, o, dp, u0); break;
    }
  }
}

// The online softmax's step for one query head over a tile: s[0:n] becomes exp(s - m_new), l takes
// the tile's sum, and the returned factor rescales the head's output to the new running max m.
float softmax_step(float* s, int64_t n, float& m, float& l) {
  V::T mx = V::set1(kNegInf);
  int64_t r = 0;
  for (; r + V::W <= n; r += V::W) mx = V::max(mx, V::load(s + r));
  if (r < n) mx = V::max(mx, V::loadn_or(s + r, static_cast<int>(n - r), kNegInf));
  const float m_new = std::max(m, V::reduce_max(mx));
  const float alpha = rescale(m, m_new);
  const V::T shift = V::set1(-m_new);
  V::T sum = V::zero();
  for (r = 0; r + V::W <= n; r += V::W) {
    const V::T e = V::exp(V::add(V::load(s + r), shift));
    V::store(s + r, e);
    sum = V::add(sum, e);
  }
  if (r < n) {
    const int tail = static_cast<int>(n - r);
    const V::T e = V::keep(V::exp(V::add(V::loadn(s + r, tail), shift)), tail);
    V::storen(s + r, e, tail);
    sum = V::add(sum, e);
  }
  m = m_new;
  l = l * alpha + V::reduce_add(sum);
  return alpha;
}

// One tile of n rows (keys kr, values vr) against the G query heads of a kv head, in batches of up
// to four heads. qs: the heads' queries, dp floats apart (scaled by 1/sqrt(d), zero past d);
// m, l, o: this chunk's softmax state per head (o: dp floats per head); s: G * kTile scores.
template <class Rows>
void tile_step(const Rows& kr, const Rows& vr, int64_t n, const float* qs, int64_t G, int64_t dp, int64_t nvd,
               float* s, float* m, float* l, float* o) {
  constexpr int64_t kBatch = 4;
  float alpha[kBatch];
  for (int64_t j0 = 0; j0 < G; j0 += kBatch) {
    const int64_t hb = std::min(kBatch, G - j0);
    const float* qb = qs + j0 * dp;
    float* sb = s + j0 * kTile;
    switch (hb) {
      case 1: tile_scores_any<Rows, 1>(kr, n, qb, dp, nvd, sb); break;
      case 2: tile_scores_any<Rows, 2>(kr, n, qb, dp, nvd, sb); break;
      case 3: tile_scores_any<Rows, 3>(kr, n, qb, dp, nvd, sb); break;
      default: tile_scores_any<Rows, 4>(kr, n, qb, dp, nvd, sb); break;
    }
    for (int64_t j = 0; j < hb; ++j) alpha[j] = softmax_step(sb + j * kTile, n, m[j0 + j], l[j0 + j]);
    float* ob = o + j0 * dp;
    switch (hb) {
      case 1: tile_weigh_all<Rows, 1>(vr, n, sb, alpha, ob, dp, nvd); break;
      case 2: tile_weigh_all<Rows, 2>(vr, n, sb, alpha, ob, dp, nvd); break;
      case 3: tile_weigh_all<Rows, 3>(vr, n, sb, alpha, ob, dp, nvd); break;
      default: tile_weigh_all<Rows, 4>(vr, n, sb, alpha, ob, dp, nvd); break;
    }
  }
}

// One quantized cache (keys or values) of one kv head: codes, scale and min from row 0.
struct Cache {
  const uint8_t* codes;
  const float* scale;
  const float* mins;
};

// Rows [r0, r1) of one kv head in tiles of kTile. Groups of whole vectors are widened in registers
// as they are used; narrower ones first into kb, vb (kTile * d floats each).
template <int BITS, bool SPLIT>
void chunk_rows(const float* qs, int64_t G, Cache kc, Cache vc, int64_t r0, int64_t r1, int64_t d, int64_t ng,
                float* kb, float* vb, float* s, float* m, float* l, float* o) {
  const int64_t width = d * BITS / 8, group = d / ng, nvd = (d + V::W - 1) / V::W, dp = nvd * V::W;
  for (int64_t r = r0; r < r1; r += kTile) {
    const int64_t n = std::min(kTile, r1 - r), ahead = std::min(kTile, r1 - r - n);
    // the next tile's bytes while this one computes: six streams per thread, more than the
    // hardware prefetcher keeps ahead of when every layer's cache comes from memory
    for (const Cache& c : {kc, vc}) {
      for (int64_t x = (r + n) * width; x < (r + n + ahead) * width; x += 64) __builtin_prefetch(c.codes + x);
      for (int64_t x = (r + n) * ng; x < (r + n + ahead) * ng; x += 16) {
        __builtin_prefetch(c.scale + x);
        __builtin_prefetch(c.mins + x);
      }
    }
    if (group % V::W == 0) {
      const QuantRows<BITS, SPLIT> kr{kc.codes + r * width, kc.scale + r * ng, kc.mins + r * ng, width, ng, group / V::W};
      const QuantRows<BITS, SPLIT> vr{vc.codes + r * width, vc.scale + r * ng, vc.mins + r * ng, width, ng, group / V::W};
      tile_step(kr, vr, n, qs, G, dp, nvd, s, m, l, o);
    } else {
      widen_rows<BITS>(kc.codes + r * width, kc.scale + r * ng, kc.mins + r * ng, n, d, ng, kb);
      widen_rows<BITS>(vc.codes + r * width, vc.scale + r * ng, vc.mins + r * ng, n, d, ng, vb);
      tile_step(FloatRows{kb, d, nvd}, FloatRows{vb, d, nvd}, n, qs, G, dp, nvd, s, m, l, o);
    }
  }
}

struct Buffers {  // per-call state of the calling thread; it only grows
  std::vector<float> q, m, l, acc;
};

void check_cache(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& mins, const char* op,
                 const char* which, int64_t Hkv, int64_t cap, int64_t width, int64_t ng) {
  const std::string cn = std::string(which) + "_codes", sn = std::string(which) + "_scale",
                    mn = std::string(which) + "_min";
  effnb::check_cpu_contiguous(codes, op, cn.c_str());
  effnb::check_cpu_contiguous(scale, op, sn.c_str());
  effnb::check_cpu_contiguous(mins, op, mn.c_str());
  effnb::check_dtype(codes, at::kByte, op, cn.c_str());
  effnb::check_dtype(scale, at::kFloat, op, sn.c_str());
  effnb::check_dtype(mins, at::kFloat, op, mn.c_str());
  TORCH_CHECK(codes.dim() == 3 && codes.size(0) == Hkv && codes.size(1) == cap && codes.size(2) == width, op, ": ",
              cn, " has shape ", codes.sizes(), "; pass (Hkv, cap, d * bits / 8) = (", Hkv, ", ", cap, ", ", width,
              ")");
  TORCH_CHECK(scale.dim() == 3 && scale.size(0) == Hkv && scale.size(1) == cap && scale.size(2) == ng, op, ": ", sn,
              " has shape ", scale.sizes(), "; pass (Hkv, cap, d / group) = (", Hkv, ", ", cap, ", ", ng, ")");
  TORCH_CHECK(mins.sizes() == scale.sizes(), op, ": ", mn, " has shape ", mins.sizes(), "; pass ", sn, "'s shape ",
              scale.sizes());
}

}  // namespace

at::Tensor kv_decode(const at::Tensor& q, const at::Tensor& k_codes, const at::Tensor& k_scale,
                     const at::Tensor& k_min, const at::Tensor& v_codes, const at::Tensor& v_scale,
                     const at::Tensor& v_min, int64_t length, int64_t bits) {
  const char* op = "longcontext_kv_decode";
  effnb::check_cpu_contiguous(q, op, "q");
  effnb::check_dtype(q, at::kFloat, op, "q");
  TORCH_CHECK(q.dim() == 2, op, ": q has shape ", q.sizes(), "; pass the new token's query heads as (Hq, d)");
  TORCH_CHECK(bits == 4 || bits == 8, op, ": bits is ", bits, "; pass 4 or 8");
  TORCH_CHECK(k_codes.dim() == 3 && k_scale.dim() == 3, op, ": k_codes and k_scale have shapes ", k_codes.sizes(),
              " and ", k_scale.sizes(), "; pass (Hkv, cap, d * bits / 8) and (Hkv, cap, d / group)");
  const int64_t Hq = q.size(0), d = q.size(1), Hkv = k_codes.size(0), cap = k_codes.size(1), ng = k_scale.size(2);
  TORCH_CHECK(bits == 8 || d % 2 == 0, op, ": d = ", d, " is odd; int4 codes need an even head size");
  TORCH_CHECK(ng >= 1 && d % ng == 0, op, ": k_scale has ", ng, " groups per row; pass d / group groups, group | d = ",
              d);
  check_cache(k_codes, k_scale, k_min, op, "k", Hkv, cap, d * bits / 8, ng);
  check_cache(v_codes, v_scale, v_min, op, "v", Hkv, cap, d * bits / 8, ng);
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, ": Hq = ", Hq, " is not a multiple of Hkv = ", Hkv,
              "; pass Hq = group * Hkv query heads (query head j uses kv head j // group)");
  TORCH_CHECK(length >= 1 && length <= cap, op, ": length is ", length, "; pass 1 <= length <= cap = ", cap);

  at::Tensor out = at::empty({Hq, d}, q.options());
  if (d == 0 || Hq == 0) return out;
  const int64_t G = Hq / Hkv;
  const int64_t per_head = std::clamp<int64_t>(length / kMinChunk, 1, (kItems + Hkv - 1) / Hkv);
  const int64_t chunk = (length + per_head - 1) / per_head, items = Hkv * per_head;
  const int64_t dp = (d + V::W - 1) / V::W * V::W;  // a query or output row, padded to whole vectors

  thread_local Buffers bf;
  auto grow = [](std::vector<float>& vec, int64_t n) { if (static_cast<int64_t>(vec.size()) < n) vec.resize(n); };
  grow(bf.q, Hq * dp);
  grow(bf.m, items * G);
  grow(bf.l, items * G);
  grow(bf.acc, items * G * dp);
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const float* Q = q.data_ptr<float>();
  float* qs = bf.q.data();
  // int4 in whole blocks of 2W channels per group: nibbles kept apart, q and the output in split order
  const bool split = bits == 4 && V::W > 1 && (d / ng) % (2 * V::W) == 0;
  auto at_of = [split](int64_t c) { return split ? split_index(c) : c; };
  for (int64_t j = 0; j < Hq; ++j) {
    for (int64_t x = 0; x < d; ++x) qs[j * dp + at_of(x)] = Q[j * d + x] * scale;
    std::fill(qs + j * dp + d, qs + (j + 1) * dp, 0.f);
  }
  float *pm = bf.m.data(), *pl = bf.l.data(), *pacc = bf.acc.data();
  float* O = out.data_ptr<float>();
  const int64_t width = d * bits / 8;
  const uint8_t* KC = k_codes.data_ptr<uint8_t>();
  const uint8_t* VC = v_codes.data_ptr<uint8_t>();
  const float *KS = k_scale.data_ptr<float>(), *KM = k_min.data_ptr<float>();
  const float *VS = v_scale.data_ptr<float>(), *VM = v_min.data_ptr<float>();
  const int threads = length * Hq * d >= (1 << 15) ? omp_get_max_threads() : 1;  // tiny: no fork

#pragma omp parallel num_threads(threads)
  {
    thread_local std::vector<float> tile;  // widened K and V tiles, then one score row per query head
    if (static_cast<int64_t>(tile.size()) < 2 * kTile * d + G * kTile) tile.resize(2 * kTile * d + G * kTile);
    float *kb = tile.data(), *vb = kb + kTile * d, *s = vb + kTile * d;
    // 1. each chunk of each kv head's rows: its own softmax state per query head
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t h = it / per_head, r0 = (it % per_head) * chunk, r1 = std::min(length, r0 + chunk);
      float *m = pm + it * G, *l = pl + it * G, *o = pacc + it * G * dp;
      std::fill(m, m + G, kNegInf);
      std::fill(l, l + G, 0.f);
      std::fill(o, o + G * dp, 0.f);
      const Cache kc{KC + h * cap * width, KS + h * cap * ng, KM + h * cap * ng};
      const Cache vc{VC + h * cap * width, VS + h * cap * ng, VM + h * cap * ng};
      if (bits == 8) chunk_rows<8, false>(qs + h * G * dp, G, kc, vc, r0, r1, d, ng, kb, vb, s, m, l, o);
      else if (split) chunk_rows<4, true>(qs + h * G * dp, G, kc, vc, r0, r1, d, ng, kb, vb, s, m, l, o);
      else chunk_rows<4, false>(qs + h * G * dp, G, kc, vc, r0, r1, d, ng, kb, vb, s, m, l, o);
    }  // (implied barrier: every chunk's state is written)
    // 2. merge each query head's chunks, in chunk order, with their log-sum-exp weights
#pragma omp for schedule(static)
    for (int64_t jq = 0; jq < Hq; ++jq) {
      const int64_t h = jq / G, j = jq % G;
      float top = kNegInf;
      for (int64_t c = 0; c < per_head; ++c) top = std::max(top, pm[(h * per_head + c) * G + j]);
      float* o = O + jq * d;
      std::fill(o, o + d, 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < per_head; ++c) {
        const int64_t at = (h * per_head + c) * G + j;
        const float w = rescale(pm[at], top);
        if (w == 0.f) continue;
        total += w * pl[at];
        const float* a = pacc + at * dp;
        for (int64_t x = 0; x < d; ++x) o[x] += w * a[at_of(x)];
      }
      const float inv = 1.f / total;  // every chunk holds >= 1 row: the top one adds >= 1
      for (int64_t x = 0; x < d; ++x) o[x] *= inv;
    }
  }
  return out;
}

}  // namespace effnb_longcontext
