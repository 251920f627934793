// The one registration point: every schema of the deconvnet_ext namespace.
// Kernels register themselves per device with TORCH_LIBRARY_IMPL in their own
// files (csrc/cpu/*.cpp, csrc/cuda/*.cu); the pooling ops' autograd in
// csrc/autograd.cpp; fake kernels (and aggregate_proposals' refusing backward)
// in Python (deconvnet_ext/ops.py, deconvnet_ext/aggregation.py).
#include <torch/library.h>

TORCH_LIBRARY(deconvnet_ext, m) {
  // out equals F.max_pool2d bit for bit; switches (uint8, same shape as out)
  // hold the argmax position inside its window, i * kW + j.
  m.def(
      "max_pool2d_with_switches(Tensor self, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  // The adjoint of the pool's selection: y[p] = sum of self where switches
  // point at p. Computed as a gather over covering windows (deterministic).
  m.def(
      "max_unpool2d_with_switches(Tensor self, Tensor switches, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation, int[2] output_size) -> Tensor");
  // out[p] = self[position of switches[p]] (0 where the switch selects nothing):
  // the unpool's backward, and the pool's gather.
  m.def(
      "gather_at_switches(Tensor self, Tensor switches, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // Paste K bilinearly resized score maps at their boxes and reduce them
  // (mode: "max" | "sum" | "mean") into num_images canvases of image_size.
  m.def(
      "aggregate_proposals(Tensor maps, Tensor boxes, Tensor? image_index, "
      "int[2] image_size, int num_images, str mode) -> Tensor");
}
