// C++ test of the deconvnet_ext ops through the dispatcher, no Python:
//   deconvnet_ext_cpp_test <path to libdeconvnet_ext_ops.so> <pool|unpool|gather|aggregate>
// dlopen()s the op library (its static initializers register the schemas and
// kernels), looks the ops up with c10::Dispatcher::findSchemaOrThrow and checks
// them against ATen (at::max_pool2d_with_indices, at::max_unpool2d,
// at::upsample_bilinear2d) and simple expectations. Exit status: 0 passed,
// 1 failed, 77 skipped (the family's CPU kernel is not registered in this build).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace {

constexpr int kSkipped = 77;
int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("  %s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <typename F>
void check_throws(F&& f, const std::string& words, const std::string& what) {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string message = e.what();
    check(message.find(words) != std::string::npos,
          what + " (raised: " + message.substr(0, message.find('\n')) + ")");
    return;
  }
  check(false, what + " (nothing raised)");
}

c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

bool has_cpu_kernel(const char* name) {
  return op_handle(name).hasKernelForDispatchKey(c10::DispatchKey::CPU);
}

using IntPair = std::vector<int64_t>;

// ---------------------------------------------------------------- pooling
struct PoolCase {
  std::vector<int64_t> shape;
  IntPair kernel, stride, padding, dilation;
  bool ceil_mode;
};

const std::vector<PoolCase> kPoolCases = {
    {{2, 3, 8, 10}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false},
    {{1, 2, 9, 11}, {3, 3}, {2, 2}, {1, 1}, {1, 1}, true},
    {{2, 4, 7, 7}, {3, 2}, {1, 2}, {1, 0}, {2, 1}, false},
    {{3, 13, 12}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, true},  // 3-d input
};

std::tuple<at::Tensor, at::Tensor> pool(const at::Tensor& x, const PoolCase& c) {
  static auto op = op_handle("deconvnet_ext::max_pool2d_with_switches")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
                           c10::IntArrayRef, c10::IntArrayRef, bool)>();
  return op.call(x, c.kernel, c.stride, c.padding, c.dilation, c.ceil_mode);
}

// torch's int64 flat indices from switches (i * kW + j inside the window).
at::Tensor switches_to_indices(const at::Tensor& switches, const PoolCase& c, int64_t W) {
  const int64_t oH = switches.size(-2), oW = switches.size(-1);
  const at::Tensor s = switches.to(at::kLong);
  const at::Tensor oh = at::arange(oH, at::kLong).view({-1, 1});
  const at::Tensor ow = at::arange(oW, at::kLong).view({1, -1});
  const at::Tensor h = oh * c.stride[0] - c.padding[0] + s.div(c.kernel[1], "floor") * c.dilation[0];
  const at::Tensor w = ow * c.stride[1] - c.padding[1] + s.remainder(c.kernel[1]) * c.dilation[1];
  return h * W + w;
}

void test_pool() {
  for (const PoolCase& c : kPoolCases) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      const at::Tensor x = at::randn(c.shape, at::TensorOptions().dtype(dtype));
      auto [out, switches] = pool(x, c);
      auto [ref, indices] = at::max_pool2d_with_indices(x, c.kernel, c.stride, c.padding,
                                                        c.dilation, c.ceil_mode);
      const std::string name = "pool " + std::string(c10::toString(dtype)) + " " +
                               c10::str(x.sizes()) + " k" + c10::str(c10::IntArrayRef(c.kernel)) +
                               " s" + c10::str(c10::IntArrayRef(c.stride)) + " p" +
                               c10::str(c10::IntArrayRef(c.padding)) + " d" +
                               c10::str(c10::IntArrayRef(c.dilation)) +
                               (c.ceil_mode ? " ceil" : "");
      check(at::equal(out, ref), name + ": out equals at::max_pool2d_with_indices");
      check(switches.scalar_type() == at::kByte && switches.sizes() == out.sizes(),
            name + ": switches are uint8 of out's shape");
      check(at::equal(switches_to_indices(switches, c, x.size(-1)), indices),
            name + ": switches name torch's argmax");
    }
  }
  // channels_last input keeps its memory format
  const PoolCase& c = kPoolCases[0];
  const at::Tensor x = at::randn(c.shape).contiguous(at::MemoryFormat::ChannelsLast);
  auto [out, switches] = pool(x, c);
  check(at::equal(out, at::max_pool2d(x, c.kernel, c.stride, c.padding, c.dilation, c.ceil_mode)),
        "pool channels_last: out equals at::max_pool2d");
  check(out.is_contiguous(at::MemoryFormat::ChannelsLast),
        "pool channels_last: out keeps the input's memory format");
  // NaN is the max of its window
  at::Tensor y = at::randn({1, 1, 4, 4});
  y.index_put_({0, 0, 1, 0}, std::nan(""));
  auto [out_nan, sw_nan] = pool(y, c);
  check(std::isnan(out_nan.index({0, 0, 0, 0}).item<float>()), "pool: NaN wins its window");
  check_throws([&] { pool(at::randn({2, 3}), c); }, "", "pool: 2-d input raises");
}

// ---------------------------------------------------------------- unpooling
void test_unpool() {
  static auto unpool = op_handle("deconvnet_ext::max_unpool2d_with_switches")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                             c10::IntArrayRef, c10::IntArrayRef,
                                             c10::IntArrayRef, c10::IntArrayRef,
                                             c10::IntArrayRef)>();
  // Non-overlapping windows: equals at::max_unpool2d with torch's indices.
  const PoolCase c{{2, 3, 8, 10}, {2, 2}, {2, 2}, {0, 0}, {1, 1}, false};
  const bool pool_registered = has_cpu_kernel("deconvnet_ext::max_pool2d_with_switches");
  const at::Tensor x = at::randn(c.shape);
  at::Tensor out, switches;
  if (pool_registered) {
    std::tie(out, switches) = pool(x, c);
  } else {  // switches from ATen's indices: i * kW + j of the window
    at::Tensor indices;
    std::tie(out, indices) = at::max_pool2d_with_indices(x, c.kernel, c.stride, c.padding,
                                                         c.dilation, c.ceil_mode);
    const at::Tensor h = indices.div(x.size(-1), "floor"), w = indices.remainder(x.size(-1));
    const at::Tensor oh = at::arange(out.size(-2), at::kLong).view({-1, 1}) * c.stride[0];
    const at::Tensor ow = at::arange(out.size(-1), at::kLong).view({1, -1}) * c.stride[1];
    switches = ((h - oh) * c.kernel[1] + (w - ow)).to(at::kByte);
  }
  const at::Tensor indices = switches_to_indices(switches, c, x.size(-1));
  const std::vector<int64_t> size = {x.size(-2), x.size(-1)};
  const at::Tensor y = unpool.call(out, switches, c.kernel, c.stride, c.padding, c.dilation, size);
  check(at::equal(y, at::max_unpool2d(out, indices, size)),
        "unpool 2x2/2: equals at::max_unpool2d");
  // The adjoint of the selection: <unpool(g), v> == <g, gather(v)> for overlapping windows.
  const PoolCase o{{1, 2, 9, 9}, {3, 3}, {1, 1}, {1, 1}, {1, 1}, false};
  if (pool_registered) {
    const at::Tensor xo = at::randn(o.shape, at::kDouble);
    auto [po, so] = pool(xo, o);
    const at::Tensor g = at::randn(po.sizes(), at::kDouble);
    const at::Tensor yo = unpool.call(g, so, o.kernel, o.stride, o.padding, o.dilation, {9, 9});
    // scatter-add reference through torch's indices
    const at::Tensor io = switches_to_indices(so, o, 9).view({1, 2, -1});
    const at::Tensor expect =
        at::zeros({1, 2, 81}, at::kDouble).scatter_add_(2, io, g.view({1, 2, -1})).view({1, 2, 9, 9});
    check(at::allclose(yo, expect, 1e-12, 1e-12),
          "unpool 3x3/1 overlapping: sums the values whose switch points at each position");
  }
  check_throws(
      [&] { unpool.call(out, switches.to(at::kLong), c.kernel, c.stride, c.padding, c.dilation, size); },
      "", "unpool: int64 switches raise");
}

// ------------------------------------------------------------------- gather
void test_gather() {
  static auto gather = op_handle("deconvnet_ext::gather_at_switches")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                             c10::IntArrayRef, c10::IntArrayRef,
                                             c10::IntArrayRef, c10::IntArrayRef)>();
  if (!has_cpu_kernel("deconvnet_ext::max_pool2d_with_switches")) {
    std::printf("  (pool kernel not registered: gather checked against the pool's output needs it)\n");
    throw std::runtime_error("skip");
  }
  for (const PoolCase& c : kPoolCases) {
    const at::Tensor x = at::randn(c.shape);
    auto [out, switches] = pool(x, c);
    check(at::equal(gather.call(x, switches, c.kernel, c.stride, c.padding, c.dilation), out),
          "gather at the pool's switches reproduces the pooled output " + c10::str(x.sizes()));
  }
}

// -------------------------------------------------------------- aggregation
at::Tensor aggregate(const at::Tensor& maps, const at::Tensor& boxes,
                     const std::optional<at::Tensor>& image_index, IntPair image_size,
                     int64_t num_images, const std::string& mode) {
  static auto op = op_handle("deconvnet_ext::aggregate_proposals")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, c10::IntArrayRef,
                                         int64_t, c10::string_view)>();
  return op.call(maps, boxes, image_index, image_size, num_images, mode);
}

at::Tensor boxes_of(std::vector<int64_t> values) {
  return at::tensor(values, at::kLong).view({-1, 4});
}

void test_aggregate() {
  const at::Tensor maps = at::randn({3, 4, 6, 5});
  // A box of the map's size pastes the map unchanged.
  at::Tensor out = aggregate(maps.narrow(0, 0, 1), boxes_of({0, 0, 5, 6}), std::nullopt, {6, 5},
                             1, "sum");
  check(at::equal(out, maps[0]), "aggregate: a box of the map's size pastes it unchanged");
  // Shifted past the top-left corner: the visible part lands at the origin.
  out = aggregate(maps.narrow(0, 0, 1), boxes_of({-2, -1, 3, 5}), std::nullopt, {8, 9}, 1, "sum");
  check(at::equal(out.narrow(1, 0, 5).narrow(2, 0, 3), maps[0].narrow(1, 1, 5).narrow(2, 2, 3)) &&
            out.narrow(1, 5, 3).eq(0).all().item<bool>() &&
            out.narrow(2, 3, 6).eq(0).all().item<bool>(),
        "aggregate: a box past the border is clipped");
  // Max of two same-sized boxes = max(0, a, b); sum = a + b; mean = (a + b) / 2.
  const at::Tensor two = boxes_of({0, 0, 5, 6, 0, 0, 5, 6});
  const at::Tensor a = maps[0], b = maps[1];
  check(at::equal(aggregate(maps.narrow(0, 0, 2), two, std::nullopt, {6, 5}, 1, "max"),
                  at::maximum(at::maximum(a, b), at::zeros_like(a))),
        "aggregate max: max(0, a, b)");
  check(at::equal(aggregate(maps.narrow(0, 0, 2), two, std::nullopt, {6, 5}, 1, "sum"), a + b),
        "aggregate sum: a + b");
  check(at::equal(aggregate(maps.narrow(0, 0, 2), two, std::nullopt, {6, 5}, 1, "mean"),
                  (a + b) / 2),
        "aggregate mean: (a + b) / 2");
  // Resize: a (h, w) map pasted into a (bh, bw) box is at::upsample_bilinear2d.
  for (auto [bh, bw] : std::vector<std::pair<int64_t, int64_t>>{{13, 17}, {4, 3}, {90, 70}}) {
    out = aggregate(maps, boxes_of({0, 0, bw, bh, 0, 0, bw, bh, 0, 0, bw, bh}),
                    at::tensor(std::vector<int64_t>{0, 1, 2}, at::kLong), {bh, bw}, 3, "sum");
    const at::Tensor ref = at::upsample_bilinear2d(maps, {bh, bw}, /*align_corners=*/false);
    check(at::allclose(out, ref, 1e-5, 1e-6),
          "aggregate: pasted map equals at::upsample_bilinear2d to (" + std::to_string(bh) + ", " +
              std::to_string(bw) + ")");
  }
  // image_index: an image without proposals stays zero, mean divides per image.
  out = aggregate(maps, two.repeat({2, 1}).narrow(0, 0, 3), at::tensor(std::vector<int64_t>{2, 0, 2}, at::kLong),
                  {6, 5}, 3, "mean");
  check(out.sizes() == c10::IntArrayRef({3, 4, 6, 5}) && at::equal(out[0], maps[1]) &&
            out[1].eq(0).all().item<bool>() && at::equal(out[2], (maps[0] + maps[2]) / 2),
        "aggregate image_index: per-image canvases, mean over the image's proposals");
  // K = 0 gives zeros.
  out = aggregate(at::zeros({0, 4, 6, 5}), at::zeros({0, 4}, at::kLong), std::nullopt, {7, 7}, 1,
                  "max");
  check(out.sizes() == c10::IntArrayRef({4, 7, 7}) && out.eq(0).all().item<bool>(),
        "aggregate K = 0: zeros");
  // Bad input raises an error naming the argument.
  check_throws([&] { aggregate(maps.narrow(0, 0, 1), boxes_of({2, 0, 2, 6}), std::nullopt, {6, 5}, 1, "max"); },
               "boxes row 0", "aggregate: an empty box raises naming boxes");
  check_throws([&] { aggregate(maps.narrow(0, 0, 1), boxes_of({0, 0, 5, 6}), std::nullopt, {6, 5}, 1, "median"); },
               "mode", "aggregate: an unknown mode raises naming mode");
  check_throws([&] { aggregate(maps.narrow(0, 0, 1), boxes_of({0, 0, 5, 6}), at::tensor(std::vector<int64_t>{3}, at::kLong), {6, 5}, 2, "max"); },
               "image_index", "aggregate: image_index out of range raises naming it");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <libdeconvnet_ext_ops.so> <pool|unpool|gather|aggregate>\n",
                 argv[0]);
    return 2;
  }
  if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
    return 1;
  }
  const std::string family = argv[2];
  const std::vector<std::pair<std::string, std::pair<const char*, std::function<void()>>>> tests = {
      {"pool", {"deconvnet_ext::max_pool2d_with_switches", test_pool}},
      {"unpool", {"deconvnet_ext::max_unpool2d_with_switches", test_unpool}},
      {"gather", {"deconvnet_ext::gather_at_switches", test_gather}},
      {"aggregate", {"deconvnet_ext::aggregate_proposals", test_aggregate}},
  };
  at::manual_seed(0);
  for (const auto& [name, test] : tests) {
    if (name != family) continue;
    const auto& [op, body] = test;
    op_handle(op);  // the schema is always there (csrc/ops.cpp)
    if (!has_cpu_kernel(op)) {
      std::printf("%s: no CPU kernel registered for %s in this build: skipped\n", name.c_str(), op);
      return kSkipped;
    }
    std::printf("%s:\n", name.c_str());
    try {
      body();
    } catch (const std::exception& e) {
      if (std::string(e.what()) == "skip") return kSkipped;
      std::printf("FAIL: %s raised: %s\n", name.c_str(), e.what());
      return 1;
    }
    std::printf("%s: %d failure(s)\n", name.c_str(), failures);
    return failures == 0 ? 0 : 1;
  }
  std::fprintf(stderr, "unknown test family '%s'\n", family.c_str());
  return 2;
}
