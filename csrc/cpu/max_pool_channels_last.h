// channels_last loops of the CPU max pool with switches (included by
// max_pool_with_switches.cpp only): one output pixel at a time, channels
// innermost; float32 in AVX2 intrinsics, other dtypes through a blocked loop
// the compiler vectorizes. Element logic from csrc/common/.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/argmax_rule.h"
#include "common/pool_checks.h"
#include "common/pool_geometry.h"
#include "cpu/cpu_features.h"

#if DECONVNET_EXT_X86_AVX2
#include <immintrin.h>
#endif

namespace deconvnet_ext {
namespace cpu_pool {
namespace {

using pool::PoolParams;
using pool::TapRange;

// ---- channels_last: one output pixel at a time, channels innermost, in
// blocks so the running max and tap live in small arrays the compiler
// vectorizes (compare + select, the same rule as the scalar path).
constexpr int64_t kChannelBlock = 64;

template <typename scalar_t>
inline __attribute__((always_inline)) void pool_pixels_cl(const scalar_t* in, scalar_t* out,
                                                          uint8_t* sw, int64_t begin,
                                                          int64_t end, int64_t C, int64_t H,
                                                          int64_t W, int64_t oH, int64_t oW,
                                                          const PoolParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t best[kChannelBlock];
  int32_t tap[kChannelBlock];
  for (int64_t pix = begin; pix < end; ++pix) {
    const int64_t ow = pix % oW, oh = (pix / oW) % oH, n = pix / (oW * oH);
    const TapRange ti = pool::window_taps(oh, H, p.h);
    const TapRange tj = pool::window_taps(ow, W, p.w);
    const scalar_t* image = in + n * H * W * C;
    for (int64_t c0 = 0; c0 < C; c0 += kChannelBlock) {
      const int64_t cn = std::min(kChannelBlock, C - c0);
      const int32_t first = static_cast<int32_t>(ti.begin * p.w.kernel + tj.begin);
      for (int64_t c = 0; c < cn; ++c) {
        best[c] = pool::argmax_initial<acc_t>();
        tap[c] = first;
      }
      for (int64_t i = ti.begin; i < ti.end; ++i) {
        const int64_t h = pool::tap_position(oh, i, p.h);
        for (int64_t j = tj.begin; j < tj.end; ++j) {
          const scalar_t* src = image + (h * W + pool::tap_position(ow, j, p.w)) * C + c0;
          const int32_t t = static_cast<int32_t>(i * p.w.kernel + j);
          for (int64_t c = 0; c < cn; ++c) {
            const acc_t v = static_cast<acc_t>(src[c]);
            const bool take = pool::argmax_takes(v, best[c]);
            best[c] = take ? v : best[c];
            tap[c] = take ? t : tap[c];
          }
        }
      }
      scalar_t* dst = out + pix * C + c0;
      uint8_t* sdst = sw + pix * C + c0;
      for (int64_t c = 0; c < cn; ++c) {
        dst[c] = static_cast<scalar_t>(best[c]);
        sdst[c] = static_cast<uint8_t>(tap[c]);
      }
    }
  }
}

// Channels [c0, C) of one channels_last output pixel, scalar.
inline void pool_pixels_cl_tail(const float* image, float* out_pix, uint8_t* sw_pix, int64_t c0,
                                int64_t C, int64_t H, int64_t W, int64_t oh, int64_t ow,
                                TapRange ti, TapRange tj, const PoolParams& p) {
  (void)H;
  for (int64_t c = c0; c < C; ++c) {
    float best = pool::argmax_initial<float>();
    int64_t best_tap = ti.begin * p.w.kernel + tj.begin;
    for (int64_t i = ti.begin; i < ti.end; ++i) {
      for (int64_t j = tj.begin; j < tj.end; ++j) {
        const float v = image[(pool::tap_position(oh, i, p.h) * W + pool::tap_position(ow, j, p.w)) * C + c];
        if (pool::argmax_takes(v, best)) {
          best = v;
          best_tap = i * p.w.kernel + j;
        }
      }
    }
    out_pix[c] = best;
    sw_pix[c] = static_cast<uint8_t>(best_tap);
  }
}

#if DECONVNET_EXT_X86_AVX2
template <typename scalar_t>
DECONVNET_EXT_TARGET_AVX2 void pool_pixels_cl_avx2(const scalar_t* in, scalar_t* out,
                                                   uint8_t* sw, int64_t begin, int64_t end,
                                                   int64_t C, int64_t H, int64_t W, int64_t oH,
                                                   int64_t oW, const PoolParams& p) {
  pool_pixels_cl(in, out, sw, begin, end, C, H, W, oH, oW, p);
}
#endif

#if DECONVNET_EXT_X86_AVX2
// float32 channels_last with AVX2: 16 channels per step (two vectors), the
// taps of the window in order with the compare + blend rule; scalar tail.
inline DECONVNET_EXT_TARGET_AVX2 void pool_pixels_cl_float_avx2(const float* in, float* out,
                                                         uint8_t* sw, int64_t begin, int64_t end,
                                                         int64_t C, int64_t H, int64_t W,
                                                         int64_t oH, int64_t oW,
                                                         const PoolParams& p) {
  const __m256 minus_inf = _mm256_set1_ps(pool::argmax_initial<float>());
  for (int64_t pix = begin; pix < end; ++pix) {
    const int64_t ow = pix % oW, oh = (pix / oW) % oH, n = pix / (oW * oH);
    const TapRange ti = pool::window_taps(oh, H, p.h);
    const TapRange tj = pool::window_taps(ow, W, p.w);
    const float* image = in + n * H * W * C;
    const __m256 first = _mm256_set1_ps(static_cast<float>(ti.begin * p.w.kernel + tj.begin));
    int64_t c = 0;
    for (; c + 16 <= C; c += 16) {
      __m256 best0 = minus_inf, best1 = minus_inf, tap0 = first, tap1 = first;
      for (int64_t i = ti.begin; i < ti.end; ++i) {
        const float* row = image + pool::tap_position(oh, i, p.h) * W * C + c;
        for (int64_t j = tj.begin; j < tj.end; ++j) {
          const float* src = row + pool::tap_position(ow, j, p.w) * C;
          const __m256 t = _mm256_set1_ps(static_cast<float>(i * p.w.kernel + j));
          const __m256 v0 = _mm256_loadu_ps(src), v1 = _mm256_loadu_ps(src + 8);
          const __m256 take0 = _mm256_or_ps(_mm256_cmp_ps(v0, best0, _CMP_GT_OQ),
                                            _mm256_cmp_ps(v0, v0, _CMP_UNORD_Q));
          const __m256 take1 = _mm256_or_ps(_mm256_cmp_ps(v1, best1, _CMP_GT_OQ),
                                            _mm256_cmp_ps(v1, v1, _CMP_UNORD_Q));
          best0 = _mm256_blendv_ps(best0, v0, take0);
          best1 = _mm256_blendv_ps(best1, v1, take1);
          tap0 = _mm256_blendv_ps(tap0, t, take0);
          tap1 = _mm256_blendv_ps(tap1, t, take1);
        }
      }
      _mm256_storeu_ps(out + pix * C + c, best0);
      _mm256_storeu_ps(out + pix * C + c + 8, best1);
      // Taps 0..255 as int32 -> int16 -> uint8 (saturation never triggers).
      const __m256i t0 = _mm256_cvtps_epi32(tap0), t1 = _mm256_cvtps_epi32(tap1);
      const __m128i lo = _mm_packs_epi32(_mm256_castsi256_si128(t0), _mm256_extracti128_si256(t0, 1));
      const __m128i hi = _mm_packs_epi32(_mm256_castsi256_si128(t1), _mm256_extracti128_si256(t1, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(sw + pix * C + c), _mm_packus_epi16(lo, hi));
    }
    if (c < C) {
      // Remaining channels: the generic loop on this one pixel, offset by c.
      pool_pixels_cl_tail(image, out + pix * C, sw + pix * C, c, C, H, W, oh, ow, ti, tj, p);
    }
  }
}

#endif

template <typename scalar_t>
void pool_pixels_cl_default(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t begin,
                            int64_t end, int64_t C, int64_t H, int64_t W, int64_t oH, int64_t oW,
                            const PoolParams& p) {
  pool_pixels_cl(in, out, sw, begin, end, C, H, W, oH, oW, p);
}

template <typename scalar_t>
void pool_channels_last(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t N, int64_t C,
                        int64_t H, int64_t W, int64_t oH, int64_t oW, const PoolParams& p) {
  const int64_t pixels = N * oH * oW;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  bool avx2 = false;
#if DECONVNET_EXT_X86_AVX2
  avx2 = cpu::has_avx2_fma();
#endif
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
#if DECONVNET_EXT_X86_AVX2
    if (avx2) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        pool_pixels_cl_float_avx2(in, out, sw, begin, end, C, H, W, oH, oW, p);
      } else {
        pool_pixels_cl_avx2(in, out, sw, begin, end, C, H, W, oH, oW, p);
      }
      return;
    }
#endif
    pool_pixels_cl_default(in, out, sw, begin, end, C, H, W, oH, oW, p);
  });
}

}  // namespace
}  // namespace cpu_pool
}  // namespace deconvnet_ext
