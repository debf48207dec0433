// W8A8 and W4A8 on AVX-512 VNNI: output columns in the vector lanes (int8.cpp, int4.cpp).
//
// The row kernels (w8a8_tile, int4_a8_block_zmm) put K in the lanes: a 64-byte weight vector
// times a 64-byte activation vector, summed across lanes at the end. Each vpdpbusd then needs a
// fresh 64-byte activation load per R rows, and at M = 16..64 the tile waited on those loads
// from L2 (~37% of the instruction's rate at M = 64, fbgemm ~41%). Here a vector holds 16
// output columns x 4 consecutive K, and the activations are broadcast 4 bytes at a time:
//
//   acc[token][16 columns] += pan[k/4][16 columns][4 bytes] . broadcast(x[token][k..k+3])
//
// so one 64-byte weight vector serves kRows tokens and one 4-byte broadcast two column halves.
// Weights packed once into panels (W8A8Panels, W4A8Panels: what effnb.quant.prepack makes on
// these builds) are read in place, one contiguous stream per panel, at every M; int4 nibbles are
// split into L1 per chunk, or in registers at one token (dot_nibbles). Up to 8 tokens (one tile)
// every line is asked into L1 a page before it is read (Prefetch::ahead). On the Zen 5 of chapter 02
// the panels beat the row kernels at M = 1 and 4 and the per-call repack below at 16 and 64. Row-major
// weights (as quantize() packs them) are repacked on every call from EFFNB_QP_MMIN = 16 tokens (at
// 4 to 12 the row kernels measured as fast or faster), a chunk of 32 columns x kChunk weights at a
// time (16 x 16 dword transposes; int4 codes unpacked to bytes on the way), the next chunk's rows
// asked into L2 as it goes. The 8 x 2 register tile alone ran at 87% of vpdpbusd's register-only
// rate on the Xeon of chapter 02; prepacked W8A8 calls at M = 64 reached ~90% of it on the Zen 5.
//
// Signedness: vpdpbusd multiplies unsigned (the weight vector) by signed bytes (the broadcast
// activations). int4 codes are unsigned already; int8 weights are flipped to w + 128 in the
// repack and the token's code sum takes the 128 out, as in w8a8_tile.
#pragma once

#include "quant.h"

#include <cstring>
#include <memory>

#if EFFNB_Q4_ZMM
#ifndef EFFNB_QP_MMIN
#define EFFNB_QP_MMIN 16
#endif

namespace effnb::quant::panel {

constexpr int kCols = 32;        // output columns per panel: two vectors of 16 int32 lanes
constexpr int kRows = 8;         // tokens per register tile (16 accumulators)
// weights of K per chunk: 32 columns x 1 KiB. On the Zen 5 of chapter 02 512 measured the same and 2048 slower;
// on a Zen 4 (32 KiB L1), prepacked W8A8 at M = 16 and 64, timed in turns: 512 to 4096 within 3%, 256 7% slower
constexpr int64_t kChunk = 1024;

// r[j] <- column j of the 16 x 16 dword matrix whose rows are r[0..15]
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows, inside each 128-bit lane
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // u[i + c], lane L: rows i..i+3 at column 4L + c
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // a 4 x 4 transpose of 128-bit lanes for each c
    const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i x2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), x3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
  }
}

// Loads 16 dwords (the first `ndw`) of 16 rows starting at column c (rows past n read as zero),
// transposes them and hands vector j (dword j of every row) to put(j, v).
template <class Put>
inline __attribute__((always_inline)) void transposed_dwords(const uint8_t* base, int64_t stride, int64_t c, int64_t n,
                                                             int ndw, Put&& put) {
  const __mmask16 mask = static_cast<__mmask16>((1u << ndw) - 1);
  __m512i r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = c + i < n ? _mm512_maskz_loadu_epi32(mask, base + (c + i) * stride) : _mm512_setzero_si512();
  transpose16(r);
  for (int j = 0; j < ndw; ++j) put(j, r[j]);
}

// Bytes ahead of the read point that a call of one token tile asks into L1 (see Prefetch::ahead).
constexpr int64_t kAhead = 4096;

// The next chunk's source rows, asked into L2 a few lines per step while this chunk computes
// (a repack that waited on memory cost as much as the products at M = 16).
struct Prefetch {
  const uint8_t* row = nullptr;  // the row being asked for; nullptr: nothing left
  int64_t stride = 0, bytes = 0, off = 0, rows_left = 0;
  int per = 1;  // lines per step
  // With one token tile (M <= kRows) every panel byte is read once, as one contiguous stream, and
  // the products are too few to hide a miss. There every line is asked into L1 kAhead bytes before
  // it is read, up to `end` (the weights' end; nullptr: chunk-ahead steps instead). On the Zen 5 of
  // chapter 02, cold, 2 threads, at M = 1 that streamed 5-22% faster than the next chunk asked into
  // L2 (int8 and int4 panels, medians of 7 interleaved rounds; 2-3 KiB ahead measured alike, 8 KiB,
  // one line in two and hint T1 slower; asking the group scales ahead added nothing), and at
  // M = 2..8 0-20% (5 rounds).
  const uint8_t* end = nullptr;
  // the L lines starting kAhead bytes past `at` (16: 1 KiB)
  template <int L = 16>
  inline __attribute__((always_inline)) void ahead(const uint8_t* at) const {
    for (int l = 0; l < L; ++l)
      if (at + kAhead + 64 * l < end) _mm_prefetch(reinterpret_cast<const char*>(at + kAhead + 64 * l), _MM_HINT_T0);
  }
  inline __attribute__((always_inline)) void step() {
    for (int j = 0; j < per && row; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(row + off), _MM_HINT_T1);
      if ((off += 64) >= bytes) {
        off = 0;
        row = --rows_left > 0 ? row + stride : nullptr;
      }
    }
  }
};

// acc[r][h] += pan[q] . x[r][4q..4q+3] for quads [q0, q1) (a multiple of 8 apart: groups and
// chunks are whole multiples of 32 weights): half h holds columns 16h..16h+15
template <int MR>
inline __attribute__((always_inline)) void dot_quads(const uint8_t* pan, const int8_t* x, int64_t ldx, int64_t q0,
                                                     int64_t q1, __m512i (&acc)[MR][2], Prefetch& pf) {
  for (int64_t q8 = q0; q8 < q1; q8 += 8) {
    if (pf.end)
      pf.ahead(pan + q8 * 128);  // eight quads of 128 bytes: 1 KiB
    else
      pf.step();
    // eight steps written out: a rolled loop made GCC copy every accumulator between registers once per step
#pragma GCC unroll 8
    for (int64_t q = q8; q < q8 + 8; ++q) {
      const __m512i w0 = _mm512_loadu_si512(pan + q * 2 * 64), w1 = _mm512_loadu_si512(pan + q * 2 * 64 + 64);
      for (int r = 0; r < MR; ++r) {
        int32_t v;
        std::memcpy(&v, x + r * ldx + 4 * q, 4);
        const __m512i b = _mm512_set1_epi32(v);
        acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, b);
        acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, b);
      }
    }
  }
}

// One token against int4 panels straight from memory (W4A8Panels at M = 1, groups of whole 64-blocks):
// 64-weight blocks [b0, b1) of the chunk at src, each 64-byte vector split into its two nibble quads
// in registers instead of through L1. Eight accumulator chains (quad parity x nibble x half), so the
// adds do not wait on vpdpbusd's latency; summed into acc at the end. Always one token tile read
// in place: pf asks ahead (pf.end set), two lines per step rather than 16 per 1 KiB block (on the
// Zen 5 of chapter 02, cold, 2 threads, 7 interleaved rounds: 3-11% faster over four runs; the same
// spreading measured no faster for int8 panels or for the nibble split at M = 2..8).
inline void dot_nibbles(const uint8_t* src, const int8_t* x, int64_t b0, int64_t b1, __m512i (&acc)[1][2],
                        const Prefetch& pf) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i c[2][2][2];
  for (auto& a : c)
    for (auto& b : a) b[0] = b[1] = _mm512_setzero_si512();
  for (int64_t b = b0; b < b1; ++b) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      pf.ahead<2>(src + (b * 8 + j) * 128);  // the two lines this step reads, a page on
      int32_t lo, hi;
      std::memcpy(&lo, x + 4 * (b * 16 + j), 4);
      std::memcpy(&hi, x + 4 * (b * 16 + j + 8), 4);
      const __m512i xlo = _mm512_set1_epi32(lo), xhi = _mm512_set1_epi32(hi);
      for (int h = 0; h < 2; ++h) {
        const __m512i v = _mm512_loadu_si512(src + ((b * 8 + j) * 2 + h) * 64);
        c[j & 1][0][h] = _mm512_dpbusd_epi32(c[j & 1][0][h], _mm512_and_si512(v, low), xlo);
        c[j & 1][1][h] = _mm512_dpbusd_epi32(c[j & 1][1][h], _mm512_and_si512(_mm512_srli_epi16(v, 4), low), xhi);
      }
    }
  }
  for (int h = 0; h < 2; ++h)
    acc[0][h] = _mm512_add_epi32(_mm512_add_epi32(c[0][0][h], c[0][1][h]), _mm512_add_epi32(c[1][0][h], c[1][1][h]));
}

// One token tile of MR rows against the chunk [k0, k0 + len) (bytes in L1, or W4A8Panels' nibbles
// at one token): the integer sums are started and handed to F::flush every F::group weights.
template <int MR, class F>
void tile_rows(const F& f, typename F::Panel& st, const uint8_t* pan, int64_t i0, int64_t k0, int64_t len,
               typename F::Acc* tile, Prefetch& pf) {
  const int64_t step = f.group();
  const int8_t* x = f.xq + i0 * f.ldx + k0;
  for (int64_t g0 = 0; g0 < len; g0 += step) {
    __m512i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    if constexpr (MR == 1 && F::kNibbles) {
      if (f.raw) {
        dot_nibbles(pan, x, g0 / 64, std::min(len, g0 + step) / 64, acc, pf);
        f.template flush<MR>(st, i0, (k0 + g0) / step, acc, tile + i0 * kCols);
        continue;
      }
    }
    dot_quads<MR>(pan, x, f.ldx, g0 / 4, std::min(len, g0 + step) / 4, acc, pf);
    f.template flush<MR>(st, i0, (k0 + g0) / step, acc, tile + i0 * kCols);
  }
}

// Threads over panels of 32 columns, kGrab at a time (the next chunk to prefetch is then known);
// per panel, K in chunks: repack, then every token tile. F: the format (W8A8 or W4A8 below);
// tile holds the panel's running result per token.
constexpr int64_t kGrab = 4;

template <class F>
void run(const F& codes, int64_t m, int64_t n, float* py) {
  // the token rows copied kPad bytes apart: at a stride of K (4 KiB) the rows of a token tile
  // fell into the same L1 sets (~10% at M = 64)
  constexpr int64_t kPad = 64;
  F f = codes;
  if constexpr (F::kNibbles) {
    f.raw = m == 1 && f.group() % 64 == 0;
    f.ahead = m <= kRows;
  }
  std::vector<int8_t> xpad;
  if (m > 1) {  // one token has no rows to fall into the same sets: read in place
    f.ldx = f.kp + kPad;
    xpad.resize(static_cast<size_t>(m * f.ldx));
    for (int64_t i = 0; i < m; ++i) std::memcpy(xpad.data() + i * f.ldx, codes.xq + i * f.kp, f.kp);
    f.xq = xpad.data();
  } else {
    f.ldx = f.kp;
  }
  const int64_t npanels = (n + kCols - 1) / kCols, ngrabs = (npanels + kGrab - 1) / kGrab;
  // whole flush groups and whole 64-weight blocks (int4's nibble layout) per chunk
  const int64_t unit = f.group() % 64 == 0 ? f.group() : 2 * f.group();
  const int64_t chunk = unit >= kChunk ? unit : kChunk / unit * unit;
  const int64_t steps = (m + kRows - 1) / kRows * (chunk / 32);  // prefetch steps (8 quads) per chunk, all token tiles
#pragma omp parallel
  {
    // read in place, the weights need no chunk buffer (nor zeroing its 32 KiB per thread on every call)
    const std::unique_ptr<uint8_t[]> pan(f.in_place() ? nullptr : new uint8_t[chunk * kCols]);
    std::vector<typename F::Acc> tile(static_cast<size_t>(m * kCols));
    typename F::Panel st;
#pragma omp for schedule(dynamic, 1)
    for (int64_t gr = 0; gr < ngrabs; ++gr) {
      const int64_t p1 = std::min(npanels, (gr + 1) * kGrab);
      for (int64_t p = gr * kGrab; p < p1; ++p) {
        const int64_t c0 = p * kCols;
        f.begin(st, c0);
        std::fill(tile.begin(), tile.end(), typename F::Acc{0});
        for (int64_t k0 = 0; k0 < f.kp; k0 += chunk) {
          const int64_t len = std::min(chunk, f.kp - k0);
          const uint8_t* cp = f.chunk(c0, k0, len, pan.get());
          // one token tile read in place: ask ahead in the stream; else the chunk after this one
          // (further along K, else the next panel of this grab)
          Prefetch pf;
          const int64_t nk = k0 + chunk < f.kp ? k0 + chunk : 0, nc = nk ? c0 : c0 + kCols;
          if (m <= kRows && f.in_place()) {
            pf.end = f.end();
          } else if (nk || p + 1 < p1) {
            f.source(nc, nk, std::min(chunk, f.kp - nk), pf);
            pf.per = static_cast<int>((pf.rows_left * (pf.bytes / 64) + steps - 1) / steps);
          }
          for (int64_t i0 = 0; i0 < m; i0 += kRows) {
            switch (std::min<int64_t>(kRows, m - i0)) {
              case 1: tile_rows<1>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 2: tile_rows<2>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 3: tile_rows<3>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 4: tile_rows<4>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 5: tile_rows<5>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 6: tile_rows<6>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              case 7: tile_rows<7>(f, st, cp, i0, k0, len, tile.data(), pf); break;
              default: tile_rows<8>(f, st, cp, i0, k0, len, tile.data(), pf); break;
            }
          }
        }
        const int64_t cols = std::min<int64_t>(kCols, n - c0);
        for (int64_t i = 0; i < m; ++i)
          for (int64_t c = 0; c < cols; ++c) py[i * n + c0 + c] = f.finish(st, i, c, tile[i * kCols + c]);
      }
    }
  }
}

// ---------------------------------------------------------------- the two formats

// int8 weights [N][Kp], one fp32 scale per row; one scale and code sum per token. The integer
// sums stay int32 across chunks (as in w8a8_tile), scaled once at the end.
struct W8A8 {
  using Acc = int32_t;
  static constexpr bool kNibbles = false;  // chunks are always bytes
  struct Panel {
    int64_t c0 = 0;
  };
  const int8_t* w;
  const float* scales;
  int64_t kp, n;
  const int8_t* xq;
  const float* xs;
  const int32_t* xsum;
  int64_t ldx = 0;  // xq's row stride (run() pads it)

  int64_t group() const { return kChunk; }
  bool in_place() const { return false; }  // chunks are repacked into L1
  const uint8_t* end() const { return nullptr; }
  void begin(Panel& st, int64_t c0) const { st.c0 = c0; }
  void source(int64_t c0, int64_t k0, int64_t len, Prefetch& pf) const {
    pf.row = reinterpret_cast<const uint8_t*>(w) + c0 * kp + k0, pf.stride = kp, pf.bytes = len;
    pf.rows_left = std::min<int64_t>(kCols, n - c0);
  }
  const uint8_t* chunk(int64_t c0, int64_t k0, int64_t len, uint8_t* pan) const {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int h = 0; h < 2; ++h)
      for (int64_t kk = 0; kk < len; kk += 64) {
        const int ndw = static_cast<int>(std::min<int64_t>(16, (len - kk) / 4));
        transposed_dwords(reinterpret_cast<const uint8_t*>(w) + k0 + kk, kp, c0 + 16 * h, n, ndw,
                          [&](int j, __m512i v) __attribute__((always_inline)) {
                            _mm512_storeu_si512(pan + (kk / 4 + j) * 128 + 64 * h, _mm512_xor_si512(v, flip));
                          });
      }
    return pan;
  }
  template <int MR>
  void flush(Panel&, int64_t, int64_t, __m512i (&acc)[MR][2], int32_t* tile) const {
    for (int r = 0; r < MR; ++r)
      for (int h = 0; h < 2; ++h) {
        int32_t* t = tile + r * kCols + 16 * h;
        _mm512_storeu_si512(t, _mm512_add_epi32(_mm512_loadu_si512(t), acc[r][h]));
      }
  }
  // A lane holds one column's sum over all of K, not K / 16 as in w8a8_tile: past K ~ 66,000 the
  // flipped sum can pass 2^31 and wrap (vpdpbusd and the adds wrap modulo 2^32). The true dot
  // product fits (K < 2^17, checked by the op), so taking 128 * xsum out modulo 2^32 gives it back.
  float finish(const Panel& st, int64_t i, int64_t c, int32_t sum) const {
    const uint32_t dot = static_cast<uint32_t>(sum) - 128u * static_cast<uint32_t>(xsum[i]);
    return scales[st.c0 + c] * xs[i] * static_cast<float>(static_cast<int32_t>(dot));
  }
};

// int8 weights packed once into panels (quant_w8_panels): panel p holds columns 32p..32p+31 as
// [Kp/4][32][4] bytes, sign bits flipped, so a chunk is a contiguous run the kernel reads in place.
struct W8A8Panels : W8A8 {
  const uint8_t* base() const { return reinterpret_cast<const uint8_t*>(w); }
  bool in_place() const { return true; }
  const uint8_t* end() const { return base() + (n + kCols - 1) / kCols * kCols * kp; }
  void source(int64_t c0, int64_t k0, int64_t len, Prefetch& pf) const {
    pf.row = base() + c0 * kp + k0 * kCols, pf.stride = 0, pf.bytes = len * kCols, pf.rows_left = 1;
  }
  const uint8_t* chunk(int64_t c0, int64_t k0, int64_t, uint8_t*) const { return base() + c0 * kp + k0 * kCols; }
};

// int4 codes [N][Kp/2] (quant.h's nibble layout), fp16 scales and optional zeros per group of
// G; one scale per token and group. Each group's int32 sums are scaled into fp32 at its end.
struct W4A8 {
  using Acc = float;
  static constexpr bool kNibbles = false;
  struct Panel {
    std::vector<float> sw, swz;  // [ng][32]: the columns' scale and scale * zero per group
  };
  const uint8_t* w;
  const at::Half* scales;
  const uint8_t* zeros;
  int64_t kp, n, ng, g;
  const int8_t* xq;
  const float* xs;  // [M][ng]
  const float* xc;  // [M][ng]: xs * code sum, the zero point's term
  int64_t ldx = 0;  // xq's row stride (run() pads it)

  int64_t group() const { return g; }
  bool in_place() const { return false; }  // chunks are repacked into L1
  const uint8_t* end() const { return nullptr; }
  void source(int64_t c0, int64_t k0, int64_t len, Prefetch& pf) const {
    pf.row = w + (c0 * kp + k0) / 2, pf.stride = kp / 2, pf.bytes = len / 2;
    pf.rows_left = std::min<int64_t>(kCols, n - c0);
  }
  void begin(Panel& st, int64_t c0) const {
    st.sw.assign(ng * kCols, 0.0f);
    st.swz.assign(ng * kCols, 0.0f);
    for (int64_t c = 0; c < kCols && c0 + c < n; ++c)
      for (int64_t j = 0; j < ng; ++j) {
        const float s = half_to_float(scales[(c0 + c) * ng + j]);
        st.sw[j * kCols + c] = s;
        st.swz[j * kCols + c] = s * (zeros ? static_cast<float>(zeros[(c0 + c) * ng + j]) : 8.0f);
      }
  }
  // a 64-byte slice of a row is two 64-weight blocks: dword j holds weights 4j'..4j'+3 of block
  // j / 8 (j' = j % 8) in its low nibbles and 32 + 4j'.. in its high ones
  const uint8_t* chunk(int64_t c0, int64_t k0, int64_t len, uint8_t* pan) const {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int h = 0; h < 2; ++h)
      for (int64_t kk = 0; kk < len; kk += 128) {
        const int ndw = static_cast<int>(std::min<int64_t>(16, (len - kk) / 8));
        transposed_dwords(w + (k0 + kk) / 2, kp / 2, c0 + 16 * h, n, ndw,
                          [&](int j, __m512i v) __attribute__((always_inline)) {
                            const int64_t q = kk / 4 + 16 * (j / 8) + j % 8;
                            _mm512_storeu_si512(pan + q * 128 + 64 * h, _mm512_and_si512(v, low));
                            _mm512_storeu_si512(pan + (q + 8) * 128 + 64 * h,
                                                _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
                          });
      }
    return pan;
  }
  template <int MR>
  void flush(Panel& st, int64_t i0, int64_t gi, __m512i (&acc)[MR][2], float* tile) const {
    for (int r = 0; r < MR; ++r) {
      const __m512 s = _mm512_set1_ps(xs[(i0 + r) * ng + gi]), z = _mm512_set1_ps(xc[(i0 + r) * ng + gi]);
      for (int h = 0; h < 2; ++h) {
        float* t = tile + r * kCols + 16 * h;
        const __m512 sw = _mm512_loadu_ps(st.sw.data() + gi * kCols + 16 * h);
        __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][h]), _mm512_mul_ps(sw, s), _mm512_loadu_ps(t));
        v = _mm512_fnmadd_ps(_mm512_loadu_ps(st.swz.data() + gi * kCols + 16 * h), z, v);
        _mm512_storeu_ps(t, v);
      }
    }
  }
  float finish(const Panel&, int64_t, int64_t, float v) const { return v; }
};

// int4 codes packed once into panels (formats.to_panels): panel p, 64-weight block b is 1 KiB,
// [8 dwords j][2 halves][16 columns][4 bytes], dword j of each column's 32 bytes of the block as
// quant.h lays them out (quads j and j + 8 in its low and high nibbles). A chunk is one contiguous
// run; the kernel only splits the nibbles into L1, no transposes. Scales and zeros come per panel,
// [P][ng][32]: a group's 16 columns are one load, and no per-panel table is built (W4A8::begin's
// table, one value at a time, cost more than a quarter of a warm one-token call at 4096 x 11008 on one thread).
struct W4A8Panels : W4A8 {
  static constexpr bool kNibbles = true;  // at M = 1 (raw) tile_rows reads the nibbles in place: dot_nibbles
  bool raw = false;    // one token, groups of whole 64-blocks: read in place
  bool ahead = false;  // one token tile: chunk() asks its source ahead as it splits (Prefetch::ahead)
  struct Panel {
    int64_t c0 = 0;
  };
  void begin(Panel& st, int64_t c0) const { st.c0 = c0; }
  bool in_place() const { return raw; }
  const uint8_t* end() const { return w + (n + kCols - 1) / kCols * kCols * kp / 2; }
  float finish(const Panel&, int64_t, int64_t, float v) const { return v; }
  template <int MR>
  void flush(Panel& st, int64_t i0, int64_t gi, __m512i (&acc)[MR][2], float* tile) const {
    __m512 sw[2], swz[2];
    const int64_t at = (st.c0 / kCols * ng + gi) * kCols;
    for (int h = 0; h < 2; ++h) {
      sw[h] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + at + 16 * h)));
      swz[h] = _mm512_mul_ps(sw[h], zeros ? _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
                                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros + at + 16 * h))))
                                          : _mm512_set1_ps(8.0f));
    }
    for (int r = 0; r < MR; ++r) {
      const __m512 s = _mm512_set1_ps(xs[(i0 + r) * ng + gi]), z = _mm512_set1_ps(xc[(i0 + r) * ng + gi]);
      for (int h = 0; h < 2; ++h) {
        float* t = tile + r * kCols + 16 * h;
        const __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][h]), _mm512_mul_ps(sw[h], s), _mm512_loadu_ps(t));
        _mm512_storeu_ps(t, _mm512_fnmadd_ps(swz[h], z, v));
      }
    }
  }
  void source(int64_t c0, int64_t k0, int64_t len, Prefetch& pf) const {
    pf.row = w + c0 * kp / 2 + k0 * kCols / 2, pf.stride = 0, pf.bytes = len * kCols / 2, pf.rows_left = 1;
  }
  const uint8_t* chunk(int64_t c0, int64_t k0, int64_t len, uint8_t* pan) const {
    const uint8_t* src = w + c0 * kp / 2 + k0 * kCols / 2;
    if (raw) return src;
    const __m512i low = _mm512_set1_epi8(0x0F);
    Prefetch pf;
    if (ahead) pf.end = end();
    for (int64_t b = 0; b < len / 64; ++b) {
      if (ahead) pf.ahead(src + b * 1024);
      for (int j = 0; j < 8; ++j)
        for (int h = 0; h < 2; ++h) {
          const __m512i v = _mm512_loadu_si512(src + ((b * 8 + j) * 2 + h) * 64);
          _mm512_storeu_si512(pan + (b * 16 + j) * 128 + 64 * h, _mm512_and_si512(v, low));
          _mm512_storeu_si512(pan + (b * 16 + j + 8) * 128 + 64 * h, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
        }
    }
    return pan;
  }
};

}  // namespace effnb::quant::panel
#endif
