// CUDA kernel of deconvnet_ext::gather_at_switches: one thread per switch,
// out = self[position of the switch] (0 where it selects nothing), decoded by
// pool::switch_position like the CPU loop, so a bad switch never reads out of
// bounds. NCHW or channels_last, on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/pool_checks.h"
#include "common/pool_geometry.h"
#include "cuda/pool_launch.cuh"

namespace deconvnet_ext {
namespace {

using pool::PoolShape;

template <typename scalar_t, bool channels_last>
__global__ void gather_at_switches_kernel(const scalar_t* __restrict__ y,
                                          const uint8_t* __restrict__ switches,
                                          scalar_t* __restrict__ out, int64_t total,
                                          PoolShape s) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const cuda::Coord o = cuda::decompose<channels_last>(idx, s.C, s.oH, s.oW);
    int64_t h = 0, w = 0;
    out[idx] = pool::switch_position(switches[idx], o.y, o.x, s.p.h, s.p.w, s.H, s.W, &h, &w)
                   ? y[cuda::offset<channels_last>(o.n, o.c, h, w, s.C, s.H, s.W)]
                   : scalar_t(0);
  }
}

at::Tensor gather_at_switches_cuda(const at::Tensor& self, const at::Tensor& switches,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "gather_at_switches";
  const PoolShape s =
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
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      gather_at_switches_kernel<scalar_t, true>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              y.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
              out.mutable_data_ptr<scalar_t>(), total, s);
    } else {
      gather_at_switches_kernel<scalar_t, false>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              y.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
              out.mutable_data_ptr<scalar_t>(), total, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("gather_at_switches", &deconvnet_ext::gather_at_switches_cuda);
}
