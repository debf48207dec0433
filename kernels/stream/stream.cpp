// STREAM-style memory bandwidth probes (McCalpin 1995) as torch custom operators.
//
// Each probe touches every element of large fp32 arrays once and does almost
// no arithmetic, so its speed is set by how fast memory can deliver and
// accept bytes: that speed is the memory slope of the roofline.
//
//   torch.ops.effnb.stream_read(a)           -> sum(a)       reads  4 bytes/element
//   torch.ops.effnb.stream_copy(a, b)        b = a           moves  8 bytes/element
//   torch.ops.effnb.stream_scale(a, b, s)    b = s * a       moves  8 bytes/element
//   torch.ops.effnb.stream_triad(a, b, c, s) a = b + s * c   moves 12 bytes/element
//
// How the work is split: the array is cut into blocks of 64 Ki elements
// (256 KiB) and OpenMP threads take blocks in order as they become free
// (schedule(dynamic)). One core can nearly saturate memory on a small machine,
// so when another process steals a core for a moment, the other threads carry
// on instead of waiting for a fixed share to finish. Inside a block, plain
// loops that the compiler turns into SIMD code: the library is compiled for
// the ISA level of the CPU that builds it (its features are part of the build
// cache key), so "#if defined(__AVX__)" below is decided per machine.
//
// Stores: an ordinary store first reads the destination line into the cache
// ("write-allocate"), so b = a really moves 12 bytes per element, not 8.
// Non-temporal (streaming) stores skip that read and write straight to memory;
// memcpy does the same for large copies, and so do we, so our copy competes
// with numpy's on equal terms. They only pay off when the destination is far
// larger than the cache, hence the size threshold.

#include "effnb.h"

#include <algorithm>

namespace {

constexpr int64_t kBlock = 1 << 16;        // floats per block handed to a thread (256 KiB)
constexpr int64_t kStreamMin = 1 << 21;    // streaming stores only for arrays over 8 MiB

// ---- input checks: every probe wants fp32, contiguous, CPU, equal sizes ----

void check_input(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "effnb stream probes run on the CPU; ", name,
              " is on ", t.device(), ": pass ", name, ".cpu()");
  TORCH_CHECK(t.scalar_type() == at::kFloat, "effnb stream probes take float32; ", name,
              " is ", t.scalar_type(), ": pass ", name, ".float()");
  TORCH_CHECK(t.is_contiguous(), "effnb stream probes need contiguous memory; ", name,
              " is strided: pass ", name, ".contiguous()");
}

void check_same(const at::Tensor& a, const at::Tensor& b, const char* na, const char* nb) {
  TORCH_CHECK(a.numel() == b.numel(), "effnb stream probes need arrays of equal size; ", na,
              " has ", a.numel(), " elements and ", nb, " has ", b.numel());
}

// ---- read: a sum, so the loads cannot be optimised away ----
//
// 32 independent float accumulators (four AVX2 registers) hide the latency of
// the adds; every 4096 elements the partial sum is folded into a double so the
// result stays accurate on arrays of hundreds of millions of elements.

double sum_slice(const float* a, int64_t lo, int64_t hi) {
  constexpr int64_t kLanes = 32, kFold = 4096;
  double total = 0.0;
  int64_t i = lo;
  while (i < hi) {
    const int64_t end = std::min(hi, i + kFold);
    float acc[kLanes] = {0};
    for (; i + kLanes <= end; i += kLanes)
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j];
    float tail = 0.0f;
    for (; i < end; ++i) tail += a[i];
    double block = tail;
    for (int64_t j = 0; j < kLanes; ++j) block += acc[j];
    total += block;
  }
  return total;
}

double stream_read(const at::Tensor& a) {
  check_input(a, "a");
  const float* pa = a.data_ptr<float>();
  const int64_t n = a.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  double total = 0.0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : total)
  for (int64_t blk = 0; blk < blocks; ++blk)
    total += sum_slice(pa, blk * kBlock, std::min(n, (blk + 1) * kBlock));
  return total;
}

// ---- the three writing probes share one loop shape ----
//
// out[i] = value(i) over one block, where value(i) reads the inputs at i.
// For large arrays on x86 the 32-byte-aligned middle of the block uses
// streaming stores; the ragged head and tail (and small arrays, which stay in
// cache anyway) use ordinary stores.

template <class Value>
void write_block(float* out, int64_t lo, int64_t hi, bool stream, Value value) {
  int64_t i = lo;
#if defined(EFFNB_X86)
  if (stream) {
    for (; i < hi && reinterpret_cast<std::uintptr_t>(out + i) % 32 != 0; ++i) out[i] = value(i);
    // Compute 64 results into a buffer that lives in L1 (a plain loop the
    // compiler vectorises), then stream the buffer out, one vector at a time.
    constexpr int kChunk = 64;
    alignas(32) float buf[kChunk];
    for (; i + kChunk <= hi; i += kChunk) {
      for (int j = 0; j < kChunk; ++j) buf[j] = value(i + j);
#if defined(__AVX__)
      for (int j = 0; j < kChunk; j += 8) _mm256_stream_ps(out + i + j, _mm256_load_ps(buf + j));
#else  // SSE is part of every x86-64 CPU
      for (int j = 0; j < kChunk; j += 4) _mm_stream_ps(out + i + j, _mm_load_ps(buf + j));
#endif
    }
    _mm_sfence();  // streaming stores are weakly ordered: publish them before the block ends
  }
#endif
  for (; i < hi; ++i) out[i] = value(i);
}

template <class Value>
void write_all(float* out, int64_t n, Value value) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool stream = n >= kStreamMin;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t blk = 0; blk < blocks; ++blk)
    write_block(out, blk * kBlock, std::min(n, (blk + 1) * kBlock), stream, value);
}

void stream_copy(const at::Tensor& a, const at::Tensor& b) {
  check_input(a, "a");
  check_input(b, "b");
  check_same(a, b, "a", "b");
  const float* x = a.data_ptr<float>();
  write_all(b.data_ptr<float>(), a.numel(), [x](int64_t i) { return x[i]; });
}

void stream_scale(const at::Tensor& a, const at::Tensor& b, double s) {
  check_input(a, "a");
  check_input(b, "b");
  check_same(a, b, "a", "b");
  const float* x = a.data_ptr<float>();
  const float fs = static_cast<float>(s);
  write_all(b.data_ptr<float>(), a.numel(), [x, fs](int64_t i) { return fs * x[i]; });
}

void stream_triad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, double s) {
  check_input(a, "a");
  check_input(b, "b");
  check_input(c, "c");
  check_same(a, b, "a", "b");
  check_same(a, c, "a", "c");
  const float* x = b.data_ptr<float>();
  const float* y = c.data_ptr<float>();
  const float fs = static_cast<float>(s);
  write_all(a.data_ptr<float>(), a.numel(), [x, y, fs](int64_t i) { return x[i] + fs * y[i]; });
}

}  // namespace

// The schemas are declared in Python (effnb/probes.py, SCHEMAS); C++ only
// registers the implementations. The loops are plain C++ that the compiler
// vectorizes for the build's ISA level, so the path is that level.
EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)

TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("stream_read", &stream_read);
  m.impl("stream_copy", &stream_copy);
  m.impl("stream_scale", &stream_scale);
  m.impl("stream_triad", &stream_triad);
}
