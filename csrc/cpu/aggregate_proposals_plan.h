// aggregate_proposals on CPU, part 1: where each proposal lands. For every
// proposal its box clipped to the image, the bilinear taps of each clipped
// row and column (csrc/common/bilinear.h), the column taps regrouped as
// 8-column windows for the SIMD path, and the proposals grouped by image in
// index order. Box values and image indices are checked here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/bilinear.h"
#include "common/bilinear_aggregate_args.h"

namespace deconvnet_ext {
namespace aggregate {
namespace cpu {

using bilinear::Taps;

// ---------------------------------------------------------------- geometry
// Where proposal k lands: its box clipped to the image, and where its row and
// column taps start in the shared tap arrays.
struct Placement {
  int64_t cy0, cy1, cx0, cx1;  // clipped box, [cy0, cy1) x [cx0, cx1); empty if cy0 >= cy1
  int64_t row_offset;          // first row tap of this proposal
  int64_t col_offset;          // first column tap of this proposal
  int64_t window_offset;       // first 8-column window of this proposal
  // 8: every window's taps lie in the 8 map columns [base, base + 8) (boxes
  // wider than ~1.15x the map: one load per window); 16: windows use 16
  // columns, or gather where base = -1.
  int32_t window_span;
};

template <typename T>
struct Plan {
  std::vector<Placement> placements;   // (K,)
  std::vector<Taps<T>> row_taps;       // per clipped row of every proposal
  std::vector<int32_t> col_i0, col_i1; // per clipped column of every proposal
  std::vector<T> col_l0, col_l1;
  // The same taps as 8-column windows for the SIMD path: window q of a
  // proposal covers its clipped columns [8q, 8q + 8); its taps lie in the 16
  // map columns [base, base + 16) (base = -1: they don't, gather instead).
  // rel: the tap's offset from base, low 3 bits = lane, sign bit = second half.
  std::vector<int32_t> window_base;    // per full window of every proposal
  std::vector<int32_t> col_rel0, col_rel1;
  std::vector<int64_t> order;          // proposals grouped by image, index order within
  std::vector<int64_t> image_start;    // (B + 1,) offsets into order
};

constexpr int32_t kSecondHalf = INT32_MIN;  // sign bit: lane of the second 8 columns

template <typename T>
inline void add_windows(Plan<T>& plan, Placement& p, int64_t w) {
  p.window_offset = static_cast<int64_t>(plan.window_base.size());
  const int64_t n = p.cx1 - p.cx0;
  // One load per window where every window's taps fit in 8 columns.
  bool fits8 = w >= 8;
  for (int64_t q = 0; q + 8 <= n && fits8; q += 8) {
    const int64_t j = p.col_offset + q;
    fits8 = plan.col_i1[j + 7] - plan.col_i0[j] < 8;
  }
  p.window_span = fits8 ? 8 : 16;
  if (fits8) {
    for (int64_t q = 0; q + 8 <= n; q += 8) {
      const int64_t j = p.col_offset + q;
      const int64_t base = std::min<int64_t>(plan.col_i0[j], w - 8);
      plan.window_base.push_back(static_cast<int32_t>(base));
      for (int64_t x = 0; x < 8; ++x) {
        plan.col_rel0[j + x] = static_cast<int32_t>(plan.col_i0[j + x] - base);
        plan.col_rel1[j + x] = static_cast<int32_t>(plan.col_i1[j + x] - base);
      }
    }
    return;
  }
  for (int64_t q = 0; q + 8 <= n; q += 8) {
    const int64_t j = p.col_offset + q;
    const int64_t first = plan.col_i0[j];
    const int64_t last = plan.col_i1[j + 7];
    int64_t base = -1;
    if (w >= 16 && last - first < 16) base = std::min<int64_t>(first, w - 16);
    plan.window_base.push_back(static_cast<int32_t>(base));
    for (int64_t x = 0; x < 8 && base >= 0; ++x) {
      const int64_t r0 = plan.col_i0[j + x] - base, r1 = plan.col_i1[j + x] - base;
      plan.col_rel0[j + x] = static_cast<int32_t>(r0 & 7) | (r0 >= 8 ? kSecondHalf : 0);
      plan.col_rel1[j + x] = static_cast<int32_t>(r1 & 7) | (r1 >= 8 ? kSecondHalf : 0);
    }
  }
}

// Box values and image indices (int64, contiguous), checked (the CPU sees the
// data for free): every path calls this before it reads a map.
inline void check_values(const Shape& s, const at::Tensor& boxes, const at::Tensor& image_index) {
  const int64_t* box = boxes.const_data_ptr<int64_t>();
  const int64_t* img = s.batched ? image_index.const_data_ptr<int64_t>() : nullptr;
  constexpr int64_t kCoordLimit = int64_t{1} << 30;
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t x0 = box[4 * k], y0 = box[4 * k + 1], x1 = box[4 * k + 2], y1 = box[4 * k + 3];
    TORCH_CHECK(x1 > x0 && y1 > y0, "aggregate_proposals: boxes row ", k, " = [", x0, ", ", y0,
                ", ", x1, ", ", y1, "] is empty (need x1 > x0 and y1 > y0)");
    TORCH_CHECK(std::max({std::abs(x0), std::abs(y0), std::abs(x1), std::abs(y1)}) <= kCoordLimit,
                "aggregate_proposals: boxes row ", k, " has a coordinate beyond +-2^30");
    const int64_t b = s.batched ? img[k] : 0;
    TORCH_CHECK(b >= 0 && b < s.B, "aggregate_proposals: image_index[", k, "] = ", b,
                " is outside [0, num_images=", s.B, ")");
  }
}

// Where each proposal lands (values checked first).
template <typename T, bool kFused>
Plan<T> make_plan(const Shape& s, const at::Tensor& boxes, const at::Tensor& image_index) {
  Plan<T> plan;
  const int64_t* box = boxes.const_data_ptr<int64_t>();
  const int64_t* img = s.batched ? image_index.const_data_ptr<int64_t>() : nullptr;
  check_values(s, boxes, image_index);
  plan.placements.resize(s.K);
  plan.image_start.assign(s.B + 1, 0);
  int64_t rows = 0, cols = 0;
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t x0 = box[4 * k], y0 = box[4 * k + 1], x1 = box[4 * k + 2], y1 = box[4 * k + 3];
    const int64_t b = s.batched ? img[k] : 0;
    plan.image_start[b + 1] += 1;
    Placement& p = plan.placements[k];
    p.cy0 = std::max<int64_t>(y0, 0);
    p.cy1 = std::min<int64_t>(y1, s.H);
    p.cx0 = std::max<int64_t>(x0, 0);
    p.cx1 = std::min<int64_t>(x1, s.W);
    if (p.cy0 >= p.cy1 || p.cx0 >= p.cx1) {  // entirely outside the image
      p.cy1 = p.cy0;
      p.cx1 = p.cx0;
    }
    p.row_offset = rows;
    p.col_offset = cols;
    rows += p.cy1 - p.cy0;
    cols += p.cx1 - p.cx0;
  }
  plan.row_taps.resize(rows);
  plan.col_i0.resize(cols);
  plan.col_i1.resize(cols);
  plan.col_l0.resize(cols);
  plan.col_l1.resize(cols);
  plan.col_rel0.resize(cols);
  plan.col_rel1.resize(cols);
  plan.window_base.reserve(cols / 8 + 1);
  for (int64_t k = 0; k < s.K; ++k) {
    Placement& p = plan.placements[k];
    const int64_t x0 = box[4 * k], y0 = box[4 * k + 1], x1 = box[4 * k + 2], y1 = box[4 * k + 3];
    for (int64_t y = p.cy0; y < p.cy1; ++y) {
      plan.row_taps[p.row_offset + (y - p.cy0)] =
          bilinear::source_taps<kFused, T>(s.h, y1 - y0, y - y0);
    }
    for (int64_t x = p.cx0; x < p.cx1; ++x) {
      const Taps<T> t = bilinear::source_taps<kFused, T>(s.w, x1 - x0, x - x0);
      const int64_t j = p.col_offset + (x - p.cx0);
      plan.col_i0[j] = static_cast<int32_t>(t.i0);
      plan.col_i1[j] = static_cast<int32_t>(t.i1);
      plan.col_l0[j] = t.l0;
      plan.col_l1[j] = t.l1;
    }
    add_windows(plan, p, s.w);
  }
  // Counting sort by image, stable: index order within each image.
  for (int64_t b = 0; b < s.B; ++b) plan.image_start[b + 1] += plan.image_start[b];
  plan.order.resize(s.K);
  std::vector<int64_t> fill(plan.image_start.begin(), plan.image_start.end() - 1);
  for (int64_t k = 0; k < s.K; ++k) plan.order[fill[s.batched ? img[k] : 0]++] = k;
  return plan;
}

}  // namespace cpu
}  // namespace aggregate
}  // namespace deconvnet_ext
