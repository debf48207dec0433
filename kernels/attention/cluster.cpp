// Clustered (routing) attention: each query attends only the keys of its own cluster.
//
//   attention_cluster(q, k, v (H, n, d), q_order, k_order (H, n), q_offsets, k_offsets (H, C+1), causal)
//
// Cluster c of head h: queries q_order[h, q_offsets[h,c] : q_offsets[h,c+1]] against keys
// k_order[h, k_offsets[h,c] : k_offsets[h,c+1]], both in ascending position. The cost is the
// sum over clusters of |Qc| |Kc| d, ~n^1.5 d with ~sqrt(n) balanced clusters, where dense
// attention pays n^2 d.
//
// Work items are (head, cluster, tile of up to 128 queries), largest first, dealt dynamically
// (clusters can be very unbalanced). An item gathers its queries (scaled by 1/sqrt(d)) into a
// contiguous tile, then walks the cluster's keys in tiles (64 keys with AVX-512) with an online
// softmax, so no |Qc| x |Kc| buffer exists: each key tile is gathered transposed (d x keys),
// scores come from a 4-query x 4-vector register block (one broadcast per query and dimension),
// and the weighted sum of V rows from a 4-query x 4-vector block. Causal: as both orders ascend,
// query i's allowed keys are a prefix of the cluster's keys; a tile stops at its last query's
// prefix, and each group of 4 queries stops at its own (to the vector). Gathered rows are random
// rows of q, k, v: they are prefetched 8 rows ahead, or the gathers wait on memory latency.
// Every item's result is computed the same way whichever thread takes it: same bits at any
// thread count.

#include "attention.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace effnb_attention {
namespace {

constexpr int MR = 4;                            // queries per register block
constexpr int NV = V::W >= 8 ? 4 : 16 / V::W;    // vectors of keys (or of output columns) per block
constexpr int64_t BK = NV * V::W;                // keys per tile: 64 (AVX-512), 32 (AVX2), 16 (scalar)
constexpr int64_t BQ = 128;  // queries per work item: each gathered key tile serves this many (64: slower)

// S[MR][BK] (first NVX vectors) = Q[MR][d] . Kt[d][BK]
template <int NVX>
inline void scores(const float* Q, const float* Kt, int64_t d, float* S) {
  V::T acc[MR][NVX];
  for (int i = 0; i < MR; ++i)
    for (int u = 0; u < NVX; ++u) acc[i][u] = V::zero();
  for (int64_t c = 0; c < d; ++c) {
    V::T kv[NVX];
    for (int u = 0; u < NVX; ++u) kv[u] = V::load(Kt + c * BK + u * V::W);
    for (int i = 0; i < MR; ++i) {
      const V::T qb = V::set1(Q[i * d + c]);
      for (int u = 0; u < NVX; ++u) acc[i][u] = V::fma(qb, kv[u], acc[i][u]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int u = 0; u < NVX; ++u) V::store(S + i * BK + u * V::W, acc[i][u]);
}

// O[MR][cols] += P[MR][0:n] . Vt[0:n][cols], cols = NVX vectors from column 0 of O and Vt
template <int NVX>
inline void weighted(const float* P, const float* Vt, int64_t dp, int64_t n, float* O) {
  V::T acc[MR][NVX];
  for (int i = 0; i < MR; ++i)
    for (int u = 0; u < NVX; ++u) acc[i][u] = V::load(O + i * dp + u * V::W);
  for (int64_t r = 0; r < n; ++r) {
    V::T vv[NVX];
    for (int u = 0; u < NVX; ++u) vv[u] = V::load(Vt + r * dp + u * V::W);
    for (int i = 0; i < MR; ++i) {
      const V::T pb = V::set1(P[i * BK + r]);
      for (int u = 0; u < NVX; ++u) acc[i][u] = V::fma(pb, vv[u], acc[i][u]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int u = 0; u < NVX; ++u) V::store(O + i * dp + u * V::W, acc[i][u]);
}

template <int N>
inline void scores_upto(int nv, const float* Q, const float* Kt, int64_t d, float* S) {
  if constexpr (N > 0) {
    if (nv == N) scores<N>(Q, Kt, d, S);
    else scores_upto<N - 1>(nv, Q, Kt, d, S);
  }
}

template <int N>
inline void weighted_upto(int nv, const float* P, const float* Vt, int64_t dp, int64_t n, float* O) {
  if constexpr (N > 0) {
    if (nv == N) weighted<N>(P, Vt, dp, n, O);
    else weighted_upto<N - 1>(nv, P, Vt, dp, n, O);
  }
}

struct Item {
  int64_t h, c, q0, cost;
};

// A work item's tiles, in the thread that runs it; they only grow.
struct Tiles {
  std::vector<float> q, kt, vt, s, o, m, l;
  std::vector<int64_t> lim;
  void fit(int64_t d, int64_t dp) {
    auto grow = [](std::vector<float>& x, int64_t n) { if (static_cast<int64_t>(x.size()) < n) x.resize(n); };
    grow(q, BQ * d);
    grow(kt, d * BK);
    grow(vt, BK * dp);
    grow(s, BQ * BK);
    grow(o, BQ * dp);
    grow(m, BQ);
    grow(l, BQ);
    if (lim.size() < static_cast<size_t>(BQ)) lim.resize(BQ);
  }
};

struct Args {
  const float *q, *k, *v;
  const int64_t *qo, *qoff, *ko, *koff;
  int64_t n, d, dp, C;
  bool causal;
  float* out;
};

// Queries q0 .. q0+BQ of cluster c of head h.
void run_item(const Args& a, const Item& it, Tiles& t) {
  const int64_t d = a.d, dp = a.dp, n = a.n;
  const int64_t* qidx = a.qo + it.h * n + a.qoff[it.h * (a.C + 1) + it.c] + it.q0;
  const int64_t nq = std::min(BQ, a.qoff[it.h * (a.C + 1) + it.c + 1] - a.qoff[it.h * (a.C + 1) + it.c] - it.q0);
  const int64_t* kidx = a.ko + it.h * n + a.koff[it.h * (a.C + 1) + it.c];
  const int64_t nk = a.koff[it.h * (a.C + 1) + it.c + 1] - a.koff[it.h * (a.C + 1) + it.c];
  const float* qh = a.q + it.h * n * d;
  const float* kh = a.k + it.h * n * d;
  const float* vh = a.v + it.h * n * d;
  const int64_t rows = (nq + MR - 1) / MR * MR;
  const float scale = 1.f / std::sqrt(static_cast<float>(d));

  float *Q = t.q.data(), *Kt = t.kt.data(), *Vt = t.vt.data(), *S = t.s.data(), *O = t.o.data();
  float *m = t.m.data(), *l = t.l.data();
  int64_t* lim = t.lim.data();
  // each query's allowed keys: a prefix of the cluster's (both ascend), found by one merge walk
  constexpr int64_t kAhead = 8;  // rows prefetched ahead of a gather: random rows are latency-bound
  auto prefetch_row = [d](const float* row) {
    for (int64_t c = 0; c < d; c += 16) __builtin_prefetch(row + c);
  };
  for (int64_t i = 0; i < std::min(kAhead, nq); ++i) prefetch_row(qh + qidx[i] * d);
  int64_t j = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (i + kAhead < nq) prefetch_row(qh + qidx[i + kAhead] * d);
    if (i >= nq) {
      lim[i] = 0;
      continue;
    }
    if (a.causal) {
      while (j < nk && kidx[j] <= qidx[i]) ++j;
      lim[i] = j;
    } else {
      lim[i] = nk;
    }
    for (int64_t c = 0; c < d; ++c) Q[i * d + c] = qh[qidx[i] * d + c] * scale;
  }
  std::fill(Q + nq * d, Q + rows * d, 0.f);
  std::fill(O, O + rows * dp, 0.f);
  std::fill(m, m + rows, kNegInf);
  std::fill(l, l + rows, 0.f);
  const int64_t kend = nq > 0 ? lim[nq - 1] : 0;

  for (int64_t t0 = 0; t0 < kend; t0 += BK) {
    const int64_t nt = std::min(BK, kend - t0);
    for (int64_t r = 0; r < std::min(kAhead, nt); ++r) {
      prefetch_row(kh + kidx[t0 + r] * d);
      prefetch_row(vh + kidx[t0 + r] * d);
    }
    for (int64_t r = 0; r < nt; ++r) {  // gather: K transposed, V as rows padded to dp
      if (r + kAhead < nt) {
        prefetch_row(kh + kidx[t0 + r + kAhead] * d);
        prefetch_row(vh + kidx[t0 + r + kAhead] * d);
      }
      const float* kr = kh + kidx[t0 + r] * d;
      const float* vr = vh + kidx[t0 + r] * d;
      for (int64_t c = 0; c < d; ++c) Kt[c * BK + r] = kr[c];
      std::copy(vr, vr + d, Vt + r * dp);
      std::fill(Vt + r * dp + d, Vt + (r + 1) * dp, 0.f);
    }
    for (int64_t c = 0; c < d; ++c) std::fill(Kt + c * BK + nt, Kt + (c + 1) * BK, 0.f);

    for (int64_t g = 0; g < rows; g += MR) {
      int64_t glen = 0;  // keys of this tile any of the group's queries may see
      for (int i = 0; i < MR; ++i) glen = std::max(glen, std::clamp<int64_t>(lim[g + i] - t0, 0, nt));
      if (glen == 0) continue;
      float* Sg = S + g * BK;
      scores_upto<NV>(static_cast<int>((glen + V::W - 1) / V::W), Q + g * d, Kt, d, Sg);
      for (int i = 0; i < MR; ++i) {  // online softmax of each query over its allowed keys
        float* si = Sg + i * BK;
        const int64_t len = std::clamp<int64_t>(lim[g + i] - t0, 0, nt);
        if (len == 0) {
          std::fill(si, si + glen, 0.f);
          continue;
        }
        V::T mx = V::set1(kNegInf);
        int64_t r = 0;
        for (; r + V::W <= len; r += V::W) mx = V::max(mx, V::load(si + r));
        if (r < len) mx = V::max(mx, V::loadn_or(si + r, static_cast<int>(len - r), kNegInf));
        const float m_old = m[g + i], m_new = std::max(m_old, V::reduce_max(mx));
        const V::T neg_m = V::set1(-m_new);
        V::T sum = V::zero();
        for (r = 0; r < glen; r += V::W) {  // whole vectors: S has room up to BK
          const int64_t left = len - r;
          V::T e = V::exp(V::add(V::load(si + r), neg_m));
          if (left < V::W) e = V::keep(e, static_cast<int>(std::max<int64_t>(left, 0)));
          V::store(si + r, e);
          sum = V::add(sum, e);
        }
        if (m_new != m_old) {
          const float alpha = rescale(m_old, m_new);
          l[g + i] *= alpha;
          float* oi = O + (g + i) * dp;
          for (int64_t c = 0; c < dp; ++c) oi[c] *= alpha;
        }
        m[g + i] = m_new;
        l[g + i] += V::reduce_add(sum);
      }
      for (int64_t c = 0; c < dp; c += NV * V::W) {
        const int nv = static_cast<int>(std::min<int64_t>(NV, (dp - c) / V::W));
        weighted_upto<NV>(nv, Sg, Vt + c, dp, glen, O + g * dp + c);
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) {  // a query with no allowed key gets a zero row
    float* o = a.out + (it.h * n + qidx[i]) * d;
    const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
    for (int64_t c = 0; c < d; ++c) o[c] = O[i * dp + c] * inv;
  }
}

// offsets start at 0, never decrease, end at n; order holds each token once, ascending per cluster.
void check_clusters(const at::Tensor& order, const at::Tensor& offsets, const char* oname, const char* fname,
                    int64_t H, int64_t n, int64_t C1) {
  const char* op = "attention_cluster";
  effnb::check_cpu_contiguous(order, op, oname);
  effnb::check_cpu_contiguous(offsets, op, fname);
  effnb::check_dtype(order, at::kLong, op, oname);
  effnb::check_dtype(offsets, at::kLong, op, fname);
  TORCH_CHECK(order.dim() == 2 && order.size(0) == H && order.size(1) == n, op, ": ", oname, " has shape ",
              order.sizes(), "; pass (H, n) = (", H, ", ", n, "): each head's token indices, cluster by cluster");
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(0) == H && offsets.size(1) == C1, op, ": ", fname, " has shape ",
              offsets.sizes(), "; pass (H, C+1) = (", H, ", ", C1, "), as q_offsets");
  const int64_t* o = order.data_ptr<int64_t>();
  const int64_t* f = offsets.data_ptr<int64_t>();
  std::vector<uint8_t> seen(n);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t* fh = f + h * C1;
    TORCH_CHECK(fh[0] == 0 && fh[C1 - 1] == n, op, ": ", fname, "[", h, "] runs from ", fh[0], " to ",
                fh[C1 - 1], "; pass offsets from 0 to n = ", n);
    std::fill(seen.begin(), seen.end(), 0);
    for (int64_t c = 0; c + 1 < C1; ++c) {
      TORCH_CHECK(fh[c] <= fh[c + 1], op, ": ", fname, "[", h, "] decreases at cluster ", c,
                  "; pass non-decreasing offsets (a cumulative count)");
      for (int64_t p = fh[c]; p < fh[c + 1]; ++p) {
        const int64_t x = o[h * n + p];
        TORCH_CHECK(x >= 0 && x < n && !seen[x], op, ": ", oname, "[", h, "] ",
                    x >= 0 && x < n ? "repeats " : "holds ", x, "; pass a permutation of 0 .. n-1");
        TORCH_CHECK(p == fh[c] || o[h * n + p - 1] < x, op, ": ", oname, "[", h, "] is not ascending within cluster ",
                    c, "; pass each cluster's tokens in position order (a stable sort by cluster)");
        seen[x] = 1;
      }
    }
  }
}

}  // namespace

at::Tensor cluster_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_order,
                             const at::Tensor& q_offsets, const at::Tensor& k_order, const at::Tensor& k_offsets,
                             bool causal) {
  const char* op = "attention_cluster";
  const std::pair<const at::Tensor*, const char*> inputs[] = {{&q, "q"}, {&k, "k"}, {&v, "v"}};
  for (const auto& [t, name] : inputs) {
    effnb::check_cpu_contiguous(*t, op, name);
    effnb::check_dtype(*t, at::kFloat, op, name);
  }
  TORCH_CHECK(q.dim() == 3, op, ": q has shape ", q.sizes(), "; pass (H, n, d)");
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": q, k, v have shapes ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes(), "; pass three (H, n, d) tensors of one shape");
  const int64_t H = q.size(0), n = q.size(1), d = q.size(2);
  TORCH_CHECK(q_offsets.dim() == 2 && q_offsets.size(1) >= 1, op, ": q_offsets has shape ", q_offsets.sizes(),
              "; pass (H, C+1) cluster offsets");
  const int64_t C1 = q_offsets.size(1);
  check_clusters(q_order, q_offsets, "q_order", "q_offsets", H, n, C1);
  check_clusters(k_order, k_offsets, "k_order", "k_offsets", H, n, C1);

  at::Tensor out = at::empty({H, n, d}, q.options());
  if (H == 0 || n == 0 || d == 0) return out.zero_();
  const int64_t dp = (d + V::W - 1) / V::W * V::W;
  Args a{q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
         q_order.data_ptr<int64_t>(), q_offsets.data_ptr<int64_t>(), k_order.data_ptr<int64_t>(),
         k_offsets.data_ptr<int64_t>(), n, d, dp, C1 - 1, causal, out.data_ptr<float>()};

  thread_local std::vector<Item> items;
  items.clear();
  int64_t work = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t c = 0; c + 1 < C1; ++c) {
      const int64_t* fq = a.qoff + h * C1;
      const int64_t* fk = a.koff + h * C1;
      const int64_t nk = fk[c + 1] - fk[c];
      const int64_t* kpos = a.ko + h * n + fk[c];
      for (int64_t q0 = 0; q0 < fq[c + 1] - fq[c]; q0 += BQ) {
        const int64_t nq = std::min(BQ, fq[c + 1] - fq[c] - q0);
        const int64_t last = a.qo[h * n + fq[c] + q0 + nq - 1];  // keys this tile may see at most
        const int64_t keys = causal ? std::upper_bound(kpos, kpos + nk, last) - kpos : nk;
        items.push_back({h, c, q0, nq * keys + nq + keys});
        work += nq * keys;
      }
    }
  std::stable_sort(items.begin(), items.end(), [](const Item& x, const Item& y) { return x.cost > y.cost; });
  const int threads = work * d >= (1 << 17) ? omp_get_max_threads() : 1;
  const int64_t count = static_cast<int64_t>(items.size());
  const Item* list = items.data();
#pragma omp parallel num_threads(threads)
  {
    thread_local Tiles t;
    t.fit(d, dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < count; ++i) run_item(a, list[i], t);
  }
  return out;
}

}  // namespace effnb_attention
