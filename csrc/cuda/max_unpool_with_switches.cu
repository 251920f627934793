// CUDA kernel of deconvnet_ext::max_unpool2d_with_switches: a grid-stride loop
// over pool::UnpoolElement (csrc/common/pool_elements.h): each OUTPUT location
// gathers from the windows covering it in a fixed tap order. Each output is
// written once: no zero fill, no atomics, deterministic; a switch outside its
// window matches no tap and selects nothing.
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

at::Tensor max_unpool2d_with_switches_cuda(const at::Tensor& self, const at::Tensor& switches,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           at::IntArrayRef output_size) {
  constexpr const char* op = "max_unpool2d_with_switches";
  const pool::PoolShape s = pool::check_unpool_args(op, self, switches, kernel_size, stride,
                                                    padding, dilation, output_size);
  const c10::cuda::CUDAGuard guard(self.device());
  const c10::MemoryFormat fmt = pool::working_format(self);
  at::Tensor y = at::empty(pool::map_shape(s, s.H, s.W), self.options().memory_format(fmt));
  const int64_t total = y.numel();
  if (total == 0) {
    return y;
  }
  const at::Tensor x = self.contiguous(fmt);
  const at::Tensor sw = switches.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    const uint8_t* w = sw.const_data_ptr<uint8_t>();
    scalar_t* o = y.mutable_data_ptr<scalar_t>();
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      cuda::for_each_element(pool::UnpoolElement<scalar_t, true>{in, w, o, s}, total);
    } else {
      cuda::for_each_element(pool::UnpoolElement<scalar_t, false>{in, w, o, s}, total);
    }
  });
  return y;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("max_unpool2d_with_switches", &deconvnet_ext::max_unpool2d_with_switches_cuda);
}
