// Index decomposition and layout offsets shared by every element function
// (csrc/common/*_element.h): a flat index of an (N, C, Y, X) tensor in NCHW or
// channels_last (NHWC) order <-> its coordinates. Host-device, so the CPU's
// portable loops and the CUDA kernels decode indices with the same lines.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "common/pool_macros.h"

namespace deconvnet_ext {
namespace layout {

struct Coord {
  int64_t n, c, y, x;
};

// (n, c, y, x) of flat index `idx` of an (N, C, Y, X) tensor stored in NCHW
// (channels_last = false) or NHWC order.
template <bool channels_last>
C10_HOST_DEVICE DECONVNET_EXT_INLINE Coord decompose(int64_t idx, int64_t C, int64_t Y,
                                                     int64_t X) {
  Coord k;
  if constexpr (channels_last) {
    k.c = idx % C;
    idx /= C;
    k.x = idx % X;
    idx /= X;
    k.y = idx % Y;
    k.n = idx / Y;
  } else {
    k.x = idx % X;
    idx /= X;
    k.y = idx % Y;
    idx /= Y;
    k.c = idx % C;
    k.n = idx / C;
  }
  return k;
}

// Flat offset of (n, c, y, x) in an (N, C, Y, X) tensor of the given layout.
template <bool channels_last>
C10_HOST_DEVICE DECONVNET_EXT_INLINE int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x,
                                                    int64_t C, int64_t Y, int64_t X) {
  if constexpr (channels_last) {
    return ((n * Y + y) * X + x) * C + c;
  } else {
    return ((n * C + c) * Y + y) * X + x;
  }
}

}  // namespace layout
}  // namespace deconvnet_ext
