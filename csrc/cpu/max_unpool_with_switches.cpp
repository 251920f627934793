// CPU kernel of deconvnet_ext::max_unpool2d_with_switches: the exact adjoint
// of the pooling's selection, y[p] = sum of self where the switch points at p.
//
// Computed as a GATHER: every output location visits the windows that cover it
// (pool::covering_window) in a fixed tap order and adds the values whose switch
// names it. Each output is written once (no zero-fill pass, no scatter, no
// atomics), so the result is deterministic and a bad switch selects nothing.
// Paths: the portable loop over pool::UnpoolElement (csrc/common/pool_elements.h,
// the function the CUDA kernel runs; cpu::portable_loops()), and the fast
// paths: NCHW general, NCHW disjoint windows (DeconvNet's stride >= kernel),
// NCHW 2x2/stride 2 float32 with AVX2, channels_last with channels innermost.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

using pool::PoolParams;
using pool::PoolShape;

// covering[x * k + t] = the window whose tap t covers coordinate x, or -1.
std::vector<int64_t> covering_table(int64_t extent, int64_t pooled, const pool::Axis& a) {
  std::vector<int64_t> table(extent * a.kernel);
  for (int64_t x = 0; x < extent; ++x) {
    for (int64_t t = 0; t < a.kernel; ++t) {
      table[x * a.kernel + t] = pool::covering_window(x, t, pooled, a);
    }
  }
  return table;
}

// ---- NCHW, any geometry: one output row h of one plane.
template <typename scalar_t>
void unpool_row_general(const scalar_t* x_plane, const uint8_t* sw_plane, int64_t h,
                        const int64_t* cols, const PoolShape& s, scalar_t* y_row) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t kH = s.p.h.kernel, kW = s.p.w.kernel;
  int64_t rows[pool::kMaxWindow];
  for (int64_t i = 0; i < kH; ++i) rows[i] = pool::covering_window(h, i, s.oH, s.p.h);
  for (int64_t w = 0; w < s.W; ++w) {
    acc_t acc = acc_t(-0.0);  // -0 + v == v for every v, -0 included
    bool hit = false;
    for (int64_t i = 0; i < kH; ++i) {
      if (rows[i] < 0) continue;
      for (int64_t j = 0; j < kW; ++j) {
        const int64_t ow = cols[w * kW + j];
        if (ow < 0) continue;
        const int64_t o = rows[i] * s.oW + ow;
        if (sw_plane[o] == i * kW + j) {
          acc += static_cast<acc_t>(x_plane[o]);
          hit = true;
        }
      }
    }
    y_row[w] = hit ? static_cast<scalar_t>(acc) : scalar_t(0);
  }
}

// ---- NCHW, disjoint windows: at most one window covers each location, so
// the output is a select. win[w] / tap[w]: the covering window and its tap.
template <typename scalar_t>
inline __attribute__((always_inline)) void unpool_row_disjoint(
    const scalar_t* x_row, const uint8_t* sw_row, int64_t i, const int64_t* win,
    const int64_t* tap, int64_t w0, int64_t W, int64_t kW, scalar_t* y_row) {
  for (int64_t w = w0; w < W; ++w) {
    const int64_t ow = win[w];
    y_row[w] = (ow >= 0 && sw_row[ow] == i * kW + tap[w]) ? x_row[ow] : scalar_t(0);
  }
}

#if DECONVNET_EXT_X86_AVX2
// ---- 2x2, stride 2, float32: 8 windows -> 16 outputs of input-row tap i.
// y[2 ow + j] = switch == 2 i + j ? x : +0 (an AND with the compare mask keeps
// x's bits exactly, -0 and NaN included). Returns windows done (multiple of 8).
DECONVNET_EXT_TARGET_AVX2 int64_t unpool2x2_row_avx2(const float* x_row, const uint8_t* sw_row,
                                                     int64_t i, int64_t windows, float* y_row) {
  const __m256i want0 = _mm256_set1_epi32(static_cast<int>(2 * i));
  const __m256i want1 = _mm256_set1_epi32(static_cast<int>(2 * i + 1));
  // The output is written once and not read back here: stream it past the
  // caches (no read-for-ownership) when the row is 32-byte aligned.
  const bool stream = reinterpret_cast<std::uintptr_t>(y_row) % 32 == 0;
  int64_t ow = 0;
  for (; ow + 8 <= windows; ow += 8) {
    const __m256 v = _mm256_loadu_ps(x_row + ow);
    const __m256i sv = _mm256_cvtepu8_epi32(
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(sw_row + ow)));
    const __m256 even = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(sv, want0)));
    const __m256 odd = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_cmpeq_epi32(sv, want1)));
    const __m256 lo = _mm256_unpacklo_ps(even, odd);  // outputs 0-3 | 8-11
    const __m256 hi = _mm256_unpackhi_ps(even, odd);  // outputs 4-7 | 12-15
    if (stream) {
      _mm256_stream_ps(y_row + 2 * ow, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_stream_ps(y_row + 2 * ow + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    } else {
      _mm256_storeu_ps(y_row + 2 * ow, _mm256_permute2f128_ps(lo, hi, 0x20));
      _mm256_storeu_ps(y_row + 2 * ow + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
  }
  return ow;
}
#endif

template <typename scalar_t>
void unpool_nchw(const scalar_t* x, const uint8_t* sw, scalar_t* y, const PoolShape& s) {
  const int64_t planes = s.N * s.C, H = s.H, W = s.W, oH = s.oH, oW = s.oW;
  const int64_t kW = s.p.w.kernel;
  const std::vector<int64_t> cols = covering_table(W, oW, s.p.w);
  const bool disjoint = pool::windows_disjoint(s.p.h) && pool::windows_disjoint(s.p.w);
  // Disjoint: the one covering window / tap of each column.
  std::vector<int64_t> win(W, -1), tap(W, 0);
  for (int64_t w = 0; w < W; ++w) {
    for (int64_t j = 0; j < kW; ++j) {
      if (cols[w * kW + j] >= 0) {
        win[w] = cols[w * kW + j];
        tap[w] = j;
      }
    }
  }
  bool fast = false;
#if DECONVNET_EXT_X86_AVX2
  fast = std::is_same_v<scalar_t, float> && cpu::has_avx2_fma() && s.p.h.kernel == 2 &&
         kW == 2 && s.p.h.stride == 2 && s.p.w.stride == 2 && s.p.h.padding == 0 &&
         s.p.w.padding == 0 && s.p.h.dilation == 1 && s.p.w.dilation == 1;
#endif
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(W, 1));
  at::parallel_for(0, planes * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / H, h = r % H;
      const scalar_t* x_plane = x + plane * oH * oW;
      const uint8_t* sw_plane = sw + plane * oH * oW;
      scalar_t* y_row = y + r * W;
      if (!disjoint) {
        unpool_row_general(x_plane, sw_plane, h, cols.data(), s, y_row);
        continue;
      }
      int64_t oh = -1, i = 0;
      for (int64_t t = 0; t < s.p.h.kernel && oh < 0; ++t) {
        oh = pool::covering_window(h, t, oH, s.p.h);
        i = t;
      }
      if (oh < 0) {
        std::fill(y_row, y_row + W, scalar_t(0));
        continue;
      }
      int64_t w0 = 0;
#if DECONVNET_EXT_X86_AVX2
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (fast) {
          w0 = 2 * unpool2x2_row_avx2(x_plane + oh * oW, sw_plane + oh * oW, i,
                                      std::min(oW, W / 2), y_row);
        }
      }
#endif
      unpool_row_disjoint(x_plane + oh * oW, sw_plane + oh * oW, i, win.data(), tap.data(),
                          w0, W, kW, y_row);
    }
#if DECONVNET_EXT_X86_AVX2
    if (fast) {
      _mm_sfence();  // order the streaming stores before the result is used
    }
#endif
  });
}

// ---- channels_last: one output pixel at a time, channels innermost.
constexpr int64_t kChannelBlock = 64;

template <typename scalar_t>
inline __attribute__((always_inline)) void unpool_pixels_cl(const scalar_t* x, const uint8_t* sw,
                                                            scalar_t* y, int64_t begin,
                                                            int64_t end, const PoolShape& s,
                                                            const int64_t* cols) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = s.C, kH = s.p.h.kernel, kW = s.p.w.kernel;
  acc_t acc[kChannelBlock];
  uint8_t hit[kChannelBlock];
  int64_t rows[pool::kMaxWindow];
  const bool disjoint = pool::windows_disjoint(s.p.h) && pool::windows_disjoint(s.p.w);
  for (int64_t pix = begin; pix < end; ++pix) {
    const int64_t w = pix % s.W, h = (pix / s.W) % s.H, n = pix / (s.W * s.H);
    for (int64_t i = 0; i < kH; ++i) rows[i] = pool::covering_window(h, i, s.oH, s.p.h);
    if (disjoint) {
      // At most one window covers (h, w): a select per channel.
      int64_t oh = -1, ow = -1, t = 0;
      for (int64_t i = 0; i < kH; ++i) {
        for (int64_t j = 0; j < kW; ++j) {
          if (rows[i] >= 0 && cols[w * kW + j] >= 0) {
            oh = rows[i];
            ow = cols[w * kW + j];
            t = i * kW + j;
          }
        }
      }
      scalar_t* dst = y + pix * C;
      if (oh < 0) {
        std::fill(dst, dst + C, scalar_t(0));
        continue;
      }
      const int64_t o = ((n * s.oH + oh) * s.oW + ow) * C;
      const uint8_t tap = static_cast<uint8_t>(t);
      for (int64_t c = 0; c < C; ++c) {
        dst[c] = sw[o + c] == tap ? x[o + c] : scalar_t(0);
      }
      continue;
    }
    for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
      const int64_t cn = std::min(kChannelBlock, C - c0);
      for (int64_t c = 0; c < cn; ++c) {
        acc[c] = acc_t(-0.0);
        hit[c] = 0;
      }
      for (int64_t i = 0; i < kH; ++i) {
        if (rows[i] < 0) continue;
        for (int64_t j = 0; j < kW; ++j) {
          const int64_t ow = cols[w * kW + j];
          if (ow < 0) continue;
          const int64_t o = ((n * s.oH + rows[i]) * s.oW + ow) * C + c0;
          const uint8_t t = static_cast<uint8_t>(i * kW + j);
          for (int64_t c = 0; c < cn; ++c) {
            const bool take = sw[o + c] == t;
            acc[c] += take ? static_cast<acc_t>(x[o + c]) : acc_t(-0.0);
            hit[c] |= take;
          }
        }
      }
      scalar_t* dst = y + pix * C + c0;
      for (int64_t c = 0; c < cn; ++c) {
        dst[c] = hit[c] ? static_cast<scalar_t>(acc[c]) : scalar_t(0);
      }
    }
  }
}

#if DECONVNET_EXT_X86_AVX2
template <typename scalar_t>
DECONVNET_EXT_TARGET_AVX2 void unpool_pixels_cl_avx2(const scalar_t* x, const uint8_t* sw,
                                                     scalar_t* y, int64_t begin, int64_t end,
                                                     const PoolShape& s, const int64_t* cols) {
  unpool_pixels_cl(x, sw, y, begin, end, s, cols);
}
#endif

template <typename scalar_t>
void unpool_pixels_cl_default(const scalar_t* x, const uint8_t* sw, scalar_t* y, int64_t begin,
                              int64_t end, const PoolShape& s, const int64_t* cols) {
  unpool_pixels_cl(x, sw, y, begin, end, s, cols);
}

template <typename scalar_t>
void unpool_channels_last(const scalar_t* x, const uint8_t* sw, scalar_t* y,
                          const PoolShape& s) {
  const std::vector<int64_t> cols = covering_table(s.W, s.oW, s.p.w);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(s.C, 1));
  bool avx2 = false;
#if DECONVNET_EXT_X86_AVX2
  avx2 = cpu::has_avx2_fma();
#endif
  at::parallel_for(0, s.N * s.H * s.W, grain, [&](int64_t begin, int64_t end) {
#if DECONVNET_EXT_X86_AVX2
    if (avx2) {
      unpool_pixels_cl_avx2(x, sw, y, begin, end, s, cols.data());
      return;
    }
#endif
    unpool_pixels_cl_default(x, sw, y, begin, end, s, cols.data());
  });
}

at::Tensor max_unpool2d_with_switches_cpu(const at::Tensor& self, const at::Tensor& switches,
                                          at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                          at::IntArrayRef padding, at::IntArrayRef dilation,
                                          at::IntArrayRef output_size) {
  constexpr const char* op = "max_unpool2d_with_switches";
  const PoolShape s = pool::check_unpool_args(op, self, switches, kernel_size, stride,
                                                padding, dilation, output_size);
  const c10::MemoryFormat fmt = pool::working_format(self);
  at::Tensor y = at::empty(pool::map_shape(s, s.H, s.W), self.options().memory_format(fmt));
  if (y.numel() == 0) {
    return y;
  }
  cpu::advise_huge_pages(y.data_ptr(), y.nbytes());
  const at::Tensor x = self.contiguous(fmt);
  const at::Tensor sw = switches.contiguous(fmt);
  const bool portable = cpu::portable_loops();
  const int64_t window = s.p.h.kernel * s.p.w.kernel;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), op, [&] {
    if (portable) {
      const scalar_t* in = x.const_data_ptr<scalar_t>();
      const uint8_t* w = sw.const_data_ptr<uint8_t>();
      scalar_t* o = y.mutable_data_ptr<scalar_t>();
      if (fmt == c10::MemoryFormat::ChannelsLast) {
        cpu::for_each_element(pool::UnpoolElement<scalar_t, true>{in, w, o, s}, y.numel(), window);
      } else {
        cpu::for_each_element(pool::UnpoolElement<scalar_t, false>{in, w, o, s}, y.numel(), window);
      }
    } else if (fmt == c10::MemoryFormat::ChannelsLast) {
      unpool_channels_last(x.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
                           y.mutable_data_ptr<scalar_t>(), s);
    } else {
      unpool_nchw(x.const_data_ptr<scalar_t>(), sw.const_data_ptr<uint8_t>(),
                  y.mutable_data_ptr<scalar_t>(), s);
    }
  });
  return y;
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, CPU, m) {
  m.impl("max_unpool2d_with_switches", &deconvnet_ext::max_unpool2d_with_switches_cpu);
}
