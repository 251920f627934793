// Launch shape shared by the pooling kernels: a 1-d grid-stride loop over the
// outputs (64-bit indices, so tensors beyond 2^31 elements work), on the
// current stream of the tensor's device.
#pragma once

#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

namespace deconvnet_ext {
namespace cuda {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 1 << 20));
}

inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// Decomposes a flat output index into (n, c, y, x) for NCHW or NHWC order.
struct Coord {
  int64_t n, c, y, x;
};

template <bool channels_last>
__device__ __forceinline__ Coord decompose(int64_t idx, int64_t C, int64_t Y, int64_t X) {
  Coord k;
  if (channels_last) {
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

// Flat offset of (n, c, y, x) in a (N, C, Y, X) tensor of the given layout.
template <bool channels_last>
__device__ __forceinline__ int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C,
                                          int64_t Y, int64_t X) {
  return channels_last ? ((n * Y + y) * X + x) * C + c : ((n * C + c) * Y + y) * X + x;
}

}  // namespace cuda
}  // namespace deconvnet_ext
