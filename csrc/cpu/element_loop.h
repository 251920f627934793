// The CPU's portable loop: at::parallel_for over an element function of
// csrc/common/ (the CUDA kernels run the same function in a grid-stride loop,
// csrc/cuda/element_launch.cuh).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace deconvnet_ext {
namespace cpu {

// element(i) for every i in [0, total); `work` is the rough cost of one
// element in elementary steps (sets the grain).
template <typename Element>
void for_each_element(const Element& element, int64_t total, int64_t work = 1) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) element(i);
  });
}

}  // namespace cpu
}  // namespace deconvnet_ext
