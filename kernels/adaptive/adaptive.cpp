// Contextual sparsity in a gated feed-forward layer (chapter 14, CATS style).
//
//   adaptive_cats_ffn(x, gate, up, down_t, threshold)
//
// For each row x of (n, dim): a = silu(gate x) densely, keep the neurons with
// |a_i| > threshold, and only for those read up_i (a dot with x) and down_t[i]
// (down's column i, stored as a contiguous row): y = sum_i a_i (up_i . x) down_t[i].
// At batch-1 decode the layer is a memory-bound GEMV, so skipping a neuron saves
// the 2 x dim x 4 bytes of its up row and down column. threshold < 0 keeps every
// neuron: the same code as a dense baseline.
//
// One OpenMP region per call, two phases per row and one barrier between them
// (a barrier costs most on a busy machine, where a thread waits for a peer
// that lost its core: four per row ran several times slower under load):
//   1. split by blocks of neuron rows: the gate dot of each neuron, and for the
//      active ones the up dot, h_i = a_i (up_i . x); each block writes its
//      active (i, h_i) in order into its own slot of a scratch buffer;
//   2. the down accumulation, split by blocks of output columns, each looping
//      over every active neuron: no two threads write the same y, so there is
//      no reduction, and every thread count gives the same bits.
// No software prefetch: asking for the next active up row or down slice ahead
// measured slower than leaving the ascending rows to the hardware prefetcher.
// Hot loops: an AVX-512 path, an AVX2+FMA path and a plain C++ path, chosen at
// compile time from the build's -march level.

#include "effnb.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------- per-ISA primitives
//
// dot(a, b, n): a . b.  accumulate<R>(y, len, rows, h): y[0:len] += sum_r h[r] rows[r][0:len]
// (R rows per pass, so y is loaded and stored once per R neurons). Both take any
// length: the last partial vector is masked.

#if defined(__AVX512F__) && defined(__AVX512BW__)  // as EFFNB_ISA_LEVEL names it
constexpr int64_t kLanes = 16;

inline __mmask16 tail_mask(int64_t r) { return static_cast<__mmask16>((1u << r) - 1); }

inline float dot(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

template <int R>
inline void accumulate(float* y, int64_t len, const float* const* rows, const float* h) {
  __m512 w[R];
  for (int r = 0; r < R; ++r) w[r] = _mm512_set1_ps(h[r]);
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    __m512 acc = _mm512_loadu_ps(y + i);
    for (int r = 0; r < R; ++r) acc = _mm512_fmadd_ps(w[r], _mm512_loadu_ps(rows[r] + i), acc);
    _mm512_storeu_ps(y + i, acc);
  }
  if (i < len) {
    const __mmask16 m = tail_mask(len - i);
    __m512 acc = _mm512_maskz_loadu_ps(m, y + i);
    for (int r = 0; r < R; ++r) acc = _mm512_fmadd_ps(w[r], _mm512_maskz_loadu_ps(m, rows[r] + i), acc);
    _mm512_mask_storeu_ps(y + i, m, acc);
  }
}

#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;

inline __m256i tail_mask(int64_t r) {
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - r));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  if (i < n) {
    const __m256i m = tail_mask(n - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

template <int R>
inline void accumulate(float* y, int64_t len, const float* const* rows, const float* h) {
  __m256 w[R];
  for (int r = 0; r < R; ++r) w[r] = _mm256_set1_ps(h[r]);
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 acc = _mm256_loadu_ps(y + i);
    for (int r = 0; r < R; ++r) acc = _mm256_fmadd_ps(w[r], _mm256_loadu_ps(rows[r] + i), acc);
    _mm256_storeu_ps(y + i, acc);
  }
  if (i < len) {
    const __m256i m = tail_mask(len - i);
    __m256 acc = _mm256_maskload_ps(y + i, m);
    for (int r = 0; r < R; ++r) acc = _mm256_fmadd_ps(w[r], _mm256_maskload_ps(rows[r] + i, m), acc);
    _mm256_maskstore_ps(y + i, m, acc);
  }
}

#else
constexpr int64_t kLanes = 16;  // slices of y stay cache-line aligned, as in the vector paths

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <int R>
inline void accumulate(float* y, int64_t len, const float* const* rows, const float* h) {
  for (int64_t i = 0; i < len; ++i) {
    float acc = y[i];
    for (int r = 0; r < R; ++r) acc += h[r] * rows[r][i];
    y[i] = acc;
  }
}
#endif

inline float silu(float g) { return g / (1.f + std::exp(-g)); }

// Work is dealt in blocks that threads take as they become free (OpenMP dynamic schedule): on a
// busy machine a thread that loses its core delays one block, not a fixed half of the layer
// (a static split ran several times slower under load). Column blocks are whole cache lines.
constexpr int64_t kRowBlock = 64;   // neurons
constexpr int64_t kColBlock = 128;  // floats of y, a multiple of every path's vector width

// The active neurons of one row, (index, h) in neuron order, each block of neurons' in its own
// slot of [0, ffn), so the slots read in order are the compacted active list. Lives in the
// calling thread and only grows.
struct Scratch {
  std::vector<int32_t> index;
  std::vector<float> h;
  std::vector<int64_t> count;  // active neurons per block
};

// Phase 2's inner loop: y[0:len] += h_p down_t[i_p] for neurons fed in order, four per pass.
// The grouping depends only on the order, so every thread count gives the same bits.
class DownAccumulator {
 public:
  DownAccumulator(float* y, int64_t len) : y_(y), len_(len) {}
  void add(const float* row, float h) {
    rows_[n_] = row;
    h_[n_] = h;
    if (++n_ == 4) {
      accumulate<4>(y_, len_, rows_, h_);
      n_ = 0;
    }
  }
  void finish() {
    for (int r = 0; r < n_; ++r) accumulate<1>(y_, len_, rows_ + r, h_ + r);
    n_ = 0;
  }

 private:
  float* y_;
  int64_t len_;
  const float* rows_[4] = {};
  float h_[4] = {};
  int n_ = 0;
};

void check_weight(const at::Tensor& t, const char* name, int64_t ffn, int64_t dim) {
  const char* op = "adaptive_cats_ffn";
  effnb::check_cpu_contiguous(t, op, name);
  effnb::check_dtype(t, at::kFloat, op, name);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == ffn && t.size(1) == dim, op, ": ", name, " has shape ", t.sizes(),
              "; pass (ffn, dim) = (", ffn, ", ", dim, "), dim from x and ffn from gate",
              std::string(name) == "down_t" ? ", down_t = down.weight.t().contiguous()" : "");
}

at::Tensor adaptive_cats_ffn(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                             const at::Tensor& down_t, double threshold) {
  const char* op = "adaptive_cats_ffn";
  effnb::check_cpu_contiguous(x, op, "x");
  effnb::check_dtype(x, at::kFloat, op, "x");
  TORCH_CHECK(x.dim() == 2, op, ": x has shape ", x.sizes(), "; pass (n, dim), e.g. x.reshape(-1, dim)");
  TORCH_CHECK(gate.dim() == 2, op, ": gate has shape ", gate.sizes(), "; pass gate.weight, (ffn, dim)");
  const int64_t n = x.size(0), dim = x.size(1), ffn = gate.size(0);
  check_weight(gate, "gate", ffn, dim);
  check_weight(up, "up", ffn, dim);
  check_weight(down_t, "down_t", ffn, dim);
  TORCH_CHECK(std::isfinite(threshold), op, ": threshold is ", threshold,
              "; pass a finite number (< 0 keeps every neuron)");
  TORCH_CHECK(ffn <= std::numeric_limits<int32_t>::max(), op, ": ffn = ", ffn, " exceeds int32 indices");

  at::Tensor y = at::zeros({n, dim}, x.options());
  if (n == 0 || dim == 0 || ffn == 0) return y;
  const float* xs = x.data_ptr<float>();
  const float* G = gate.data_ptr<float>();
  const float* U = up.data_ptr<float>();
  const float* D = down_t.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  const float thr = static_cast<float>(threshold);

  thread_local Scratch s;
  const int threads = ffn * dim >= (1 << 15) ? omp_get_max_threads() : 1;  // tiny layers: no fork
  if (static_cast<int64_t>(s.index.size()) < ffn) {
    s.index.resize(ffn);
    s.h.resize(ffn);
  }
  const int64_t row_blocks = (ffn + kRowBlock - 1) / kRowBlock, col_blocks = (dim + kColBlock - 1) / kColBlock;
  if (static_cast<int64_t>(s.count.size()) < row_blocks) s.count.resize(row_blocks);
  int32_t* index = s.index.data();
  float* h = s.h.data();
  int64_t* count = s.count.data();

#pragma omp parallel num_threads(threads)
  for (int64_t row = 0; row < n; ++row) {
    const float* xr = xs + row * dim;
    // 1. per block of neurons: the gate dot of each, the up dot of the active ones
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < row_blocks; ++b) {
      const int64_t lo = b * kRowBlock, hi = std::min(ffn, lo + kRowBlock);
      int64_t kept = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const float a = silu(dot(G + i * dim, xr, dim));
        if (std::fabs(a) > thr) {
          index[lo + kept] = static_cast<int32_t>(i);
          h[lo + kept] = a * dot(U + i * dim, xr, dim);
          ++kept;
        }
      }
      count[b] = kept;
    }  // (implied barrier: every block's active list is written)
    // 2. per block of y's columns: the sum over every active neuron, in neuron order
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < col_blocks; ++b) {
      const int64_t c0 = b * kColBlock, len = std::min(dim, c0 + kColBlock) - c0;
      DownAccumulator acc(ys + row * dim + c0, len);
      for (int64_t r = 0; r < row_blocks; ++r)
        for (int64_t p = r * kRowBlock; p < r * kRowBlock + count[r]; ++p) acc.add(D + index[p] * dim + c0, h[p]);
      acc.finish();
    }  // (implied barrier: the next row reuses the scratch)
  }
  return y;
}

}  // namespace

EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)

// Schemas and fake kernels: effnb/adaptive/ops.py (declared once, in Python).
TORCH_LIBRARY_IMPL(effnb, CPU, m) { m.impl("adaptive_cats_ffn", &adaptive_cats_ffn); }
