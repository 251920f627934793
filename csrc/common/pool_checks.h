// Host-only argument checks of the pool, unpool and gather ops, shared by the
// CPU and CUDA entry points. Same validity rules as F.max_pool2d; every error
// names the argument and the value received (TORCH_CHECK_VALUE / _TYPE reach
// Python as ValueError / TypeError).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <array>
#include <vector>

#include "common/pool_geometry.h"

namespace deconvnet_ext {
namespace pool {

// Switches are uint8: a window may hold at most 256 taps.
constexpr int64_t kMaxWindow = 256;

inline PoolParams check_pool_params(const char* op, c10::IntArrayRef kernel_size,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding,
                                    c10::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(kernel_size.size() == 2, op, ": kernel_size must have 2 elements, got ",
                    kernel_size);
  TORCH_CHECK_VALUE(stride.size() == 2, op, ": stride must have 2 elements, got ", stride);
  TORCH_CHECK_VALUE(padding.size() == 2, op, ": padding must have 2 elements, got ", padding);
  TORCH_CHECK_VALUE(dilation.size() == 2, op, ": dilation must have 2 elements, got ",
                    dilation);
  TORCH_CHECK_VALUE(kernel_size[0] > 0 && kernel_size[1] > 0, op,
                    ": kernel_size must be greater than zero, got ", kernel_size);
  TORCH_CHECK_VALUE(stride[0] > 0 && stride[1] > 0, op,
                    ": stride must be greater than zero, got ", stride);
  TORCH_CHECK_VALUE(dilation[0] > 0 && dilation[1] > 0, op,
                    ": dilation must be greater than zero, got ", dilation);
  TORCH_CHECK_VALUE(padding[0] >= 0 && padding[1] >= 0, op,
                    ": padding must be non-negative, got ", padding);
  TORCH_CHECK_VALUE(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
                    ": padding should be at most half of kernel_size, got padding=", padding,
                    " and kernel_size=", kernel_size);
  TORCH_CHECK_VALUE(kernel_size[0] * kernel_size[1] <= kMaxWindow, op, ": kernel_size ",
                    kernel_size, " gives a window of ", kernel_size[0] * kernel_size[1],
                    " elements; uint8 switches allow at most ", kMaxWindow);
  return PoolParams{Axis{kernel_size[0], stride[0], padding[0], dilation[0]},
                    Axis{kernel_size[1], stride[1], padding[1], dilation[1]}};
}

inline void check_float_map(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 3 || t.dim() == 4, op, ": ", name,
                    " must be 3-d (C, H, W) or 4-d (N, C, H, W), got shape ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kDouble || st == at::kHalf ||
                       st == at::kBFloat16,
                   op, ": ", name,
                   " must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_switches(const char* op, const at::Tensor& switches,
                           const at::Tensor& values, const char* values_name) {
  TORCH_CHECK_TYPE(switches.scalar_type() == at::kByte, op,
                   ": switches must be uint8, got ", switches.scalar_type());
  TORCH_CHECK_VALUE(switches.device() == values.device(), op, ": switches is on ",
                    switches.device(), " but ", values_name, " is on ", values.device());
  TORCH_CHECK_VALUE(switches.dim() == values.dim(), op, ": switches must have the rank of ",
                    values_name, " (", values.dim(), "), got shape ", switches.sizes());
}

// The pooled size, refused when it is empty (F.max_pool2d's "output size is
// too small").
inline std::array<int64_t, 2> check_pooled_size(const char* op, int64_t H, int64_t W,
                                                const PoolParams& p, bool ceil_mode) {
  TORCH_CHECK_VALUE(H > 0 && W > 0, op, ": self must have a non-empty spatial size, got (",
                    H, ", ", W, ")");
  const int64_t oH = pooled_size(H, p.h, ceil_mode);
  const int64_t oW = pooled_size(W, p.w, ceil_mode);
  TORCH_CHECK_VALUE(oH > 0 && oW > 0, op, ": input size (", H, ", ", W,
                    ") gives output size (", oH, ", ", oW,
                    "), which is too small, with kernel_size (", p.h.kernel, ", ", p.w.kernel,
                    "), stride (", p.h.stride, ", ", p.w.stride, "), padding (", p.h.padding,
                    ", ", p.w.padding, "), dilation (", p.h.dilation, ", ", p.w.dilation, ")");
  return {oH, oW};
}

// A pooled extent `pooled` can come from input extent `input` when the
// pooling (floor or ceil mode) gives it.
inline bool pooled_from(int64_t input, int64_t pooled, const Axis& a) {
  return input > 0 && (pooled_size(input, a, false) == pooled ||
                       pooled_size(input, a, true) == pooled);
}

inline void check_unpooled_size(const char* op, const char* name, int64_t H, int64_t W,
                                int64_t oH, int64_t oW, const PoolParams& p) {
  TORCH_CHECK_VALUE(pooled_from(H, oH, p.h) && pooled_from(W, oW, p.w), op, ": ", name, " (",
                    H, ", ", W, ") cannot be pooled to the switches' size (", oH, ", ", oW,
                    ") with kernel_size (", p.h.kernel, ", ", p.w.kernel, "), stride (",
                    p.h.stride, ", ", p.w.stride, "), padding (", p.h.padding, ", ",
                    p.w.padding, "), dilation (", p.h.dilation, ", ", p.w.dilation, ")");
}

// Memory format the kernels work in: channels_last when the tensor is
// (4-d and) laid out so, contiguous NCHW otherwise.
inline c10::MemoryFormat working_format(const at::Tensor& t) {
  return t.dim() == 4 && t.suggest_memory_format() == c10::MemoryFormat::ChannelsLast
             ? c10::MemoryFormat::ChannelsLast
             : c10::MemoryFormat::Contiguous;
}

// Sizes of a pool of self ((N, C, H, W) or (C, H, W)), checked.
inline PoolShape check_pool_args(const char* op, const at::Tensor& self,
                                 c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                                 c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                 bool ceil_mode) {
  check_float_map(op, "self", self);
  const PoolParams p = check_pool_params(op, kernel_size, stride, padding, dilation);
  const bool batched = self.dim() == 4;
  const int64_t d = batched ? 1 : 0;
  const int64_t H = self.size(d + 1), W = self.size(d + 2);
  const auto [oH, oW] = check_pooled_size(op, H, W, p, ceil_mode);
  return PoolShape{p, batched, batched ? self.size(0) : 1, self.size(d), H, W, oH, oW};
}

// Sizes of an unpool (self, switches: (N, C, oH, oW) or (C, oH, oW)) into
// output_size (H, W), checked.

inline PoolShape check_unpool_args(const char* op, const at::Tensor& self,
                                     const at::Tensor& switches, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef stride, c10::IntArrayRef padding,
                                     c10::IntArrayRef dilation, c10::IntArrayRef output_size) {
  check_float_map(op, "self", self);
  check_switches(op, switches, self, "self");
  TORCH_CHECK_VALUE(switches.sizes() == self.sizes(), op, ": switches must have the shape of self ",
                    self.sizes(), ", got ", switches.sizes());
  const PoolParams p = check_pool_params(op, kernel_size, stride, padding, dilation);
  TORCH_CHECK_VALUE(output_size.size() == 2, op, ": output_size must be (H, W), got ",
                    output_size);
  const bool batched = self.dim() == 4;
  const int64_t d = batched ? 1 : 0;
  PoolShape s{p, batched, batched ? self.size(0) : 1, self.size(d), output_size[0],
                output_size[1], self.size(d + 1), self.size(d + 2)};
  check_unpooled_size(op, "output_size", s.H, s.W, s.oH, s.oW, p);
  return s;
}

// Sizes of a gather from self (N, C, H, W) at switches (N, C, oH, oW), checked.
inline PoolShape check_gather_args(const char* op, const at::Tensor& self,
                                     const at::Tensor& switches, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef stride, c10::IntArrayRef padding,
                                     c10::IntArrayRef dilation) {
  check_float_map(op, "self", self);
  check_switches(op, switches, self, "self");
  const bool batched = self.dim() == 4;
  const int64_t d = batched ? 1 : 0;
  TORCH_CHECK_VALUE(switches.sizes().slice(0, d + 1) == self.sizes().slice(0, d + 1), op,
                    ": switches must match self in its leading (N, C) dimensions, got switches ",
                    switches.sizes(), " and self ", self.sizes());
  const PoolParams p = check_pool_params(op, kernel_size, stride, padding, dilation);
  PoolShape s{p, batched, batched ? self.size(0) : 1, self.size(d), self.size(d + 1),
                self.size(d + 2), switches.size(d + 1), switches.size(d + 2)};
  check_unpooled_size(op, "self's spatial size", s.H, s.W, s.oH, s.oW, p);
  return s;
}

// Shape (N, C, h, w), or (C, h, w) for an unbatched op.
inline std::vector<int64_t> map_shape(const PoolShape& s, int64_t h, int64_t w) {
  return s.batched ? std::vector<int64_t>{s.N, s.C, h, w} : std::vector<int64_t>{s.C, h, w};
}

}  // namespace pool
}  // namespace deconvnet_ext
