// Shared by every kernel family: includes, input checks, the ISA path a build
// runs, the OpenMP thread count as the library sees it, and tuning choices made
// per CPU vendor.
//
// Schemas live in Python (torch.library, with fake kernels); C++ files only
// register implementations with TORCH_LIBRARY_IMPL(effnb, CPU, m).
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EFFNB_X86 1
#endif

// The widest SIMD level this translation unit was compiled for. A family whose
// kernels pick finer paths (VNNI, an emulated instruction) names its own with
// EFFNB_ISA_PATH below.
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define EFFNB_ISA_LEVEL "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define EFFNB_ISA_LEVEL "avx2"
#else
#define EFFNB_ISA_LEVEL "scalar"
#endif

// Exactly one .cpp of each family says which code path the build runs, e.g.
// EFFNB_ISA_PATH("avx2"). effnb.ext reads it with ctypes (no op, no dispatch):
// every claim row and benchmark table names it. The same macro exports the
// OpenMP thread count: the kernels link the system's libgomp, torch ships its
// own copy, so torch.set_num_threads does not reach them; effnb.threads sets
// both (effnb.ext.sync_threads).
#define EFFNB_ISA_PATH(path_string)                                               \
  extern "C" __attribute__((visibility("default"))) const char* effnb_isa_path() { \
    return path_string;                                                           \
  }                                                                               \
  extern "C" __attribute__((visibility("default"))) int effnb_omp_threads() {     \
    return omp_get_max_threads();                                                 \
  }                                                                               \
  extern "C" __attribute__((visibility("default"))) void effnb_set_omp_threads(int n) { \
    omp_set_num_threads(n);                                                       \
  }

namespace effnb {

// A CPU, contiguous tensor of one dtype; the message says what to pass instead.
inline void check_cpu_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " is on ", t.device(), "; pass ", name, ".cpu()");
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " is strided; pass ", name, ".contiguous()");
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " is ", t.scalar_type(), "; pass ", name,
              " as ", want);
}

// A tuning choice measured per CPU vendor (one code path faster on AMD, another on Intel), which
// the environment can force for tests and A/B runs: `var` equal to `on` or `off` wins, else the
// vendor default. The variable is read on every call, so a test can switch it inside one process.
inline bool vendor_choice(const char* var, const char* on, const char* off, bool vendor_default) {
  const char* force = std::getenv(var);
  if (force && std::strcmp(force, on) == 0) return true;
  if (force && std::strcmp(force, off) == 0) return false;
  return vendor_default;
}

}  // namespace effnb
