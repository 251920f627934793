// CUDA kernel of deconvnet_ext::max_pool2d_with_switches: one thread per
// output, the window geometry and argmax rule of csrc/common/ (the CPU loops
// use the same functions), NCHW or channels_last, on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "common/argmax_rule.h"
#include "common/pool_checks.h"
#include "common/pool_geometry.h"
#include "cuda/pool_launch.cuh"

namespace deconvnet_ext {
namespace {

using pool::PoolParams;
using pool::PoolShape;
using pool::TapRange;

template <typename scalar_t, bool channels_last>
__global__ void max_pool_switches_kernel(const scalar_t* __restrict__ in,
                                         scalar_t* __restrict__ out,
                                         uint8_t* __restrict__ switches, int64_t total,
                                         int64_t C, int64_t H, int64_t W, int64_t oH,
                                         int64_t oW, PoolParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const cuda::Coord o = cuda::decompose<channels_last>(idx, C, oH, oW);
    const TapRange ti = pool::window_taps(o.y, H, p.h);
    const TapRange tj = pool::window_taps(o.x, W, p.w);
    acc_t best = pool::argmax_initial<acc_t>();
    int64_t best_tap = ti.begin * p.w.kernel + tj.begin;
    for (int64_t i = ti.begin; i < ti.end; ++i) {
      const int64_t h = pool::tap_position(o.y, i, p.h);
      for (int64_t j = tj.begin; j < tj.end; ++j) {
        const int64_t w = pool::tap_position(o.x, j, p.w);
        const acc_t v = static_cast<acc_t>(in[cuda::offset<channels_last>(o.n, o.c, h, w, C, H, W)]);
        if (pool::argmax_takes(v, best)) {
          best = v;
          best_tap = i * p.w.kernel + j;
        }
      }
    }
    out[idx] = static_cast<scalar_t>(best);
    switches[idx] = static_cast<uint8_t>(best_tap);
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_switches_cuda(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d_with_switches";
  const PoolShape s = pool::check_pool_args(op, self, kernel_size, stride, padding, dilation,
                                            ceil_mode);
  const c10::cuda::CUDAGuard guard(self.device());
  const PoolParams& p = s.p;
  const int64_t C = s.C, H = s.H, W = s.W, oH = s.oH, oW = s.oW;
  const c10::MemoryFormat fmt = pool::working_format(self);
  const std::vector<int64_t> shape = pool::map_shape(s, oH, oW);
  at::Tensor out = at::empty(shape, self.options().memory_format(fmt));
  at::Tensor sw = at::empty(shape, self.options().dtype(at::kByte).memory_format(fmt));
  const int64_t total = out.numel();
  if (total == 0) {
    return {out, sw};
  }
  const at::Tensor x = self.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      max_pool_switches_kernel<scalar_t, true>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
              sw.mutable_data_ptr<uint8_t>(), total, C, H, W, oH, oW, p);
    } else {
      max_pool_switches_kernel<scalar_t, false>
          <<<cuda::blocks_for(total), cuda::kThreads, 0, cuda::current_stream()>>>(
              x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
              sw.mutable_data_ptr<uint8_t>(), total, C, H, W, oH, oW, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, sw};
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("max_pool2d_with_switches", &deconvnet_ext::max_pool2d_with_switches_cuda);
}
