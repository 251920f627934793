// The argmax update rule of torch's max pooling (MaxPoolKernel.cpp and
// DilatedMaxPool2d.cu): a value replaces the running max when it is greater
// or when it is NaN. So ties keep the first tap in row-major window order,
// a NaN beats every number, and a later NaN replaces an earlier one (torch's
// index is that of the LAST NaN of the window; we match it exactly).
#pragma once

#include <c10/macros/Macros.h>

namespace deconvnet_ext {
namespace pool {

template <typename acc_t>
C10_HOST_DEVICE inline bool argmax_takes(acc_t value, acc_t running_max) {
  // value != value is isnan without <cmath> on the device; the build never
  // uses -ffast-math, which would break it.
  return value > running_max || value != value;
}

}  // namespace pool
}  // namespace deconvnet_ext
