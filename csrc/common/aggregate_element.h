// The per-output element function of aggregate_proposals: one output element
// (image b, class c, row y, column x) walks the proposals in index order,
// samples every map whose box covers (y, x) with the shared bilinear rule
// (csrc/common/bilinear.h) and reduces in op-math precision (float for
// float/half/bfloat16, double for double). Written once: the CUDA kernel is a
// grid-stride loop over it (one launch per call), the CPU's portable loop a
// parallel_for over it; the CPU's separable fast path (resize each box row
// once) is tested bit for bit against it.
//
// An empty box or an image index outside [0, B) only makes that proposal
// contribute nothing, never an out-of-bounds access (the host checks values
// where it can see them).
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "common/bilinear.h"

namespace deconvnet_ext {
namespace aggregate {

enum class Mode { kMax, kSum, kMean };

struct Shape {
  int64_t K;   // proposals
  int64_t C;   // classes
  int64_t h;   // map height
  int64_t w;   // map width
  int64_t H;   // image height
  int64_t W;   // image width
  int64_t B;   // output canvases (1 without image_index)
  bool batched;
  Mode mode;
};

// kFused: the rounding of csrc/common/bilinear.h (the GPU always fuses; the CPU
// fuses where torch's own kernels do).
template <typename scalar_t, typename opmath_t, bool kFused>
struct AggregateElement {
  const scalar_t* maps;         // (K, C, h, w) contiguous
  const int64_t* boxes;         // (K, 4) [x0, y0, x1, y1)
  const int64_t* image_index;   // (K,), or nullptr: every proposal is image 0
  scalar_t* out;                // (B, C, H, W) contiguous
  Shape s;

  C10_HOST_DEVICE inline void operator()(int64_t idx) const {
    const int64_t x = idx % s.W;
    const int64_t y = (idx / s.W) % s.H;
    const int64_t c = (idx / (s.W * s.H)) % s.C;
    const int64_t b = idx / (s.W * s.H * s.C);
    opmath_t acc = opmath_t(0);  // the canvas starts at zero
    int64_t count = 0;
    for (int64_t k = 0; k < s.K; ++k) {
      if (image_index != nullptr && image_index[k] != b) continue;
      ++count;
      const int64_t x0 = boxes[4 * k], y0 = boxes[4 * k + 1];
      const int64_t x1 = boxes[4 * k + 2], y1 = boxes[4 * k + 3];
      if (y < y0 || y >= y1 || x < x0 || x >= x1) continue;  // also skips empty boxes
      const auto row = bilinear::source_taps<kFused, opmath_t>(s.h, y1 - y0, y - y0);
      const auto col = bilinear::source_taps<kFused, opmath_t>(s.w, x1 - x0, x - x0);
      const opmath_t v =
          bilinear::sample<kFused, opmath_t>(maps + (k * s.C + c) * s.h * s.w, s.w, row, col);
      if (s.mode == Mode::kMax) {
        // torch.maximum: a NaN on either side wins.
        if (v > acc || v != v) acc = v;
      } else {
        acc += v;
      }
    }
    if (s.mode == Mode::kMean && count > 0) acc = acc / static_cast<opmath_t>(count);
    out[idx] = static_cast<scalar_t>(acc);
  }
};

}  // namespace aggregate
}  // namespace deconvnet_ext
