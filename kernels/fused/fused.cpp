// A MobileNetV2 inverted-residual block (Sandler et al. 2018), fp32 NHWC, stride 1:
//
//   E = relu6(x @ w1 + b1)            1x1 expand   Cin -> Cexp
//   D = relu6(depthwise3x3(E) + bd)   3x3 depthwise, zero padding
//   y = D @ w2 + b2 (+ x)             1x1 project  Cexp -> Cout (+ residual when Cin == Cout)
//
// Two kernels run the same building blocks (block.h):
//   ir_block_unfused  three passes over the image: E and D are whole tensors in memory,
//                     as three separate layers would leave them;
//   ir_block_fused    one pass over tiles of `tile_rows` output rows, one tile per task. A thread
//                     walks its tile a few rows (a step, >= 64 pixels) at a time: it expands the
//                     rows the step needs into a ring of step + 2 rows that stays in its cache
//                     (rows the last step expanded are kept), runs the depthwise layer on the
//                     ring, and projects straight into y. `channel_block` expanded channels at a
//                     time (0: all) shrink the ring to (step + 2) x W x channel_block floats;
//                     later channel blocks add their share into y.
// The row above and below a tile is expanded again by the tile next to it: fusion buys locality
// with a little recomputation, and the tile height sets the exchange rate (and how many tasks
// the threads share).
//
// Weights come in matrix form (effnb/measuring/block.py makes them from torch's conv weights):
// w1 [Cin, Cexp], b1 [Cexp], wd [9, Cexp] (tap-major), bd [Cexp], w2 [Cexp, Cout], b2 [Cout].
#include "block.h"

namespace {

using fused::Epilogue;
using fused::pad;

struct Packed {
  int64_t cin, cexp, cout, cp, coutp;
  std::vector<float> w1, b1, wd, bd, w2, b2;
};

void check(const at::Tensor& t, const char* name, int64_t dim) {
  effnb::check_cpu_contiguous(t, "ir_block", name);
  effnb::check_dtype(t, at::kFloat, "ir_block", name);
  TORCH_CHECK(t.dim() == dim, "ir_block: ", name, " must be ", dim, "-D, got ", t.dim(), "-D");
}

// Zero-padded copies of the weights, channel counts rounded up to whole vectors (a few KiB, per call).
Packed pack(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
            const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool residual) {
  check(x, "x", 4);
  check(w1, "w1", 2);
  check(b1, "b1", 1);
  check(wd, "wd", 2);
  check(bd, "bd", 1);
  check(w2, "w2", 2);
  check(b2, "b2", 1);
  Packed p;
  p.cin = x.size(3);
  p.cexp = w1.size(1);
  p.cout = w2.size(1);
  TORCH_CHECK(w1.size(0) == p.cin, "ir_block: w1 is ", w1.sizes(), " but x has ", p.cin,
              " channels; pass w1 as [Cin, Cexp] (x is NHWC)");
  TORCH_CHECK(b1.size(0) == p.cexp && bd.size(0) == p.cexp && wd.size(0) == 9 && wd.size(1) == p.cexp &&
                  w2.size(0) == p.cexp,
              "ir_block: expected b1 [", p.cexp, "], wd [9, ", p.cexp, "], bd [", p.cexp, "], w2 [", p.cexp,
              ", Cout]; got b1 ", b1.sizes(), ", wd ", wd.sizes(), ", bd ", bd.sizes(), ", w2 ", w2.sizes());
  TORCH_CHECK(b2.size(0) == p.cout, "ir_block: b2 has ", b2.size(0), " entries; expected ", p.cout);
  TORCH_CHECK(!residual || p.cin == p.cout, "ir_block: a residual needs Cin == Cout, got ", p.cin, " and ",
              p.cout, "; pass residual=False");
  p.cp = pad(p.cexp);
  p.coutp = pad(p.cout);
  p.w1.assign(p.cin * p.cp, 0.0f);
  p.b1.assign(p.cp, 0.0f);
  p.wd.assign(9 * p.cp, 0.0f);
  p.bd.assign(p.cp, 0.0f);
  p.w2.assign(p.cp * p.coutp, 0.0f);
  p.b2.assign(p.coutp, 0.0f);
  const float *s1 = w1.data_ptr<float>(), *sd = wd.data_ptr<float>(), *s2 = w2.data_ptr<float>();
  for (int64_t i = 0; i < p.cin; ++i) std::copy(s1 + i * p.cexp, s1 + (i + 1) * p.cexp, &p.w1[i * p.cp]);
  for (int64_t t = 0; t < 9; ++t) std::copy(sd + t * p.cexp, sd + (t + 1) * p.cexp, &p.wd[t * p.cp]);
  for (int64_t i = 0; i < p.cexp; ++i) std::copy(s2 + i * p.cout, s2 + (i + 1) * p.cout, &p.w2[i * p.coutp]);
  std::copy(b1.data_ptr<float>(), b1.data_ptr<float>() + p.cexp, p.b1.begin());
  std::copy(bd.data_ptr<float>(), bd.data_ptr<float>() + p.cexp, p.bd.begin());
  std::copy(b2.data_ptr<float>(), b2.data_ptr<float>() + p.cout, p.b2.begin());
  return p;
}

at::Tensor ir_block_unfused(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                            const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool residual) {
  const Packed p = pack(x, w1, b1, wd, bd, w2, b2, residual);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2);
  at::Tensor y = at::empty({N, H, W, p.cout}, x.options());
  if (y.numel() == 0) return y;
  at::Tensor e = at::empty({N * H * W * p.cp}, x.options()), d = at::empty_like(e);
  const float* X = x.data_ptr<float>();
  float *E = e.data_ptr<float>(), *D = d.data_ptr<float>(), *Y = y.data_ptr<float>();
  const int64_t rows = N * H, chunk = std::max<int64_t>(1, 128 / W);   // >= 128 pixels per task
  const int64_t tasks = (rows + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {   // pass 1: expand every pixel
    const int64_t g0 = t * chunk, g1 = std::min(rows, g0 + chunk);
    Epilogue ex;
    ex.bias = p.b1.data();
    ex.relu6 = true;
    fused::gemm((g1 - g0) * W, p.cin, X + g0 * W * p.cin, p.cin, p.w1.data(), p.cp, p.cp, p.cp,
                E + g0 * W * p.cp, p.cp, ex);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < rows; ++g) {    // pass 2: depthwise, one output row per task
    const int64_t h = g % H, row = W * p.cp;
    const float* mid = E + g * row;
    fused::dw_row(h > 0 ? mid - row : nullptr, mid, h + 1 < H ? mid + row : nullptr, W, p.cp, p.cp,
                  p.wd.data(), p.cp, p.bd.data(), D + g * row, p.cp);
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < tasks; ++t) {   // pass 3: project (+ residual)
    const int64_t g0 = t * chunk, g1 = std::min(rows, g0 + chunk);
    Epilogue pr;
    pr.bias = p.b2.data();
    pr.res = residual ? X + g0 * W * p.cin : nullptr;
    pr.ldr = p.cin;
    fused::gemm((g1 - g0) * W, p.cp, D + g0 * W * p.cp, p.cp, p.w2.data(), p.coutp, p.coutp, p.cout,
                Y + g0 * W * p.cout, p.cout, pr);
  }
  return y;
}

at::Tensor ir_block_fused(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& wd,
                          const at::Tensor& bd, const at::Tensor& w2, const at::Tensor& b2, bool residual,
                          int64_t tile_rows, int64_t channel_block) {
  TORCH_CHECK(tile_rows >= 1, "ir_block_fused: tile_rows must be >= 1, got ", tile_rows);
  TORCH_CHECK(channel_block >= 0, "ir_block_fused: channel_block must be >= 0 (0: all channels), got ",
              channel_block);
  const Packed p = pack(x, w1, b1, wd, bd, w2, b2, residual);
  const int64_t N = x.size(0), H = x.size(1), W = x.size(2);
  at::Tensor y = at::empty({N, H, W, p.cout}, x.options());
  if (y.numel() == 0) return y;
  const int64_t th = std::min(tile_rows, H);
  const int64_t cb = (channel_block == 0 || channel_block >= p.cp) ? p.cp : pad(channel_block);
  const int64_t step = std::min(th, std::max<int64_t>(1, (64 + W - 1) / W));   // rows per step: >= 64 pixels
  const int64_t slots = step + 2;                                               // ring of expanded rows
  const int64_t per_image = (H + th - 1) / th, tiles = N * per_image;
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
#pragma omp parallel
  {
    std::vector<float> ring(slots * W * cb), dbuf(step * W * cb);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t n = t / per_image, b0 = (t % per_image) * th, b1 = std::min(H, b0 + th);
      const float* ximg = X + n * H * W * p.cin;
      float* yimg = Y + n * H * W * p.cout;
      for (int64_t c0 = 0; c0 < p.cp; c0 += cb) {
        const int64_t cw = std::min(cb, p.cp - c0), row = W * cw;
        auto slot = [&](int64_t r) { return ring.data() + (r % slots) * row; };
        int64_t have = std::max<int64_t>(b0 - 1, 0);   // expanded rows [.., have) are in the ring
        for (int64_t r0 = b0; r0 < b1; r0 += step) {
          const int64_t r1 = std::min(b1, r0 + step), need = std::min(H, r1 + 1);
          while (have < need) {          // expand the rows this step adds, one contiguous run of slots at a time
            const int64_t run = std::min(need - have, slots - have % slots);
            Epilogue ex;
            ex.bias = p.b1.data() + c0;
            ex.relu6 = true;
            fused::gemm(run * W, p.cin, ximg + have * W * p.cin, p.cin, p.w1.data() + c0, p.cp, cw, cw,
                        slot(have), cw, ex);
            have += run;
          }
          for (int64_t r = r0; r < r1; ++r)
            fused::dw_row(r > 0 ? slot(r - 1) : nullptr, slot(r), r + 1 < H ? slot(r + 1) : nullptr, W, cw, cw,
                          p.wd.data() + c0, p.cp, p.bd.data() + c0, dbuf.data() + (r - r0) * row, cw);
          Epilogue pr;
          pr.accumulate = c0 > 0;
          pr.bias = c0 == 0 ? p.b2.data() : nullptr;
          pr.res = (c0 == 0 && residual) ? ximg + r0 * W * p.cin : nullptr;
          pr.ldr = p.cin;
          fused::gemm((r1 - r0) * W, cw, dbuf.data(), cw, p.w2.data() + c0 * p.coutp, p.coutp, p.coutp, p.cout,
                      yimg + r0 * W * p.cout, p.cout, pr);
        }
      }
    }
  }
  return y;
}

}  // namespace

EFFNB_ISA_PATH(EFFNB_ISA_LEVEL)

// Schemas and fake kernels: effnb/measuring/ops.py (declared once, in Python).
TORCH_LIBRARY_IMPL(effnb, CPU, m) {
  m.impl("ir_block_unfused", &ir_block_unfused);
  m.impl("ir_block_fused", &ir_block_fused);
}
