// aggregate_proposals on CPU, part 2: the per-row rules. One map row resized
// horizontally, and the vertical step reduced into the canvas, portable
// (ScalarRows) and for float32 with AVX2 + FMA (Avx2Rows: 16-column windows
// read with two loads and in-register permutes, gathers otherwise).
#pragma once

#include <cmath>
#include <cstdint>

#include "common/bilinear.h"
#include "common/bilinear_aggregate_args.h"

#include "cpu/cpu_features.h"

#if DECONVNET_EXT_X86_AVX2
#include <immintrin.h>
#endif

namespace deconvnet_ext {
namespace aggregate {
namespace cpu {

// ------------------------------------------------------- per-row rules
// The column taps of one proposal (pointers into its Plan).
template <typename T>
struct Columns {
  const int32_t* i0;
  const int32_t* i1;
  const T* l0;
  const T* l1;
  const int32_t* window_base;
  const int32_t* rel0;
  const int32_t* rel1;
  int32_t window_span;  // Placement::window_span
};

// Cache lines [from, to) to prefetch, 64 bytes apart; a vertical step issues
// one per 8 columns and advances `from` past them.
struct Lines {
  const char* from;
  const char* to;
};

// dst[x] = src[i0[x]] * l0[x] + src[i1[x]] * l1[x]: one map row resized horizontally.
// out[x] = reduce(out[x], t0[x] * l0 + t1[x] * l1): the vertical step and the
// reduction into the canvas ("mean" reduces as "sum" and divides at the end).
template <typename T, bool kFused>
struct ScalarRows {
  static void horizontal(const T* src, const Columns<T>& col, T* dst, int64_t n) {
    for (int64_t x = 0; x < n; ++x) {
      dst[x] = bilinear::lerp<kFused>(src[col.i0[x]], col.l0[x], src[col.i1[x]], col.l1[x]);
    }
  }
  static void vertical(Mode mode, T* out, const T* t0, const T* t1, T l0, T l1, int64_t n,
                       Lines& /*lines: left to the caller*/) {
    if (mode == Mode::kMax) {
      for (int64_t x = 0; x < n; ++x) {
        const T v = bilinear::lerp<kFused>(t0[x], l0, t1[x], l1);
        // torch.maximum: a NaN on either side wins (a NaN canvas stays NaN).
        if (v > out[x] || std::isnan(v)) out[x] = v;
      }
    } else {
      for (int64_t x = 0; x < n; ++x) out[x] += bilinear::lerp<kFused>(t0[x], l0, t1[x], l1);
    }
  }
};

#if DECONVNET_EXT_X86_AVX2
// float32 with AVX2 + FMA, the same fused rounding as ScalarRows<float, true>.
struct Avx2Rows {
  // Taps within a 16-column window: two loads and in-register permutes
  // (vpermps picks lanes by the low 3 bits, the sign bit picks the half);
  // otherwise (boxes under ~0.55x the map width) hardware gathers.
  __attribute__((target("avx2,fma"))) static __m256 pick(__m256 lo, __m256 hi, __m256i rel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, rel), _mm256_permutevar8x32_ps(hi, rel),
                            _mm256_castsi256_ps(rel));
  }

  __attribute__((target("avx2,fma"))) static void horizontal(
      const float* __restrict__ src, const Columns<float>& col, float* __restrict__ dst,
      int64_t n) {
    // Local copies: dst may not alias the taps, so they stay in registers.
    const int32_t* __restrict__ i0 = col.i0;
    const int32_t* __restrict__ i1 = col.i1;
    const float* __restrict__ l0 = col.l0;
    const float* __restrict__ l1 = col.l1;
    const int32_t* __restrict__ window_base = col.window_base;
    const int32_t* __restrict__ rel0 = col.rel0;
    const int32_t* __restrict__ rel1 = col.rel1;
    int64_t x = 0;
    if (col.window_span == 8) {
      for (; x + 8 <= n; x += 8) {
        const __m256 v = _mm256_loadu_ps(src + window_base[x / 8]);
        const __m256 a = _mm256_permutevar8x32_ps(
            v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rel0 + x)));
        const __m256 b = _mm256_permutevar8x32_ps(
            v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rel1 + x)));
        const __m256 bl = _mm256_mul_ps(b, _mm256_loadu_ps(l1 + x));
        _mm256_storeu_ps(dst + x, _mm256_fmadd_ps(a, _mm256_loadu_ps(l0 + x), bl));
      }
    } else {
      for (; x + 8 <= n; x += 8) {
        const int32_t base = window_base[x / 8];
        __m256 a, b;
        if (base >= 0) {
          const __m256 lo = _mm256_loadu_ps(src + base);
          const __m256 hi = _mm256_loadu_ps(src + base + 8);
          a = pick(lo, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rel0 + x)));
          b = pick(lo, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rel1 + x)));
        } else {
          a = _mm256_i32gather_ps(
              src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i0 + x)), 4);
          b = _mm256_i32gather_ps(
              src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(i1 + x)), 4);
        }
        const __m256 bl = _mm256_mul_ps(b, _mm256_loadu_ps(l1 + x));
        _mm256_storeu_ps(dst + x, _mm256_fmadd_ps(a, _mm256_loadu_ps(l0 + x), bl));
      }
    }
    for (; x < n; ++x) dst[x] = std::fma(src[i0[x]], l0[x], src[i1[x]] * l1[x]);
  }

  __attribute__((target("avx2,fma"))) static void vertical(
      Mode mode, float* out, const float* t0, const float* t1, float l0, float l1, int64_t n,
      Lines& lines) {
    const __m256 vl0 = _mm256_set1_ps(l0);
    const __m256 vl1 = _mm256_set1_ps(l1);
    int64_t x = 0;
    if (mode == Mode::kMax) {
      for (; x + 8 <= n; x += 8) {
        if (lines.from < lines.to) {
          __builtin_prefetch(lines.from);
          lines.from += 64;
        }
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + x), vl0,
                                         _mm256_mul_ps(_mm256_loadu_ps(t1 + x), vl1));
        const __m256 o = _mm256_loadu_ps(out + x);
        // max_ps(o, v) returns v when either is NaN; keep o where o is NaN.
        const __m256 m = _mm256_max_ps(o, v);
        _mm256_storeu_ps(out + x, _mm256_blendv_ps(m, o, _mm256_cmp_ps(o, o, _CMP_UNORD_Q)));
      }
      for (; x < n; ++x) {
        const float v = std::fma(t0[x], l0, t1[x] * l1);
        if (v > out[x] || std::isnan(v)) out[x] = v;
      }
    } else {
      for (; x + 8 <= n; x += 8) {
        if (lines.from < lines.to) {
          __builtin_prefetch(lines.from);
          lines.from += 64;
        }
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + x), vl0,
                                         _mm256_mul_ps(_mm256_loadu_ps(t1 + x), vl1));
        _mm256_storeu_ps(out + x, _mm256_add_ps(_mm256_loadu_ps(out + x), v));
      }
      for (; x < n; ++x) out[x] += std::fma(t0[x], l0, t1[x] * l1);
    }
  }
};
#endif

}  // namespace cpu
}  // namespace aggregate
}  // namespace deconvnet_ext
