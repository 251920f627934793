// CPU kernel of deconvnet_ext::gather_at_switches: out[p] = self[position of
// switches[p]] (0 where the switch selects nothing). The unpool's backward and
// the transpose of the unpool; its own backward is the unpool. Decoding goes
// through pool::switch_position, so a bad switch never reads out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/pool_checks.h"
#include "common/pool_geometry.h"
#include "cpu/pool_hugepages.h"

namespace deconvnet_ext {
namespace {

using pool::UnpoolShape;

template <typename scalar_t>
void gather_nchw(const scalar_t* y, const uint8_t* sw, scalar_t* out, const UnpoolShape& s) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(s.oW, 1));
  at::parallel_for(0, s.N * s.C * s.oH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / s.oH, oh = r % s.oH;
      const scalar_t* y_plane = y + plane * s.H * s.W;
      for (int64_t ow = 0; ow < s.oW; ++ow) {
        int64_t h, w;
        const int64_t o = r * s.oW + ow;
        out[o] = pool::switch_position(sw[o], oh, ow, s.p.h, s.p.w, s.H, s.W, &h, &w)
                     ? y_plane[h * s.W + w]
                     : scalar_t(0);
      }
    }
  });
}

template <typename scalar_t>
void gather_channels_last(const scalar_t* y, const uint8_t* sw, scalar_t* out,
                          const UnpoolShape& s) {
  const int64_t C = s.C;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, s.N * s.oH * s.oW, grain, [&](int64_t begin, int64_t end) {
    for (int64_t pix = begin; pix < end; ++pix) {
      const int64_t ow = pix % s.oW, oh = (pix / s.oW) % s.oH, n = pix / (s.oW * s.oH);
      const scalar_t* image = y + n * s.H * s.W * C;
      for (int64_t c = 0; c < C; ++c) {
        int64_t h, w;
        const int64_t o = pix * C + c;
        out[o] = pool::switch_position(sw[o], oh, ow, s.p.h, s.p.w, s.H, s.W, &h, &w)
                     ? image[(h * s.W + w) * C + c]
                     : scalar_t(0);
      }
    }
  });
}

at::Tensor gather_at_switches_cpu(const at::Tensor& self, const at::Tensor& switches,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  constexpr const char* op = "gather_at_switches";
  const UnpoolShape s =
      pool::check_gather_args(op, self, switches, kernel_size, stride, padding, dilation);
  const c10::MemoryFormat fmt = pool::working_format(self);
  at::Tensor out = at::empty(pool::map_shape(s, s.oH, s.oW), self.options().memory_format(fmt));
  if (out.numel() == 0) {
    return out;
  }
  cpu::advise_huge_pages(out.data_ptr(), out.nbytes());
  const at::Tensor y = self.contiguous(fmt);
  const at::Tensor sw = switches.contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), op, [&] {
    if (fmt == c10::MemoryFormat::ChannelsLast) {
      gather_channels_last(y.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
                           out.mutable_data_ptr<scalar_t>(), s);
    } else {
      gather_nchw(y.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
                  out.mutable_data_ptr<scalar_t>(), s);
    }
  });
  return out;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CPU, m) {
  m.impl("gather_at_switches", &deconvnet_ext::gather_at_switches_cpu);
}
