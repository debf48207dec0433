// Block top-k decode attention: one new token's query heads against a KV cache.
//
//   attention_topk_decode(q (Hq, d), k, v (Hkv, cap, d), summary (Hkv, nsum, d), length, block, topk)
//
// The first nfull = length / block blocks of each kv head are scored by the max over the
// head's query group of q_j . summary[b]; the topk best (ties: lower block first) plus the
// tail rows nfull*block .. length-1 are attended exactly. topk >= nfull selects every block:
// the same code is then plain dense decoding, the comparator of the chapter.
//
// Every kv head attends the same number R of rows, so the work splits before the selection is
// known: each head's R selected rows are cut into a few chunks (flash-decoding), each chunk
// keeps its own softmax state (max, sum, output) per query head, and a last step merges the
// chunks with their log-sum-exp weights. With 3 kv heads on 2 threads a per-head split would
// leave a thread idle a third of the time; chunks let the dynamic schedule even it out. The
// chunk count depends only on the shapes, so every thread count gives the same bits.
// Within a chunk, rows are streamed in contiguous tiles of up to 64: each tile's K rows come from
// memory once for all query heads of the group (the dot products of W rows reduced together by
// V::transpose_sum), then a softmax step and the weighted sum of the tile's V rows. A query
// head with no key at all (topk 0 and no partial block) gets a zero row.

#include "attention.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>
#include <vector>

namespace effnb_attention {
namespace {

constexpr int64_t kTile = 64;     // rows per softmax step; S holds one tile per query head
constexpr int kVecs = 4;          // vectors of the output kept in registers per pass
constexpr int64_t kMinChunk = 256;  // rows: below this a chunk's merge costs more than it saves
constexpr int64_t kItems = 16;    // aim: about this many chunks over all heads, whatever the thread count

// s[0:n] = scale * (q . row_r), rows at k0 + r*d (n <= W when not FULL: the last row repeats).
template <bool FULL>
inline void dots_w(const float* q, const float* k0, int n, int64_t d, float scale, float* s) {
  constexpr int W = V::W;
  const float* rp[W];
  for (int i = 0; i < W; ++i) rp[i] = k0 + (FULL ? i : std::min(i, n - 1)) * d;
  V::T acc[W];
  for (int i = 0; i < W; ++i) acc[i] = V::zero();
  int64_t c = 0;
  for (; c + W <= d; c += W) {
    const V::T qv = V::load(q + c);
    for (int i = 0; i < W; ++i) acc[i] = V::fma(qv, V::load(rp[i] + c), acc[i]);
  }
  if (c < d) {
    const int m = static_cast<int>(d - c);
    const V::T qv = V::loadn(q + c, m);
    for (int i = 0; i < W; ++i) acc[i] = V::fma(qv, V::loadn(rp[i] + c, m), acc[i]);
  }
  const V::T r = V::mul(V::transpose_sum(acc), V::set1(scale));
  if (FULL) V::store(s, r); else V::storen(s, r, n);
}

inline void dots(const float* q, const float* k0, int64_t n, int64_t d, float scale, float* s) {
  int64_t r = 0;
  for (; r + V::W <= n; r += V::W) dots_w<true>(q, k0 + r * d, V::W, d, scale, s + r);
  if (r < n) dots_w<false>(q, k0 + r * d, static_cast<int>(n - r), d, scale, s + r);
}

// acc[cols] = alpha * acc[cols] + sum_r p[r] v0[r*d + cols], cols = NV vectors from acc's start,
// the last one `last` lanes wide.
template <int NV>
inline void weighted_rows(float* acc, float alpha, const float* p, const float* v0, int64_t n, int64_t d, int last) {
  constexpr int W = V::W;
  V::T a[NV];
  const V::T al = V::set1(alpha);
  for (int u = 0; u < NV - 1; ++u) a[u] = V::mul(V::load(acc + u * W), al);
  a[NV - 1] = V::mul(V::loadn(acc + (NV - 1) * W, last), al);
  for (int64_t r = 0; r < n; ++r) {
    const V::T pr = V::set1(p[r]);
    const float* vr = v0 + r * d;
    for (int u = 0; u < NV - 1; ++u) a[u] = V::fma(pr, V::load(vr + u * W), a[u]);
    a[NV - 1] = V::fma(pr, V::loadn(vr + (NV - 1) * W, last), a[NV - 1]);
  }
  for (int u = 0; u < NV - 1; ++u) V::store(acc + u * W, a[u]);
  V::storen(acc + (NV - 1) * W, a[NV - 1], last);
}

template <int NV>
inline void weighted_rows_upto(int nv, float* acc, float alpha, const float* p, const float* v0, int64_t n,
                               int64_t d, int last) {
  if constexpr (NV > 0) {
    if (nv == NV) weighted_rows<NV>(acc, alpha, p, v0, n, d, last);
    else weighted_rows_upto<NV - 1>(nv, acc, alpha, p, v0, n, d, last);
  }
}

// One chunk's softmax state per query head of the group: running max m, sum l, output acc (d).
struct State {
  float* m;
  float* l;
  float* acc;
};

// Rows [r0, r0 + n) of one kv head (n <= kTile) against the group's G query heads.
void tile_step(const float* q, int64_t G, const float* k0, const float* v0, int64_t n, int64_t d, float scale,
               int64_t ahead, float* s, State st) {
  // the next `ahead` rows of the run, while this tile computes: the stream then stays ahead of the
  // hardware prefetcher (dense decoding at 16k rows measured faster with it on one thread)
  for (int64_t x = n * d; x < (n + ahead) * d; x += 16) {
    __builtin_prefetch(k0 + x);
    __builtin_prefetch(v0 + x);
  }
  for (int64_t j = 0; j < G; ++j) dots(q + j * d, k0, n, d, scale, s + j * kTile);
  for (int64_t j = 0; j < G; ++j) {
    float* sj = s + j * kTile;
    V::T mx = V::set1(kNegInf);
    int64_t r = 0;
    for (; r + V::W <= n; r += V::W) mx = V::max(mx, V::load(sj + r));
    if (r < n) mx = V::max(mx, V::loadn_or(sj + r, static_cast<int>(n - r), kNegInf));
    const float m_old = st.m[j], m_new = std::max(m_old, V::reduce_max(mx));
    const float alpha = rescale(m_old, m_new);
    V::T sum = V::zero();
    const V::T neg_m = V::set1(-m_new);
    for (r = 0; r + V::W <= n; r += V::W) {
      const V::T e = V::exp(V::add(V::load(sj + r), neg_m));
      V::store(sj + r, e);
      sum = V::add(sum, e);
    }
    if (r < n) {
      const int m = static_cast<int>(n - r);
      const V::T e = V::keep(V::exp(V::add(V::loadn(sj + r, m), neg_m)), m);
      V::storen(sj + r, e, m);
      sum = V::add(sum, e);
    }
    st.m[j] = m_new;
    st.l[j] = st.l[j] * alpha + V::reduce_add(sum);
    float* acc = st.acc + j * d;
    for (int64_t c = 0; c < d; c += kVecs * V::W) {
      const int64_t vecs = std::min<int64_t>(kVecs, (d - c + V::W - 1) / V::W);
      const int last = static_cast<int>(d - c - (vecs - 1) * V::W);
      weighted_rows_upto<kVecs>(static_cast<int>(vecs), acc + c, alpha, sj, v0 + c, n, d, std::min(last, V::W));
    }
  }
}

inline float dot(const float* a, const float* b, int64_t d) {
  V::T s = V::zero();
  int64_t c = 0;
  for (; c + V::W <= d; c += V::W) s = V::fma(V::load(a + c), V::load(b + c), s);
  if (c < d) s = V::fma(V::loadn(a + c, static_cast<int>(d - c)), V::loadn(b + c, static_cast<int>(d - c)), s);
  return V::reduce_add(s);
}

// Per-call buffers of the calling thread; they only grow.
struct Scratch {
  std::vector<float> score, m, l, acc, s;
  std::vector<int32_t> sel;
};

}  // namespace

at::Tensor topk_decode(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& summary,
                       int64_t length, int64_t block, int64_t topk, int64_t sink) {
  const char* op = "attention_topk_decode";
  const std::pair<const at::Tensor*, const char*> inputs[] = {{&q, "q"}, {&k, "k"}, {&v, "v"}, {&summary, "summary"}};
  for (const auto& [t, name] : inputs) {
    effnb::check_cpu_contiguous(*t, op, name);
    effnb::check_dtype(*t, at::kFloat, op, name);
  }
  TORCH_CHECK(q.dim() == 2, op, ": q has shape ", q.sizes(), "; pass the new token's query heads as (Hq, d)");
  TORCH_CHECK(k.dim() == 3, op, ": k has shape ", k.sizes(), "; pass the key cache as (Hkv, cap, d)");
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v has shape ", v.sizes(), "; pass the value cache with k's shape ",
              k.sizes());
  const int64_t Hq = q.size(0), d = q.size(1), Hkv = k.size(0), cap = k.size(1);
  TORCH_CHECK(k.size(2) == d, op, ": k has head size ", k.size(2), " but q has ", d, "; pass q and k with one d");
  TORCH_CHECK(Hkv >= 1 && Hq % Hkv == 0, op, ": Hq = ", Hq, " is not a multiple of Hkv = ", Hkv,
              "; pass Hq = group * Hkv query heads (query head j uses kv head j // group)");
  TORCH_CHECK(length >= 1 && length <= cap, op, ": length is ", length, "; pass 1 <= length <= cap = ", cap);
  TORCH_CHECK(block >= 1, op, ": block is ", block, "; pass a block size >= 1");
  TORCH_CHECK(topk >= 0, op, ": topk is ", topk, "; pass topk >= 0 (0: the tail only)");
  TORCH_CHECK(sink >= 0, op, ": sink is ", sink, "; pass sink >= 0 leading blocks always attended (0: none)");
  const int64_t nfull = length / block;
  TORCH_CHECK(summary.dim() == 3 && summary.size(0) == Hkv && summary.size(2) == d && summary.size(1) >= nfull, op,
              ": summary has shape ", summary.sizes(), "; pass (Hkv, nsum, d) = (", Hkv, ", >= ", nfull, ", ", d,
              "): the mean key of each of the length // block full blocks");

  at::Tensor out = at::empty({Hq, d}, q.options());
  if (d == 0 || Hq == 0) return out;
  // the first `sink` blocks always count (the model's attention sinks), on top of the topk scored ones
  const int64_t G = Hq / Hkv, nsel = std::min(topk + sink, nfull), sel_rows = nsel * block;
  const int64_t R = sel_rows + (length - nfull * block);  // rows each kv head attends
  const int64_t per_head = std::clamp<int64_t>(R / kMinChunk, 1, (kItems + Hkv - 1) / Hkv);
  const int64_t chunk = std::max<int64_t>(1, (R + per_head - 1) / per_head), items = Hkv * per_head;
  const bool select = 0 < nsel && nsel < nfull;  // else every block, or none: nothing to score

  thread_local Scratch sc;
  auto grow = [](auto& vec, int64_t n) { if (static_cast<int64_t>(vec.size()) < n) vec.resize(n); };
  grow(sc.m, items * G);
  grow(sc.l, items * G);
  grow(sc.acc, items * G * d);
  if (select) {
    grow(sc.score, Hkv * nfull);
    grow(sc.sel, Hkv * nfull);
  }
  const float* Q = q.data_ptr<float>();
  const float* K = k.data_ptr<float>();
  const float* Vv = v.data_ptr<float>();
  const float* S = summary.data_ptr<float>();
  const int64_t nsum = summary.size(1);
  float* O = out.data_ptr<float>();
  float *pm = sc.m.data(), *pl = sc.l.data(), *pacc = sc.acc.data(), *score = sc.score.data();
  int32_t* sel = sc.sel.data();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const int threads = R * Hq * d >= (1 << 15) ? omp_get_max_threads() : 1;  // tiny: no fork

#pragma omp parallel num_threads(threads)
  {
    thread_local std::vector<float> s;  // one tile of scores per query head of the group
    if (static_cast<int64_t>(s.size()) < G * kTile) s.resize(G * kTile);
    // 1. score the full blocks and select the topk of each kv head, in block order
    if (select) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t h = 0; h < Hkv; ++h) {
        float* sh = score + h * nfull;
        const float* qg = Q + h * G * d;
        for (int64_t b = 0; b < std::min(sink, nfull); ++b) sh[b] = kPosInf;
        for (int64_t b = std::min(sink, nfull); b < nfull; ++b) {
          const float* sb = S + (h * nsum + b) * d;
          float best = kNegInf;
          for (int64_t j = 0; j < G; ++j) best = std::max(best, dot(qg + j * d, sb, d));  // NaN loses
          sh[b] = best;
        }
        int32_t* ix = sel + h * nfull;
        std::iota(ix, ix + nfull, 0);
        auto better = [sh](int32_t a, int32_t b) { return sh[a] > sh[b] || (sh[a] == sh[b] && a < b); };
        std::nth_element(ix, ix + nsel, ix + nfull, better);
        std::sort(ix, ix + nsel);
      }  // (implied barrier: every head's selection is known)
    }
    // 2. each chunk of each head's selected rows: its own softmax state
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t h = it / per_head, p0 = (it % per_head) * chunk, p1 = std::min(R, p0 + chunk);
      const int32_t* ih = select ? sel + h * nfull : nullptr;
      auto row_of = [&](int64_t p) -> int64_t {
        if (p >= sel_rows) return nfull * block + (p - sel_rows);
        return (select ? ih[p / block] : p / block) * block + p % block;
      };
      State st{pm + it * G, pl + it * G, pacc + it * G * d};
      std::fill(st.m, st.m + G, kNegInf);
      std::fill(st.l, st.l + G, 0.f);
      std::fill(st.acc, st.acc + G * d, 0.f);
      const float* kh = K + h * cap * d;
      const float* vh = Vv + h * cap * d;
      for (int64_t p = p0; p < p1;) {
        // the longest run of consecutive cache rows from p: whole blocks while they are adjacent
        const int64_t r0 = row_of(p);
        int64_t len = p < sel_rows ? std::min(block - p % block, p1 - p) : p1 - p;
        while (p + len < p1 && row_of(p + len) == r0 + len)
          len += p + len < sel_rows ? std::min(block, p1 - p - len) : p1 - p - len;
        for (int64_t r = r0; r < r0 + len; r += kTile) {
          const int64_t n = std::min(kTile, r0 + len - r), ahead = std::min(kTile, r0 + len - r - n);
          tile_step(Q + h * G * d, G, kh + r * d, vh + r * d, n, d, scale, ahead, s.data(), st);
        }
        p += len;
      }
    }  // (implied barrier: every chunk's state is written)
    // 3. merge each query head's chunks with their log-sum-exp weights
#pragma omp for schedule(static)
    for (int64_t jq = 0; jq < Hq; ++jq) {
      const int64_t h = jq / G, j = jq % G;
      float mmax = kNegInf;
      for (int64_t c = 0; c < per_head; ++c) mmax = std::max(mmax, pm[(h * per_head + c) * G + j]);
      float* o = O + jq * d;
      std::fill(o, o + d, 0.f);
      float total = 0.f;
      for (int64_t c = 0; c < per_head; ++c) {
        const int64_t at = (h * per_head + c) * G + j;
        const float w = rescale(pm[at], mmax);
        if (w == 0.f) continue;
        total += w * pl[at];
        const float* a = pacc + at * d;
        for (int64_t x = 0; x < d; ++x) o[x] += w * a[x];
      }
      const float inv = total > 0.f ? 1.f / total : 0.f;  // no key at all (topk 0, empty tail): a zero row
      for (int64_t x = 0; x < d; ++x) o[x] *= inv;
    }
  }
  return out;
}

}  // namespace effnb_attention
