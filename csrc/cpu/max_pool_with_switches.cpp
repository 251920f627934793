// CPU kernel of deconvnet_ext::max_pool2d_with_switches: F.max_pool2d's output
// bit for bit, plus uint8 switches (argmax position inside the window).
//
// Paths: the portable loop over pool::PoolElement (csrc/common/pool_elements.h,
// the function the CUDA kernel runs; cpu::portable_loops()), and the fast
// paths: NCHW rows (general), NCHW 2x2/stride 2 float32 with AVX2 (DeconvNet's
// pooling), channels_last with the channel loop innermost. Every path uses the
// window geometry and the argmax rule of csrc/common/; the tests check the
// fast paths against the portable one bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "common/pool_checks.h"
#include "common/pool_elements.h"
#include "common/pool_geometry.h"
#include "cpu/max_pool_channels_last.h"
#include "cpu/element_loop.h"
#include "cpu/max_pool_nchw.h"
#include "cpu/pool_hugepages.h"

namespace deconvnet_ext {
namespace {

using pool::PoolParams;
using pool::PoolShape;
using cpu_pool::pool_channels_last;
using cpu_pool::pool_nchw;

std::tuple<at::Tensor, at::Tensor> max_pool2d_with_switches_cpu(
    const at::Tensor& self, at::IntArrayRef kernel_size, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  constexpr const char* op = "max_pool2d_with_switches";
  const PoolShape s = pool::check_pool_args(op, self, kernel_size, stride, padding, dilation,
                                            ceil_mode);
  const PoolParams& p = s.p;
  const int64_t N = s.N, C = s.C, H = s.H, W = s.W, oH = s.oH, oW = s.oW;
  const c10::MemoryFormat fmt = pool::working_format(self);
  // 3-d input gets a 3-d output allocated as such (not a view of a 4-d one).
  const std::vector<int64_t> shape = pool::map_shape(s, oH, oW);
  at::Tensor out = at::empty(shape, self.options().memory_format(fmt));
  at::Tensor sw = at::empty(shape, self.options().dtype(at::kByte).memory_format(fmt));
  if (out.numel() == 0) {
    return {out, sw};
  }
  cpu::advise_huge_pages(out.data_ptr(), out.nbytes());
  cpu::advise_huge_pages(sw.data_ptr(), sw.nbytes());
  const at::Tensor x = self.contiguous(fmt);
  const bool portable = cpu::portable_loops();
  const int64_t window = p.h.kernel * p.w.kernel;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    if (portable) {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      uint8_t* w = sw.mutable_data_ptr<uint8_t>();
      if (fmt == c10::MemoryFormat::ChannelsLast) {
        cpu::for_each_element(pool::PoolElement<scalar_t, true>{in, o, w, s}, out.numel(), window);
      } else {
        cpu::for_each_element(pool::PoolElement<scalar_t, false>{in, o, w, s}, out.numel(), window);
      }
    } else if (fmt == c10::MemoryFormat::ChannelsLast) {
      pool_channels_last(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                         sw.mutable_data_ptr<uint8_t>(), N, C, H, W, oH, oW, p);
    } else {
      pool_nchw(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                sw.mutable_data_ptr<uint8_t>(), N * C, H, W, oH, oW, p);
    }
  });
  return {out, sw};
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CPU, m) {
  m.impl("max_pool2d_with_switches", &deconvnet_ext::max_pool2d_with_switches_cpu);
}
