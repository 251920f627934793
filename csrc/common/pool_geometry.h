// Window geometry of a 2-d max pooling, shared by the CPU loops and the CUDA
// kernels (C10_HOST_DEVICE), so the CPU tests also check what the GPU runs.
//
// Switch convention (see deconvnet_ext/reference.py): the output (oh, ow) of a
// pooling with kernel (kH, kW), stride (sH, sW), padding (pH, pW), dilation
// (dH, dW) looks at taps (i, j), 0 <= i < kH, 0 <= j < kW, at input position
//     h = oh * sH - pH + i * dH,   w = ow * sW - pW + j * dW,
// and its switch is s = i * kW + j. A switch with s >= kH * kW, or whose
// position lies in the padding, selects nothing.
#pragma once

#include <c10/macros/Macros.h>

#include "common/pool_macros.h"

#include <cstdint>

namespace deconvnet_ext {
namespace pool {

// One spatial axis of the pooling (the same struct serves H and W).
struct Axis {
  int64_t kernel;
  int64_t stride;
  int64_t padding;
  int64_t dilation;
};

// Both axes.
struct PoolParams {
  Axis h;
  Axis w;
};

// The geometry every pool op shares: input (N, C, H, W) pooled to (N, C, oH, oW)
// (N = 1 and batched = false for 3-d tensors). Plain data: CUDA kernels take it
// by value.
struct PoolShape {
  PoolParams p;
  bool batched;
  int64_t N, C, H, W, oH, oW;
};

C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t ceil_div_nonneg(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// torch's pooling_output_shape: floor (or ceil) of the window count, and in
// ceil_mode the last window must start inside the input or the left padding.
C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t pooled_size(int64_t input, const Axis& a, bool ceil_mode) {
  const int64_t span = a.dilation * (a.kernel - 1) + 1;
  const int64_t numer = input + 2 * a.padding - span + (ceil_mode ? a.stride - 1 : 0);
  int64_t out = floor_div(numer, a.stride) + 1;
  if (ceil_mode && (out - 1) * a.stride >= input + a.padding) {
    --out;
  }
  return out;
}

// Taps [begin, end) of window `o` that fall inside an input of size `input`.
// begin is the first tap torch's loops visit (its default argmax), so an all
// -inf window reports that tap, as torch does.
struct TapRange {
  int64_t begin;
  int64_t end;
};

C10_HOST_DEVICE DECONVNET_EXT_INLINE TapRange window_taps(int64_t o, int64_t input, const Axis& a) {
  const int64_t start = o * a.stride - a.padding;
  const int64_t begin = start < 0 ? ceil_div_nonneg(-start, a.dilation) : 0;
  const int64_t room = input - start;  // positions start .. input-1
  int64_t end = room <= 0 ? 0 : ceil_div_nonneg(room, a.dilation);
  if (end > a.kernel) end = a.kernel;
  return TapRange{begin, end < begin ? begin : end};
}

// Input coordinate of tap t of window o.
C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t tap_position(int64_t o, int64_t t, const Axis& a) {
  return o * a.stride - a.padding + t * a.dilation;
}

// Decodes a switch of output (oh, ow) into an input position. Returns false
// (selects nothing) when the switch is outside its window (s >= kH * kW) or
// points into the padding: no caller ever reads or writes out of bounds.
C10_HOST_DEVICE DECONVNET_EXT_INLINE bool switch_position(int64_t s, int64_t oh, int64_t ow, const Axis& ah,
                                            const Axis& aw, int64_t H, int64_t W, int64_t* h,
                                            int64_t* w) {
  if (s < 0 || s >= ah.kernel * aw.kernel) return false;
  const int64_t hh = tap_position(oh, s / aw.kernel, ah);
  const int64_t ww = tap_position(ow, s % aw.kernel, aw);
  if (hh < 0 || hh >= H || ww < 0 || ww >= W) return false;
  *h = hh;
  *w = ww;
  return true;
}

// The windows covering input coordinate x along one axis: tap t of window o
// covers x when o * stride - padding + t * dilation == x. For tap t this is
// the window o = (x + padding - t * dilation) / stride when that divides
// exactly and 0 <= o < pooled. Returns -1 when tap t of no window covers x.
// The unpool (a gather) walks t = 0 .. kernel-1 with this: a fixed order, so
// overlapping windows sum their contributions deterministically.
C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t covering_window(int64_t x, int64_t t, int64_t pooled,
                                               const Axis& a) {
  const int64_t num = x + a.padding - t * a.dilation;
  if (num < 0 || num % a.stride != 0) return -1;
  const int64_t o = num / a.stride;
  return o < pooled ? o : -1;
}

// Windows do not overlap (each input position is covered by at most one
// window) when the stride is at least the dilated kernel's span.
C10_HOST_DEVICE DECONVNET_EXT_INLINE bool windows_disjoint(const Axis& a) {
  return a.stride >= a.dilation * (a.kernel - 1) + 1;
}

}  // namespace pool
}  // namespace deconvnet_ext
