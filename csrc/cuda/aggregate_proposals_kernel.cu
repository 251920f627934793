// aggregate_proposals on CUDA: one launch per call, a grid-stride loop over
// aggregate::AggregateElement (csrc/common/aggregate_element.h, fused rounding
// like the CPU's FMA path), the function the CPU's portable loop runs:
// deterministic, no atomics, no intermediate tensors.
//
// Box values and image indices are checked by the Python wrapper (it reads
// them anyway); here an empty box or an image index outside [0, B) only makes
// that proposal contribute nothing, never an out-of-bounds access.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "common/aggregate_element.h"
#include "common/bilinear_aggregate_args.h"
#include "cuda/element_launch.cuh"

namespace deconvnet_ext {
namespace aggregate {
namespace {

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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps_c.scalar_type(),
                                  "aggregate_proposals_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    cuda::for_each_element(
        AggregateElement<scalar_t, opmath_t, /*kFused=*/true>{
            maps_c.const_data_ptr<scalar_t>(), boxes_c.const_data_ptr<int64_t>(),
            s.batched ? index_c.const_data_ptr<int64_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), s},
        out.numel());
  });
  return s.batched ? out : out.select(0, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(deconvnet_ext, CUDA, m) {
  m.impl("aggregate_proposals", &aggregate_proposals_cuda);
}

}  // namespace aggregate
}  // namespace deconvnet_ext
