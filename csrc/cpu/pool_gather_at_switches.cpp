// CPU kernel of deconvnet_ext::gather_at_switches: out[p] = self[position of
// switches[p]] (0 where the switch selects nothing). The unpool's backward and
// the transpose of the unpool; its own backward is the unpool. Decoding goes
// through pool::switch_position, so a bad switch never reads out of bounds.
// Paths: the portable loop over pool::GatherElement (csrc/common/pool_elements.h,
// the function the CUDA kernel runs; cpu::portable_loops()), and the fast
// paths (NCHW rows with a 2x2/stride 2 float32 AVX2 loop, channels_last).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/pool_checks.h"
#include "common/pool_elements.h"
#include "common/pool_geometry.h"
#include "cpu/cpu_features.h"
#include "cpu/element_loop.h"
#include "cpu/pool_hugepages.h"

#if DECONVNET_EXT_X86_AVX2
#include <immintrin.h>
#endif

namespace deconvnet_ext {
namespace {

using pool::PoolShape;

#if DECONVNET_EXT_X86_AVX2
// Even / odd columns come out of _mm256_shuffle_ps in lane order
// [0,2,8,10 | 4,6,12,14]; this puts them in order.
DECONVNET_EXT_TARGET_AVX2 inline __m256 in_order(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}

// All bits of the lanes whose switch equals t.
DECONVNET_EXT_TARGET_AVX2 inline __m256 switch_is(__m256i s, int t) {
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(s, _mm256_set1_epi32(t)));
}

// ---- 2x2, stride 2, float32: 8 outputs per step from two rows of self; the
// four taps of each window, then the one its switch names (0 if none does).
// Returns outputs done (a multiple of 8); the caller finishes the row.
DECONVNET_EXT_TARGET_AVX2 int64_t gather2x2_row_avx2(const float* r0, const float* r1,
                                                     const uint8_t* sw_row, int64_t n,
                                                     float* out_row) {
  int64_t ow = 0;
  for (; ow + 8 <= n; ow += 8) {
    const __m256 a0 = _mm256_loadu_ps(r0 + 2 * ow), a1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
    const __m256 b0 = _mm256_loadu_ps(r1 + 2 * ow), b1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
    const __m256 t00 = in_order(_mm256_shuffle_ps(a0, a1, 0x88));
    const __m256 t01 = in_order(_mm256_shuffle_ps(a0, a1, 0xDD));
    const __m256 t10 = in_order(_mm256_shuffle_ps(b0, b1, 0x88));
    const __m256 t11 = in_order(_mm256_shuffle_ps(b0, b1, 0xDD));
    const __m256i s = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sw_row + ow)));
    // At most one mask is set per lane: OR of the ANDs selects it (bits kept).
    const __m256 v = _mm256_or_ps(
        _mm256_or_ps(_mm256_and_ps(t00, switch_is(s, 0)), _mm256_and_ps(t01, switch_is(s, 1))),
        _mm256_or_ps(_mm256_and_ps(t10, switch_is(s, 2)), _mm256_and_ps(t11, switch_is(s, 3))));
    _mm256_storeu_ps(out_row + ow, v);
  }
  return ow;
}
#endif

template <typename scalar_t>
void gather_nchw(const scalar_t* y, const uint8_t* sw, scalar_t* out, const PoolShape& s) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(s.oW, 1));
  const pool::Axis &ah = s.p.h, &aw = s.p.w;
  [[maybe_unused]] const bool fast2x2 = cpu::has_avx2_fma() && ah.kernel == 2 && aw.kernel == 2 &&
                       ah.stride == 2 && aw.stride == 2 && ah.padding == 0 &&
                       aw.padding == 0 && ah.dilation == 1 && aw.dilation == 1;
  at::parallel_for(0, s.N * s.C * s.oH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / s.oH, oh = r % s.oH;
      const scalar_t* y_plane = y + plane * s.H * s.W;
      int64_t ow = 0;
#if DECONVNET_EXT_X86_AVX2
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (fast2x2 && 2 * oh + 1 < s.H) {
          ow = gather2x2_row_avx2(y_plane + 2 * oh * s.W, y_plane + (2 * oh + 1) * s.W,
                                  sw + r * s.oW, std::min(s.oW, s.W / 2), out + r * s.oW);
        }
      }
#endif
      for (; ow < s.oW; ++ow) {
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
                          const PoolShape& s) {
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
  const PoolShape s =
      pool::check_gather_args(op, self, switches, kernel_size, stride, padding, dilation);
  const c10::MemoryFormat fmt = pool::working_format(self);
  at::Tensor out = at::empty(pool::map_shape(s, s.oH, s.oW), self.options().memory_format(fmt));
  if (out.numel() == 0) {
    return out;
  }
  cpu::advise_huge_pages(out.data_ptr(), out.nbytes());
  const at::Tensor y = self.contiguous(fmt);
  const at::Tensor sw = switches.contiguous(fmt);
  const bool portable = cpu::portable_loops();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), op, [&] {
    if (portable) {
      const scalar_t* in = y.const_data_ptr<scalar_t>();
      const uint8_t* w = sw.const_data_ptr<uint8_t>();
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      if (fmt == c10::MemoryFormat::ChannelsLast) {
        cpu::for_each_element(pool::GatherElement<scalar_t, true>{in, w, o, s}, out.numel());
      } else {
        cpu::for_each_element(pool::GatherElement<scalar_t, false>{in, w, o, s}, out.numel());
      }
    } else if (fmt == c10::MemoryFormat::ChannelsLast) {
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
