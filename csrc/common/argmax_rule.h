// The argmax update rule of torch's max pooling (MaxPoolKernel.cpp and
// DilatedMaxPool2d.cu): a value replaces the running max when it is greater
// or when it is NaN. So ties keep the first tap in row-major window order,
// a NaN beats every number, and a later NaN replaces an earlier one (torch's
// index is that of the LAST NaN of the window; we match it exactly).
#pragma once

#include <c10/macros/Macros.h>

#include "common/pool_macros.h"

#include <cmath>

namespace deconvnet_ext {
namespace pool {

// The running max starts below every number (-inf); the running tap starts at
// the window's first in-bounds tap, so an all -inf window reports that tap.
template <typename acc_t>
C10_HOST_DEVICE DECONVNET_EXT_INLINE acc_t argmax_initial() {
  // INFINITY (a float constant, __builtin_inff) works on the host and in nvcc
  // device code without --expt-relaxed-constexpr.
  return -static_cast<acc_t>(INFINITY);
}

template <typename acc_t>
C10_HOST_DEVICE DECONVNET_EXT_INLINE bool argmax_takes(acc_t value, acc_t running_max) {
  // value != value is isnan for every acc type, on host and device; the build never
  // uses -ffast-math, which would break it.
  // Bitwise | (both sides are cheap and side-effect free): no branch, so the
  // compiler if-converts and vectorizes the loops that use it.
  return (value > running_max) | (value != value);
}

}  // namespace pool
}  // namespace deconvnet_ext
