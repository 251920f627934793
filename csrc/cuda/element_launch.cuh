// The CUDA kernels: one grid-stride loop (64-bit indices, so tensors beyond
// 2^31 elements work) over an element function of csrc/common/, on the current
// stream. No logic of its own: the CPU's portable loops run the same element
// functions (csrc/cpu/element_loop.h), so the CPU tests check them.
#pragma once

#include <c10/cuda/CUDAException.h>
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

template <typename Element>
__global__ void __launch_bounds__(kThreads) for_each_element_kernel(const Element element,
                                                                    int64_t total) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    element(idx);
  }
}

// element(i) for every i in [0, total), on the current stream of the current device.
template <typename Element>
void for_each_element(const Element& element, int64_t total) {
  if (total <= 0) return;
  for_each_element_kernel<Element><<<blocks_for(total), kThreads, 0,
                                     c10::cuda::getCurrentCUDAStream().stream()>>>(element,
                                                                                   total);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace deconvnet_ext
