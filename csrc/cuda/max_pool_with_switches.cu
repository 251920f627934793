// CUDA kernel of deconvnet_ext::max_pool2d_with_switches: a grid-stride loop
// over pool::PoolElement (csrc/common/pool_elements.h), the function the CPU's
// portable loop runs; NCHW or channels_last, on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/pool_checks.h"
#include "common/pool_elements.h"
#include "cuda/element_launch.cuh"

namespace deconvnet_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_switches_cuda(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d_with_switches";
  const pool::PoolShape s = pool::check_pool_args(op, self, kernel_size, stride, padding,
                                                  dilation, ceil_mode);
  const c10::cuda::CUDAGuard guard(self.device());
  const c10::MemoryFormat fmt = pool::working_format(self);
  const std::vector<int64_t> shape = pool::map_shape(s, s.oH, s.oW);
  at::Tensor out = at::empty(shape, self.options().memory_format(fmt));
  at::Tensor sw = at::empty(shape, self.options().dtype(at::kByte).memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) {
    return {out, sw};
  }
  const at::Tensor x = self.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    uint8_t* w = sw.mutable_data_ptr<uint8_t>();
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      cuda::for_each_element(pool::PoolElement<scalar_t, true>{in, o, w, s}, total);
    } else {
      cuda::for_each_element(pool::PoolElement<scalar_t, false>{in, o, w, s}, total);
    }
  });
  return {out, sw};
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("max_pool2d_with_switches", &deconvnet_ext::max_pool2d_with_switches_cuda);
}
