// Sign weights x 4-bit activations, W1A4 (quant_binary_linear), by popcount over bit-planes.
// See quant.h.
#include "quant.h"

#include <cstring>

namespace effnb::quant {
namespace {

// ---------------------------------------------------------------- binary x 4-bit
//
// Weights: W[n, k] = scales[n] * (2 b[n, k] - 1), b a bit (1: +1, 0: -1), 1 bit per weight, K
// padded to whole blocks of 256 (32 bytes) with b = 0; bit i of byte j is weight 8 j + i, so
// the row is little-endian 64-bit words, bit i of word j being weight 64 j + i
// (effnb/quant/formats.py, pack_bits).
// Activations: 4 bits per token, symmetric: q = round(x * 7 / max|x|) in [-7, 7], scale max|x| / 7,
// held as u = q + 8 in [1, 15] (0 for none: padding has q = 0, u = 8) split into 4 bit-planes
// u = sum_j 2^j u_j, each plane packed like the weights.
// The dot product from popcounts (s = 2 b - 1 the signs, P = popcount):
//   sum_k s u_j = 2 P(b & u_j) - P(u_j)                       per plane
//   sum_k s u   = 2 B - sum_k u,   B = sum_j 2^j P(b & u_j)   (and sum_j 2^j P(u_j) = sum_k u)
//   sum_k s q   = sum_k s u - 8 sum_k s = 2 B - sum_k u - 8 (2 P(b) - Kp) = 2 B - sum_k q - 16 P(b)
// so each row and token needs only B, one AND and one popcount per plane and 64 weights; P(b) is
// once per row, sum_k q once per token (padding cancels: it is exact over all Kp positions).
// Paths, chosen at compile time from the build's flags (effnb/ext.py adds -mavx512vpopcntdq
// on CPUs that have it), named by quant_binary_path():
//   avx512-vpopcntdq: _mm512_popcnt_epi64 on 512 weights per step (a masked load for a last 256)
//   avx2-pshufb:      popcount of 256 weights per step by nibble lookup (vpshufb), byte counts
//                     summed up to 31 steps, then widened with vpsadbw
//   scalar:           one popcnt per 64-bit word

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#define EFFNB_QBIN_PATH "avx512-vpopcntdq"
#elif defined(EFFNB_QAVX2)
#define EFFNB_QBIN_PATH "avx2-pshufb"
#else
#define EFFNB_QBIN_PATH "scalar"
#endif

// B = sum_j 2^j P(w & x_j) over `words` 64-bit words; the 4 planes at x + j * words
inline int64_t plane_dot(const uint64_t* w, const uint64_t* x, int64_t words) {
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  int64_t i = 0;
  for (; i + 8 <= words; i += 8) {
    const __m512i v = _mm512_loadu_si512(w + i);
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_and_si512(v, _mm512_loadu_si512(x + j * words + i))));
  }
  if (i < words) {  // words is a multiple of 4: one last 256-weight block
    const __mmask8 lo = 0x0F;
    const __m512i v = _mm512_maskz_loadu_epi64(lo, w + i);
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_and_si512(v, _mm512_maskz_loadu_epi64(lo, x + j * words + i))));
  }
  const __m512i b = _mm512_add_epi64(_mm512_add_epi64(acc[0], _mm512_slli_epi64(acc[1], 1)),
                                     _mm512_add_epi64(_mm512_slli_epi64(acc[2], 2), _mm512_slli_epi64(acc[3], 3)));
  return _mm512_reduce_add_epi64(b);
#elif defined(EFFNB_QAVX2)
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const auto bytes_popcount = [&](__m256i v) __attribute__((always_inline)) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
  };
  __m256i total = _mm256_setzero_si256();
  for (int64_t i0 = 0; i0 < words; i0 += 4 * 31) {  // byte counts reach at most 31 x 8 = 248
    const int64_t i1 = std::min(words, i0 + 4 * 31);
    __m256i c[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int64_t i = i0; i < i1; i += 4) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i));
      for (int j = 0; j < 4; ++j)
        c[j] = _mm256_add_epi8(c[j], bytes_popcount(_mm256_and_si256(
                                         v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j * words + i)))));
    }
    const __m256i z = _mm256_setzero_si256();
    total = _mm256_add_epi64(total, _mm256_add_epi64(
        _mm256_add_epi64(_mm256_sad_epu8(c[0], z), _mm256_slli_epi64(_mm256_sad_epu8(c[1], z), 1)),
        _mm256_add_epi64(_mm256_slli_epi64(_mm256_sad_epu8(c[2], z), 2), _mm256_slli_epi64(_mm256_sad_epu8(c[3], z), 3))));
  }
  alignas(32) int64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), total);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
  int64_t b = 0;
  for (int64_t i = 0; i < words; ++i)
    for (int j = 0; j < 4; ++j) b += static_cast<int64_t>(__builtin_popcountll(w[i] & x[j * words + i])) << j;
  return b;
#endif
}

// 4-bit activation bit-planes of x [M, K]: planes [M][4][Kp/64] words, scales and code sums per token
struct BitActs {
  std::vector<uint64_t> planes;
  std::vector<float> xs;
  std::vector<int64_t> qsum;
};

BitActs bit_planes(const at::Tensor& x, int64_t kp) {
  const int64_t m = x.size(0), k = x.size(1), words = kp / 64;
  const float* px = x.data_ptr<float>();
  BitActs a{std::vector<uint64_t>(static_cast<size_t>(m * 4 * words), 0), std::vector<float>(m),
            std::vector<int64_t>(m)};
  for (int64_t i = 0; i < m; ++i) {
    const float* v = px + i * k;
    float amax = 0.0f;
    for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float inv = amax > 0.0f ? 7.0f / amax : 0.0f;  // one IEEE division, as the reference
    uint64_t* pl = a.planes.data() + i * 4 * words;
    int64_t total = 0;
    for (int64_t j = 0; j < kp; ++j) {
      int32_t q = 0;
      if (j < k) q = static_cast<int32_t>(std::min(7.0f, std::max(-7.0f, std::nearbyint(v[j] * inv))));
      total += q;
      const uint32_t u = static_cast<uint32_t>(q + 8);
      for (int b = 0; b < 4; ++b) pl[b * words + j / 64] |= static_cast<uint64_t>((u >> b) & 1u) << (j % 64);
    }
    a.xs[i] = amax / 7.0f;
    a.qsum[i] = total;
  }
  return a;
}

}  // namespace

at::Tensor quant_binary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales) {
  constexpr const char* op = "quant_binary_linear";
  check_tensor(packed, at::kByte, op, "packed");
  check_tensor(scales, at::kFloat, op, "scales");
  TORCH_CHECK(packed.dim() == 2 && packed.size(1) % 32 == 0, op,
              ": packed must be [N, Kp/8] with Kp a multiple of 256 (8 sign bits per byte), got ", packed.sizes());
  const int64_t n = packed.size(0), kp = packed.size(1) * 8, words = kp / 64;
  TORCH_CHECK(scales.dim() == 1 && scales.numel() == n, op, ": scales must have one value per output row (", n,
              "), got ", scales.sizes());
  at::Tensor y = output_for(x, kp, n, op);
  const int64_t m = x.size(0);
  if (m == 0 || n == 0) return y;
  const BitActs act = bit_planes(x, kp);
  // the packed bytes as 64-bit words (memcpy-free when aligned, which torch's allocator gives)
  const uint8_t* pw8 = packed.data_ptr<uint8_t>();
  std::vector<uint64_t> copy;
  const uint64_t* pw = reinterpret_cast<const uint64_t*>(pw8);
  if (reinterpret_cast<uintptr_t>(pw8) % alignof(uint64_t) != 0) {
    copy.resize(static_cast<size_t>(n * words));
    std::memcpy(copy.data(), pw8, copy.size() * sizeof(uint64_t));
    pw = copy.data();
  }
  const float* ps = scales.data_ptr<float>();
  float* py = y.data_ptr<float>();
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t row = 0; row < n; ++row) {
    const uint64_t* w = pw + row * words;
    int64_t pb = 0;  // P(b): the row's +1 weights
    for (int64_t i = 0; i < words; ++i) pb += __builtin_popcountll(w[i]);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t dot = 2 * plane_dot(w, act.planes.data() + i * 4 * words, words) - act.qsum[i] - 16 * pb;
      py[i * n + row] = ps[row] * act.xs[i] * static_cast<float>(dot);
    }
  }
  return y;
}

std::string quant_binary_path(const at::Tensor& /*probe*/) { return EFFNB_QBIN_PATH; }

}  // namespace effnb::quant
