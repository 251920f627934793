// Argument checks of aggregate_proposals shared by the CPU and CUDA kernels
// (host code). The Python wrapper (deconvnet_ext/aggregation.py) checks the
// same things first with friendlier messages; these keep direct
// torch.ops / C++ dispatcher calls from reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

#include "common/aggregate_element.h"

namespace deconvnet_ext {
namespace aggregate {

inline Mode parse_mode(const std::string& mode) {
  if (mode == "max") return Mode::kMax;
  if (mode == "sum") return Mode::kSum;
  if (mode == "mean") return Mode::kMean;
  TORCH_CHECK(false, "aggregate_proposals: mode must be 'max', 'sum' or 'mean', got '",
              mode, "'");
}

inline bool is_integer_dtype(const at::Tensor& t) {
  return at::isIntegralType(t.scalar_type(), /*includeBool=*/false);
}

// Checks ranks, dtypes, devices and sizes (not values) and returns the shape.
inline Shape check_args(const at::Tensor& maps, const at::Tensor& boxes,
                        const std::optional<at::Tensor>& image_index,
                        c10::IntArrayRef image_size, int64_t num_images,
                        const std::string& mode) {
  TORCH_CHECK(maps.dim() == 4, "aggregate_proposals: maps must be 4-d (K, C, h, w), got ",
              maps.dim(), "-d of shape ", maps.sizes());
  TORCH_CHECK(at::isFloatingType(maps.scalar_type()),
              "aggregate_proposals: maps must be a floating-point tensor, got ",
              maps.scalar_type());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4,
              "aggregate_proposals: boxes must have shape (K, 4), got ", boxes.sizes());
  TORCH_CHECK(boxes.size(0) == maps.size(0), "aggregate_proposals: boxes has ",
              boxes.size(0), " rows but maps has K=", maps.size(0), " maps");
  TORCH_CHECK(is_integer_dtype(boxes),
              "aggregate_proposals: boxes must be an integer tensor, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == maps.device(), "aggregate_proposals: boxes is on ",
              boxes.device(), " but maps is on ", maps.device());
  TORCH_CHECK(image_size.size() == 2 && image_size[0] > 0 && image_size[1] > 0,
              "aggregate_proposals: image_size must be two positive ints (H, W), got ",
              image_size);
  Shape s;
  s.K = maps.size(0);
  s.C = maps.size(1);
  s.h = maps.size(2);
  s.w = maps.size(3);
  s.H = image_size[0];
  s.W = image_size[1];
  s.mode = parse_mode(mode);
  s.batched = image_index.has_value();
  TORCH_CHECK(s.K == 0 || (s.h > 0 && s.w > 0),
              "aggregate_proposals: maps must have positive height and width, got ",
              maps.sizes());
  if (s.batched) {
    const at::Tensor& index = *image_index;
    TORCH_CHECK(index.dim() == 1 && index.size(0) == s.K,
                "aggregate_proposals: image_index must have shape (K,) = (", s.K,
                ",), got ", index.sizes());
    TORCH_CHECK(is_integer_dtype(index),
                "aggregate_proposals: image_index must be an integer tensor, got ",
                index.scalar_type());
    TORCH_CHECK(index.device() == maps.device(), "aggregate_proposals: image_index is on ",
                index.device(), " but maps is on ", maps.device());
    TORCH_CHECK(num_images >= 0 && (num_images > 0 || s.K == 0),
                "aggregate_proposals: num_images must be positive when there are proposals, got ",
                num_images);
    s.B = num_images;
  } else {
    TORCH_CHECK(num_images == 1,
                "aggregate_proposals: num_images must be 1 without image_index, got ",
                num_images);
    s.B = 1;
  }
  // Image-space offsets are computed in int64; box coordinates and map sizes
  // stay far below the float range that would make the weights meaningless.
  TORCH_CHECK(s.H < (int64_t{1} << 24) && s.W < (int64_t{1} << 24) &&
                  s.h < (int64_t{1} << 24) && s.w < (int64_t{1} << 24),
              "aggregate_proposals: image_size and map sizes must be below 2^24, got image_size=",
              image_size, " and maps of shape ", maps.sizes());
  return s;
}

}  // namespace aggregate
}  // namespace deconvnet_ext
