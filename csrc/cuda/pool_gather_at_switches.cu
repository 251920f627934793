// CUDA kernel of deconvnet_ext::gather_at_switches: a grid-stride loop over
// pool::GatherElement (csrc/common/pool_elements.h): out = self[position of the
// switch] (0 where it selects nothing), decoded by pool::switch_position, so a
// bad switch never reads out of bounds. NCHW or channels_last.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/pool_checks.h"
#include "common/pool_elements.h"
#include "cuda/element_launch.cuh"

namespace deconvnet_ext {
namespace {

at::Tensor gather_at_switches_cuda(const at::Tensor& self, const at::Tensor& switches,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "gather_at_switches";
  const pool::PoolShape s =
      pool::check_gather_args(op, self, switches, kernel_size, stride, padding, dilation);
  const c10::cuda::CUDAGuard guard(self.device());
  const c10::MemoryFormat fmt = pool::working_format(self);
  at::Tensor out = at::empty(pool::map_shape(s, s.oH, s.oW), self.options().memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) {
    return out;
  }
  const at::Tensor y = self.contiguous(fmt);
  const at::Tensor sw = switches.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), op, [&] {
    const scalar_t* in = y.const_data_ptr<scalar_t>();
    const uint8_t* w = sw.const_data_ptr<uint8_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      cuda::for_each_element(pool::GatherElement<scalar_t, true>{in, w, o, s}, total);
    } else {
      cuda::for_each_element(pool::GatherElement<scalar_t, false>{in, w, o, s}, total);
    }
  });
  return out;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("gather_at_switches", &deconvnet_ext::gather_at_switches_cuda);
}
