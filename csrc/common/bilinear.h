// Bilinear resize weights, exactly as F.interpolate(mode="bilinear",
// align_corners=False, size=...) computes them (ATen/native/UpSample.h:
// area_pixel_compute_scale, area_pixel_compute_source_index,
// guard_index_and_lambda, compute_source_index_and_lambda), and the 1-d
// interpolation step. Host-device: the CPU loops and the CUDA kernel call the
// same functions, so the CPU tests also check what the GPU computes.
//
// Rounding. torch's CPU kernels are compiled with floating-point contraction.
// In its AVX2 / AVX512 builds (every CPU with FMA) the source index is
// fma(scale, i + 0.5, -0.5) and one interpolation step a*l0 + b*l1 is
// fma(a, l0, b*l1); its DEFAULT build (no FMA) rounds every product. kFused
// picks one of the two: with the matching choice, a resize of an (h, w) map to
// (bh, bw) with bh + bw > 128 equals torch's bit for bit (measured, float32).
// torch resizes smaller outputs with another kernel (precomputed products
// h0*w0..., summed in an order that depends on the channel index and the SIMD
// width), which these functions match only to a few ulp.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace deconvnet_ext {
namespace bilinear {

// a * b + c, fused (one rounding) or with the product rounded first. The
// unfused form is only used in host code built without FMA instructions (the
// portable CPU path), where the compiler cannot contract it; device code always
// uses the fused form.
template <bool kFused, typename T>
C10_HOST_DEVICE inline T mul_add(T a, T b, T c) {
  if constexpr (kFused) {
#if defined(__CUDA_ARCH__)
    return ::fma(a, b, c);
#else
    return std::fma(a, b, c);
#endif
  } else {
    return a * b + c;
  }
}

// One 1-d interpolation step, torch's a * l0 + b * l1.
template <bool kFused, typename T>
C10_HOST_DEVICE inline T lerp(T a, T l0, T b, T l1) {
  if constexpr (kFused) {
    return mul_add<true>(a, l0, b * l1);
  } else {
    return a * l0 + b * l1;
  }
}

C10_HOST_DEVICE inline float floor_float(float x) {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  return std::floor(x);
#endif
}

// The two source taps of one output index along one axis and their weights.
template <typename T>
struct Taps {
  int64_t i0;
  int64_t i1;
  T l0;
  T l1;
};

// Taps of output index `out_index` when resizing an axis of `in_size` samples
// to `out_size` (T is the op-math type: float for float/half/bfloat16, double
// for double).
template <bool kFused, typename T>
C10_HOST_DEVICE inline Taps<T> source_taps(int64_t in_size, int64_t out_size,
                                          int64_t out_index) {
  Taps<T> taps;
  if (out_size == in_size) {  // torch's "scale_factor = 1, simply copy"
    taps.i0 = out_index;
    taps.i1 = out_index;
    taps.l0 = T(1);
    taps.l1 = T(0);
    return taps;
  }
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  T real = mul_add<kFused>(scale, static_cast<T>(out_index) + static_cast<T>(0.5),
                           static_cast<T>(-0.5));
  if (real < T(0)) real = T(0);
  // floorf on purpose (torch's guard_index_and_lambda uses it for double too).
  int64_t i0 = static_cast<int64_t>(floor_float(static_cast<float>(real)));
  if (i0 > in_size - 1) i0 = in_size - 1;
  T l1 = real - static_cast<T>(i0);
  if (l1 < T(0)) l1 = T(0);
  if (l1 > T(1)) l1 = T(1);
  taps.i0 = i0;
  taps.i1 = i0 + ((i0 < in_size - 1) ? 1 : 0);
  taps.l1 = l1;
  taps.l0 = T(1) - l1;
  return taps;
}

// Value of the resized map at (out_y, out_x): rows first, then between rows,
// the order of torch's generic kernel. `map` is one contiguous (h, w) plane.
template <bool kFused, typename T, typename scalar_t>
C10_HOST_DEVICE inline T sample(const scalar_t* map, int64_t w, const Taps<T>& row,
                                const Taps<T>& col) {
  const scalar_t* r0 = map + row.i0 * w;
  const scalar_t* r1 = map + row.i1 * w;
  const T t0 = lerp<kFused>(static_cast<T>(r0[col.i0]), col.l0,
                            static_cast<T>(r0[col.i1]), col.l1);
  const T t1 = lerp<kFused>(static_cast<T>(r1[col.i0]), col.l0,
                            static_cast<T>(r1[col.i1]), col.l1);
  return lerp<kFused>(t0, row.l0, t1, row.l1);
}

}  // namespace bilinear
}  // namespace deconvnet_ext
