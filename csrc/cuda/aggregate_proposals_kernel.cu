// aggregate_proposals on CUDA: one launch per call. One thread per output
// element (image b, class c, row y, column x) walks the proposals in index
// order, samples every map whose box covers (y, x) with the shared bilinear
// rule (csrc/common/bilinear.h, fused rounding like the CPU's FMA path) and
// reduces in op-math precision (float for float/half/bfloat16, double for
// double): deterministic, no atomics, no intermediate tensors.
//
// Box values and image indices are checked by the Python wrapper (it reads
// them anyway); here an empty box or an image index outside [0, B) only makes
// that proposal contribute nothing, never an out-of-bounds access.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/bilinear.h"
#include "common/bilinear_aggregate_args.h"

namespace deconvnet_ext {
namespace aggregate {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t, typename opmath_t>
__global__ void aggregate_proposals_kernel(
    const scalar_t* __restrict__ maps, const int64_t* __restrict__ boxes,
    const int64_t* __restrict__ image_index,  // nullptr: every proposal is image 0
    scalar_t* __restrict__ out, int64_t K, int64_t C, int64_t h, int64_t w, int64_t B,
    int64_t H, int64_t W, int mode) {
  const int64_t total = B * C * H * W;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t x = idx % W;
    const int64_t y = (idx / W) % H;
    const int64_t c = (idx / (W * H)) % C;
    const int64_t b = idx / (W * H * C);
    opmath_t acc = opmath_t(0);
    int64_t count = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (image_index != nullptr && __ldg(image_index + k) != b) continue;
      ++count;
      const int64_t x0 = __ldg(boxes + 4 * k), y0 = __ldg(boxes + 4 * k + 1);
      const int64_t x1 = __ldg(boxes + 4 * k + 2), y1 = __ldg(boxes + 4 * k + 3);
      if (y < y0 || y >= y1 || x < x0 || x >= x1) continue;  // also skips empty boxes
      const auto row = bilinear::source_taps<true, opmath_t>(h, y1 - y0, y - y0);
      const auto col = bilinear::source_taps<true, opmath_t>(w, x1 - x0, x - x0);
      const opmath_t v =
          bilinear::sample<true, opmath_t>(maps + (k * C + c) * h * w, w, row, col);
      if (mode == static_cast<int>(Mode::kMax)) {
        // torch.maximum: a NaN on either side wins.
        if (v > acc || v != v) acc = v;
      } else {
        acc += v;
      }
    }
    if (mode == static_cast<int>(Mode::kMean) && count > 0) acc = acc / static_cast<opmath_t>(count);
    out[idx] = static_cast<scalar_t>(acc);
  }
}

at::Tensor aggregate_proposals_cuda(const at::Tensor& maps, const at::Tensor& boxes,
                                    const std::optional<at::Tensor>& image_index,
                                    c10::IntArrayRef image_size, int64_t num_images,
                                    c10::string_view mode) {
  const Shape s = check_args(maps, boxes, image_index, image_size, num_images, std::string(mode));
  TORCH_CHECK(maps.is_cuda(), "aggregate_proposals: maps must be a CUDA tensor here, got ",
              maps.device());
  c10::cuda::CUDAGuard guard(maps.device());
  const at::Tensor maps_c = maps.contiguous();
  const at::Tensor boxes_c = boxes.to(at::kLong).contiguous();
  const at::Tensor index_c = s.batched ? image_index->to(at::kLong).contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, maps_c.options());
  const int64_t total = out.numel();
  if (total > 0) {
    const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps_c.scalar_type(),
                                    "aggregate_proposals_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      aggregate_proposals_kernel<scalar_t, opmath_t>
          <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
              maps_c.const_data_ptr<scalar_t>(), boxes_c.const_data_ptr<int64_t>(),
              s.batched ? index_c.const_data_ptr<int64_t>() : nullptr,
              out.mutable_data_ptr<scalar_t>(), s.K, s.C, s.h, s.w, s.B, s.H, s.W,
              static_cast<int>(s.mode));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return s.batched ? out : out.select(0, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("aggregate_proposals", &aggregate_proposals_cuda);
}

}  // namespace aggregate
}  // namespace deconvnet_ext
