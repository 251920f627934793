// CUDA kernel of deconvnet_ext::max_unpool2d_with_switches: one thread per
// OUTPUT location gathers from the windows covering it (pool::covering_window)
// in a fixed tap order. Each output is written once: no zero fill, no atomics,
// deterministic; a switch outside its window matches no tap and selects nothing.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
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
__global__ void max_unpool_switches_kernel(const scalar_t* __restrict__ x,
                                           const uint8_t* __restrict__ switches,
                                           scalar_t* __restrict__ y, int64_t total,
                                           PoolShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const cuda::Coord q = cuda::decompose<channels_last>(idx, s.C, s.H, s.W);
    acc_t acc = acc_t(-0.0);  // -0 + v == v for every v, -0 included
    bool hit = false;
    for (int64_t i = 0; i < s.p.h.kernel; ++i) {
      const int64_t oh = pool::covering_window(q.y, i, s.oH, s.p.h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < s.p.w.kernel; ++j) {
        const int64_t ow = pool::covering_window(q.x, j, s.oW, s.p.w);
        if (ow < 0) continue;
        const int64_t o = cuda::offset<channels_last>(q.n, q.c, oh, ow, s.C, s.oH, s.oW);
        if (switches[o] == i * s.p.w.kernel + j) {
          acc += static_cast<acc_t>(x[o]);
          hit = true;
        }
      }
    }
    y[idx] = hit ? static_cast<scalar_t>(acc) : scalar_t(0);
  }
}

at::Tensor max_unpool2d_with_switches_cuda(const at::Tensor& self, const at::Tensor& switches,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           at::IntArrayRef output_size) {
  constexpr const char* op = "max_unpool2d_with_switches";
  const PoolShape s = pool::check_unpool_args(op, self, switches, kernel_size, stride,
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
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      max_unpool_switches_kernel<scalar_t, true>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              x.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
              y.mutable_data_ptr<scalar_t>(), total, s);
    } else {
      max_unpool_switches_kernel<scalar_t, false>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              x.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
              y.mutable_data_ptr<scalar_t>(), total, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("max_unpool2d_with_switches", &deconvnet_ext::max_unpool2d_with_switches_cuda);
}
