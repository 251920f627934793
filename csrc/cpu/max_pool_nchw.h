// NCHW loops of the CPU max pool with switches (included by
// max_pool_with_switches.cpp only): rows of output; windows clipped by the
// border one at a time, interior windows in blocks (AVX2 intrinsics for
// float32, a plain blocked loop otherwise); DeconvNet's 2x2/stride 2 float32
// case in its own AVX2 loop. Element logic from csrc/common/.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <limits>
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

// ---- NCHW, any geometry: outputs [ow0, ow1) of output row oh of one plane.
template <typename scalar_t>
inline __attribute__((always_inline)) void pool_row_nchw(const scalar_t* plane, int64_t H,
                                                         int64_t W, int64_t oh, int64_t ow0,
                                                         int64_t ow1, const PoolParams& p,
                                                         scalar_t* out_row, uint8_t* sw_row) {
  using acc_t = at::opmath_type<scalar_t>;
  const TapRange ti = pool::window_taps(oh, H, p.h);
  for (int64_t ow = ow0; ow < ow1; ++ow) {
    const TapRange tj = pool::window_taps(ow, W, p.w);
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_tap = ti.begin * p.w.kernel + tj.begin;
    for (int64_t i = ti.begin; i < ti.end; ++i) {
      const scalar_t* row = plane + pool::tap_position(oh, i, p.h) * W;
      for (int64_t j = tj.begin; j < tj.end; ++j) {
        const acc_t v = static_cast<acc_t>(row[pool::tap_position(ow, j, p.w)]);
        if (pool::argmax_takes(v, best)) {
          best = v;
          best_tap = i * p.w.kernel + j;
        }
      }
    }
    out_row[ow] = static_cast<scalar_t>(best);
    sw_row[ow] = static_cast<uint8_t>(best_tap);
  }
}

#if DECONVNET_EXT_X86_AVX2
// ---- NCHW 2x2, stride 2, no padding, dilation 1, float32: 8 outputs per
// step from two input rows. Taps are visited in window order (0,0), (0,1),
// (1,0), (1,1) with the rule "greater or NaN" as a compare + blend, so the
// value and the switch equal the scalar path's bit for bit. Returns how many
// outputs it wrote (a multiple of 8); the caller finishes the row.
inline DECONVNET_EXT_TARGET_AVX2 int64_t pool2x2_row_avx2(const float* r0, const float* r1, int64_t n,
                                                   float* out, uint8_t* sw) {
  const __m256 tap1 = _mm256_set1_ps(1.f), tap2 = _mm256_set1_ps(2.f),
               tap3 = _mm256_set1_ps(3.f);
  int64_t ow = 0;
  for (; ow + 8 <= n; ow += 8) {
    const __m256 a0 = _mm256_loadu_ps(r0 + 2 * ow), a1 = _mm256_loadu_ps(r0 + 2 * ow + 8);
    const __m256 b0 = _mm256_loadu_ps(r1 + 2 * ow), b1 = _mm256_loadu_ps(r1 + 2 * ow + 8);
    // Even / odd columns, in the lane order [0,2,8,10 | 4,6,12,14] (fixed below).
    const __m256 t00 = _mm256_shuffle_ps(a0, a1, 0x88), t01 = _mm256_shuffle_ps(a0, a1, 0xDD);
    const __m256 t10 = _mm256_shuffle_ps(b0, b1, 0x88), t11 = _mm256_shuffle_ps(b0, b1, 0xDD);
    __m256 best = t00;  // the first tap always wins against -inf (or ties it)
    __m256 tap = _mm256_setzero_ps();
    __m256 take = _mm256_or_ps(_mm256_cmp_ps(t01, best, _CMP_GT_OQ),
                               _mm256_cmp_ps(t01, t01, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, t01, take);
    tap = _mm256_blendv_ps(tap, tap1, take);
    take = _mm256_or_ps(_mm256_cmp_ps(t10, best, _CMP_GT_OQ),
                        _mm256_cmp_ps(t10, t10, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, t10, take);
    tap = _mm256_blendv_ps(tap, tap2, take);
    take = _mm256_or_ps(_mm256_cmp_ps(t11, best, _CMP_GT_OQ),
                        _mm256_cmp_ps(t11, t11, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, t11, take);
    tap = _mm256_blendv_ps(tap, tap3, take);
    best = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), 0xD8));
    tap = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(tap), 0xD8));
    _mm256_storeu_ps(out + ow, best);
    const __m256i t32 = _mm256_cvtps_epi32(tap);
    const __m128i t16 =
        _mm_packs_epi32(_mm256_castsi256_si128(t32), _mm256_extracti128_si256(t32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(sw + ow), _mm_packus_epi16(t16, t16));
  }
  return ow;
}
#endif

// ---- NCHW, any geometry, blocks of kRowBlock interior outputs (windows wholly
// inside the input along W), for the dtypes and CPUs without the AVX2 block:
// the block's running max and tap live in small arrays, and input strides 1
// and 2 are compile-time constants, which helps the compiler.
constexpr int64_t kRowBlock = 16;

template <typename scalar_t, int64_t kStride>
inline __attribute__((always_inline)) void pool_block_nchw(const scalar_t* plane, int64_t W,
                                                           int64_t oh, TapRange ti, int64_t ow0,
                                                           const PoolParams& p,
                                                           scalar_t* out_row, uint8_t* sw_row) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t sW = kStride > 0 ? kStride : p.w.stride;
  acc_t best[kRowBlock];
  int32_t tap[kRowBlock];
  const int32_t first = static_cast<int32_t>(ti.begin * p.w.kernel);
  for (int64_t b = 0; b < kRowBlock; ++b) {
    best[b] = -std::numeric_limits<acc_t>::infinity();
    tap[b] = first;
  }
  for (int64_t i = ti.begin; i < ti.end; ++i) {
    const scalar_t* row = plane + pool::tap_position(oh, i, p.h) * W + ow0 * sW - p.w.padding;
    for (int64_t j = 0; j < p.w.kernel; ++j) {
      const scalar_t* src = row + j * p.w.dilation;
      const int32_t t = static_cast<int32_t>(i * p.w.kernel + j);
      for (int64_t b = 0; b < kRowBlock; ++b) {
        const acc_t v = static_cast<acc_t>(src[b * sW]);
        const bool take = pool::argmax_takes(v, best[b]);
        best[b] = take ? v : best[b];
        tap[b] = take ? t : tap[b];
      }
    }
  }
  for (int64_t b = 0; b < kRowBlock; ++b) {
    out_row[ow0 + b] = static_cast<scalar_t>(best[b]);
    sw_row[ow0 + b] = static_cast<uint8_t>(tap[b]);
  }
}

#if DECONVNET_EXT_X86_AVX2
// float32 block of 8 interior outputs in AVX2, any geometry: per tap, the 8
// inputs (contiguous for stride 1, even lanes of two loads for stride 2, a
// gather otherwise), then the compare + blend rule. Never reads past the last
// input the block uses (the second stride-2 load is masked to 7 lanes).
inline DECONVNET_EXT_TARGET_AVX2 void pool_block8_float_avx2(const float* plane, int64_t W,
                                                             int64_t oh, TapRange ti,
                                                             int64_t ow0, const PoolParams& p,
                                                             float* out_row, uint8_t* sw_row) {
  const int64_t sW = p.w.stride;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i gather_index = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(static_cast<int>(sW)));
  const __m256i first7 = _mm256_cmpgt_epi32(_mm256_set1_epi32(7), lanes);
  __m256 best = _mm256_set1_ps(pool::argmax_initial<float>());
  __m256 tap = _mm256_set1_ps(static_cast<float>(ti.begin * p.w.kernel));
  for (int64_t i = ti.begin; i < ti.end; ++i) {
    const float* row = plane + pool::tap_position(oh, i, p.h) * W + ow0 * sW - p.w.padding;
    for (int64_t j = 0; j < p.w.kernel; ++j) {
      const float* src = row + j * p.w.dilation;
      __m256 v;
      if (sW == 1) {
        v = _mm256_loadu_ps(src);
      } else if (sW == 2) {
        const __m256 a0 = _mm256_loadu_ps(src), a1 = _mm256_maskload_ps(src + 8, first7);
        v = _mm256_castpd_ps(_mm256_permute4x64_pd(
            _mm256_castps_pd(_mm256_shuffle_ps(a0, a1, 0x88)), 0xD8));
      } else {
        v = _mm256_i32gather_ps(src, gather_index, 4);
      }
      const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ),
                                       _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      best = _mm256_blendv_ps(best, v, take);
      tap = _mm256_blendv_ps(tap, _mm256_set1_ps(static_cast<float>(i * p.w.kernel + j)), take);
    }
  }
  _mm256_storeu_ps(out_row + ow0, best);
  const __m256i t32 = _mm256_cvtps_epi32(tap);
  const __m128i t16 =
      _mm_packs_epi32(_mm256_castsi256_si128(t32), _mm256_extracti128_si256(t32, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(sw_row + ow0), _mm_packus_epi16(t16, t16));
}
#endif

// Outputs [from, oW) of row oh: clipped windows one by one, interior ones in blocks.
template <typename scalar_t>
inline __attribute__((always_inline)) void pool_row_general(const scalar_t* plane, int64_t H,
                                                            int64_t W, int64_t oh, int64_t from,
                                                            int64_t oW, const PoolParams& p,
                                                            scalar_t* out_row,
                                                            uint8_t* sw_row, bool avx2) {
  const pool::Axis& a = p.w;
  // Interior: ow * stride - padding >= 0 and its last tap < W.
  const int64_t lo = std::min(oW, std::max(from, pool::ceil_div_nonneg(a.padding, a.stride)));
  const int64_t last = W - 1 + a.padding - (a.kernel - 1) * a.dilation;
  const int64_t hi = std::max(lo, std::min(oW, last < 0 ? int64_t(0) : last / a.stride + 1));
  pool_row_nchw(plane, H, W, oh, from, lo, p, out_row, sw_row);
  const TapRange ti = pool::window_taps(oh, H, p.h);
  int64_t ow = lo;
#if DECONVNET_EXT_X86_AVX2
  if constexpr (std::is_same_v<scalar_t, float>) {
    // (The gather's int32 offsets need 8 * stride to fit; it always does in practice.)
    if (avx2 && a.stride < (int64_t(1) << 27)) {
      for (; ow + 8 <= hi; ow += 8) {
        pool_block8_float_avx2(plane, W, oh, ti, ow, p, out_row, sw_row);
      }
    }
  }
#endif
  for (; ow + kRowBlock <= hi; ow += kRowBlock) {
    if (a.stride == 1) {
      pool_block_nchw<scalar_t, 1>(plane, W, oh, ti, ow, p, out_row, sw_row);
    } else if (a.stride == 2) {
      pool_block_nchw<scalar_t, 2>(plane, W, oh, ti, ow, p, out_row, sw_row);
    } else {
      pool_block_nchw<scalar_t, 0>(plane, W, oh, ti, ow, p, out_row, sw_row);
    }
  }
  pool_row_nchw(plane, H, W, oh, ow, oW, p, out_row, sw_row);
}

inline bool is_2x2_stride2(const PoolParams& p) {
  return p.h.kernel == 2 && p.w.kernel == 2 && p.h.stride == 2 && p.w.stride == 2 &&
         p.h.padding == 0 && p.w.padding == 0 && p.h.dilation == 1 && p.w.dilation == 1;
}

// Output rows [begin, end) of all planes (row r = plane * oH + oh).
template <typename scalar_t>
inline __attribute__((always_inline)) void pool_rows_nchw(const scalar_t* in, scalar_t* out,
                                                          uint8_t* sw, int64_t begin,
                                                          int64_t end, int64_t H, int64_t W,
                                                          int64_t oH, int64_t oW,
                                                          const PoolParams& p, bool fast2x2,
                                                          bool avx2) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t plane = r / oH, oh = r % oH;
    const scalar_t* in_plane = in + plane * H * W;
    scalar_t* out_row = out + r * oW;
    uint8_t* sw_row = sw + r * oW;
    int64_t done = 0;
#if DECONVNET_EXT_X86_AVX2
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (fast2x2 && 2 * oh + 1 < H) {
        // Full windows only: 2 * ow + 1 < W.
        done = pool2x2_row_avx2(in_plane + 2 * oh * W, in_plane + (2 * oh + 1) * W,
                                std::min(oW, W / 2), out_row, sw_row);
      }
    }
#endif
    pool_row_general(in_plane, H, W, oh, done, oW, p, out_row, sw_row, avx2);
  }
}

#if DECONVNET_EXT_X86_AVX2
template <typename scalar_t>
DECONVNET_EXT_TARGET_AVX2 void pool_rows_nchw_avx2(const scalar_t* in, scalar_t* out,
                                                   uint8_t* sw, int64_t begin, int64_t end,
                                                   int64_t H, int64_t W, int64_t oH, int64_t oW,
                                                   const PoolParams& p, bool fast2x2) {
  pool_rows_nchw(in, out, sw, begin, end, H, W, oH, oW, p, fast2x2, true);
}
#endif

template <typename scalar_t>
void pool_rows_nchw_default(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t begin,
                            int64_t end, int64_t H, int64_t W, int64_t oH, int64_t oW,
                            const PoolParams& p) {
  pool_rows_nchw(in, out, sw, begin, end, H, W, oH, oW, p, false, false);
}

template <typename scalar_t>
void pool_nchw(const scalar_t* in, scalar_t* out, uint8_t* sw, int64_t planes, int64_t H,
               int64_t W, int64_t oH, int64_t oW, const PoolParams& p) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(oW, 1));
  bool avx2 = false;
#if DECONVNET_EXT_X86_AVX2
  avx2 = cpu::has_avx2_fma();
#endif
  const bool fast2x2 = avx2 && std::is_same_v<scalar_t, float> && is_2x2_stride2(p);
  at::parallel_for(0, planes * oH, grain, [&](int64_t begin, int64_t end) {
#if DECONVNET_EXT_X86_AVX2
    if (avx2) {
      pool_rows_nchw_avx2(in, out, sw, begin, end, H, W, oH, oW, p, fast2x2);
      return;
    }
#endif
    pool_rows_nchw_default(in, out, sw, begin, end, H, W, oH, oW, p);
  });
}

}  // namespace
}  // namespace cpu_pool
}  // namespace deconvnet_ext
