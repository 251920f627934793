// C++ test of the deconvnet_ext ops through the dispatcher, no Python:
//   deconvnet_ext_cpp_test <path to libdeconvnet_ext_ops.so> <pool|unpool|gather|aggregate|elements>
// "elements" calls the element functions of csrc/common/ (the lines the CUDA
// kernels run, cpu/element_loop.h's portable loop) directly over a sweep of
// geometries, layouts and dtypes and checks them against ATen.
// The other families dlopen() the op library (its static initializers register the schemas and
// kernels), looks the ops up with c10::Dispatcher::findSchemaOrThrow and checks
// them against ATen (at::max_pool2d_with_indices, at::max_unpool2d,
// at::upsample_bilinear2d) and simple expectations. Exit status: 0 passed,
// 1 failed, 77 skipped (the family's CPU kernel is not registered in this build).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include "common/aggregate_element.h"
#include "common/layout.h"
#include "common/pool_elements.h"

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

// ------------------------------------------------- element functions directly
// Runs element(i) for i in [0, total) serially: the portable loop without threads.
template <typename Element>
void run_elements(const Element& element, int64_t total) {
  for (int64_t i = 0; i < total; ++i) element(i);
}

deconvnet_ext::pool::PoolShape pool_shape(const PoolCase& c, int64_t N, int64_t C, int64_t H,
                                          int64_t W, int64_t oH, int64_t oW) {
  using deconvnet_ext::pool::Axis;
  return {{Axis{c.kernel[0], c.stride[0], c.padding[0], c.dilation[0]},
           Axis{c.kernel[1], c.stride[1], c.padding[1], c.dilation[1]}},
          true, N, C, H, W, oH, oW};
}

template <typename scalar_t, bool channels_last>
void check_pool_elements(const PoolCase& c, at::ScalarType dtype, int* cases) {
  namespace pool = deconvnet_ext::pool;
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t N = c.shape[0], C = c.shape[1], H = c.shape[2], W = c.shape[3];
  const pool::Axis ah{c.kernel[0], c.stride[0], c.padding[0], c.dilation[0]};
  const pool::Axis aw{c.kernel[1], c.stride[1], c.padding[1], c.dilation[1]};
  const int64_t oH = pool::pooled_size(H, ah, c.ceil_mode), oW = pool::pooled_size(W, aw, c.ceil_mode);
  if (oH <= 0 || oW <= 0) return;
  ++*cases;
  const pool::PoolShape s = pool_shape(c, N, C, H, W, oH, oW);
  const auto opts = at::TensorOptions().dtype(dtype);
  at::Tensor x = at::randn(c.shape, opts);
  x.masked_fill_(x.gt(1.8), std::nan(""));
  x = x.contiguous(fmt);
  at::Tensor out = at::empty({N, C, oH, oW}, opts.memory_format(fmt));
  at::Tensor sw = at::empty({N, C, oH, oW}, opts.dtype(at::kByte).memory_format(fmt));
  run_elements(pool::PoolElement<scalar_t, channels_last>{x.const_data_ptr<scalar_t>(),
                                                          out.mutable_data_ptr<scalar_t>(),
                                                          sw.mutable_data_ptr<uint8_t>(), s},
               out.numel());
  auto [ref, indices] = at::max_pool2d_with_indices(x.contiguous(), c.kernel, c.stride, c.padding,
                                                    c.dilation, c.ceil_mode);
  const std::string name = std::string(channels_last ? "NHWC " : "NCHW ") +
                           c10::toString(dtype) + " " + c10::str(x.sizes()) + " k" +
                           c10::str(c10::IntArrayRef(c.kernel)) + " s" +
                           c10::str(c10::IntArrayRef(c.stride)) + " p" +
                           c10::str(c10::IntArrayRef(c.padding)) + " d" +
                           c10::str(c10::IntArrayRef(c.dilation)) + (c.ceil_mode ? " ceil" : "");
  const bool same_values = at::equal(out.isnan(), ref.isnan()) &&
                           at::equal(out.nan_to_num(0, 1e300, -1e300), ref.nan_to_num(0, 1e300, -1e300));
  // Windows wholly in the padding (-inf) have no index torch's flat form can say.
  const at::Tensor real = ref.isfinite() | ref.isnan();
  const at::Tensor mine = switches_to_indices(sw, c, W);
  const bool same_taps = at::equal(mine.masked_select(real), indices.masked_select(real));
  // Gather at the switches reproduces the pooled output.
  at::Tensor g = at::empty_like(out);
  run_elements(pool::GatherElement<scalar_t, channels_last>{x.const_data_ptr<scalar_t>(),
                                                            sw.const_data_ptr<uint8_t>(),
                                                            g.mutable_data_ptr<scalar_t>(), s},
               g.numel());
  const bool gather_ok = at::equal(g.masked_select(real).isnan(), out.masked_select(real).isnan()) &&
                         at::equal(g.masked_select(real).nan_to_num(0), out.masked_select(real).nan_to_num(0));
  // Unpool: the adjoint, against a scatter-add through torch's indices; bad
  // switches (255, and 1 which may point into the padding) select nothing.
  at::Tensor v = at::randn({N, C, oH, oW}, opts).contiguous(fmt);
  at::Tensor bad = sw.clone();
  const at::Tensor position = at::arange(bad.numel(), at::kLong).view(bad.sizes());
  bad.masked_fill_(position.remainder(5).eq(0), 255);
  bad.masked_fill_(position.remainder(7).eq(1), 1);
  bool unpool_ok = true;
  for (const at::Tensor& switches : {sw, bad}) {
    at::Tensor y = at::empty({N, C, H, W}, opts.memory_format(fmt));
    run_elements(pool::UnpoolElement<scalar_t, channels_last>{v.const_data_ptr<scalar_t>(),
                                                              switches.const_data_ptr<uint8_t>(),
                                                              y.mutable_data_ptr<scalar_t>(), s},
                 y.numel());
    const at::Tensor sl = switches.to(at::kLong);
    const at::Tensor oh = at::arange(oH, at::kLong).view({-1, 1});
    const at::Tensor ow = at::arange(oW, at::kLong).view({1, -1});
    const at::Tensor h = oh * c.stride[0] - c.padding[0] + sl.div(c.kernel[1], "floor") * c.dilation[0];
    const at::Tensor w = ow * c.stride[1] - c.padding[1] + sl.remainder(c.kernel[1]) * c.dilation[1];
    const at::Tensor valid = sl.lt(c.kernel[0] * c.kernel[1]) & h.ge(0) & h.lt(H) & w.ge(0) & w.lt(W);
    const at::Tensor flat = at::where(valid, h * W + w, at::zeros_like(h)).contiguous().view({N, C, -1});
    const at::Tensor vals = at::where(valid, v.to(at::kDouble), at::zeros_like(v, at::kDouble)).contiguous().view({N, C, -1});
    const at::Tensor expect = at::zeros({N, C, H * W}, at::kDouble).scatter_add_(2, flat, vals).view({N, C, H, W});
    const double tol = dtype == at::kDouble ? 1e-12 : 1e-5;
    unpool_ok = unpool_ok && at::allclose(y.to(at::kDouble), expect, tol, tol) &&
                y.is_contiguous(fmt);
  }
  if (!(same_values && same_taps && gather_ok && unpool_ok)) {
    check(same_values, "PoolElement " + name + ": values equal at::max_pool2d_with_indices");
    check(same_taps, "PoolElement " + name + ": switches name torch's argmax");
    check(gather_ok, "GatherElement " + name + ": gathers the pooled values");
    check(unpool_ok, "UnpoolElement " + name + ": the adjoint (scatter-add through torch's indices)");
  }
}

void check_layout_functions() {
  namespace layout = deconvnet_ext::layout;
  bool ok = true;
  for (auto [C, Y, X] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{3, 5, 7}, {1, 1, 4}, {16, 2, 1}}) {
    const int64_t N = 2;
    const at::Tensor nchw = at::arange(N * C * Y * X, at::kLong).view({N, C, Y, X});
    const at::Tensor nhwc = nchw.contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t* a = nchw.const_data_ptr<int64_t>();
    const int64_t* b = nhwc.const_data_ptr<int64_t>();
    for (int64_t i = 0; i < N * C * Y * X; ++i) {
      const layout::Coord p = layout::decompose<false>(i, C, Y, X);
      const layout::Coord q = layout::decompose<true>(i, C, Y, X);
      // element i of each buffer is the NCHW index of its coordinates
      ok = ok && a[i] == ((p.n * C + p.c) * Y + p.y) * X + p.x &&
           b[i] == ((q.n * C + q.c) * Y + q.y) * X + q.x &&
           layout::offset<false>(p.n, p.c, p.y, p.x, C, Y, X) == i &&
           layout::offset<true>(q.n, q.c, q.y, q.x, C, Y, X) == i;
    }
  }
  check(ok, "layout::decompose / offset: NCHW and NHWC round trips, against ATen's strides");
}

void test_pool_elements() {
  check_layout_functions();
  int cases = 0;
  const int failures_before = failures;
  const std::vector<std::vector<int64_t>> shapes = {{2, 3, 7, 9}, {1, 2, 8, 8}, {2, 17, 3, 5}, {1, 1, 1, 6}};
  for (int64_t kh = 1; kh <= 3; ++kh) {
    for (int64_t kw = 1; kw <= 3; ++kw) {
      for (int64_t st = 1; st <= 3; ++st) {
        for (int64_t pad = 0; pad <= 1; ++pad) {
          for (int64_t dil = 1; dil <= 2; ++dil) {
            for (bool ceil_mode : {false, true}) {
              if (pad > kh / 2 || pad > kw / 2) continue;
              for (const auto& shape : shapes) {
                const PoolCase c{shape, {kh, kw}, {st, (st % 3) + 1}, {pad, pad}, {dil, 1}, ceil_mode};
                check_pool_elements<float, false>(c, at::kFloat, &cases);
                check_pool_elements<float, true>(c, at::kFloat, &cases);
                check_pool_elements<double, false>(c, at::kDouble, &cases);
                check_pool_elements<double, true>(c, at::kDouble, &cases);
              }
            }
          }
        }
      }
    }
  }
  check(failures == failures_before,
        "PoolElement / GatherElement / UnpoolElement over " + std::to_string(cases) +
            " (geometry, layout, dtype) cases");
}

// Reference aggregation: every map resized with at::upsample_bilinear2d, pasted, reduced.
at::Tensor aggregate_reference(const at::Tensor& maps, const at::Tensor& boxes, int64_t H,
                               int64_t W, deconvnet_ext::aggregate::Mode mode) {
  const int64_t K = maps.size(0);
  at::Tensor canvas = at::zeros({maps.size(1), H, W}, maps.options());
  for (int64_t k = 0; k < K; ++k) {
    const int64_t x0 = boxes[k][0].item<int64_t>(), y0 = boxes[k][1].item<int64_t>();
    const int64_t x1 = boxes[k][2].item<int64_t>(), y1 = boxes[k][3].item<int64_t>();
    const int64_t cx0 = std::max<int64_t>(x0, 0), cy0 = std::max<int64_t>(y0, 0);
    const int64_t cx1 = std::min(x1, W), cy1 = std::min(y1, H);
    if (cx0 >= cx1 || cy0 >= cy1) continue;
    const at::Tensor r = at::upsample_bilinear2d(maps.narrow(0, k, 1), {y1 - y0, x1 - x0}, false)[0];
    at::Tensor dst = canvas.narrow(1, cy0, cy1 - cy0).narrow(2, cx0, cx1 - cx0);
    const at::Tensor src = r.narrow(1, cy0 - y0, cy1 - cy0).narrow(2, cx0 - x0, cx1 - cx0);
    if (mode == deconvnet_ext::aggregate::Mode::kMax) dst.copy_(at::maximum(dst, src));
    else dst.add_(src);
  }
  if (mode == deconvnet_ext::aggregate::Mode::kMean && K > 0) canvas.div_(static_cast<double>(K));
  return canvas;
}

template <typename scalar_t, bool kFused>
bool check_aggregate_element(const at::Tensor& maps, const at::Tensor& boxes, int64_t H, int64_t W,
                             deconvnet_ext::aggregate::Mode mode) {
  namespace agg = deconvnet_ext::aggregate;
  const agg::Shape s{maps.size(0), maps.size(1), maps.size(2), maps.size(3), H, W, 1, false, mode};
  at::Tensor out = at::empty({1, s.C, H, W}, maps.options());
  run_elements(agg::AggregateElement<scalar_t, scalar_t, kFused>{
                   maps.const_data_ptr<scalar_t>(), boxes.const_data_ptr<int64_t>(), nullptr,
                   out.mutable_data_ptr<scalar_t>(), s},
               out.numel());
  const double tol = maps.scalar_type() == at::kDouble ? 1e-12 : 2e-5;
  return at::allclose(out[0], aggregate_reference(maps, boxes, H, W, mode), tol, tol);
}

void test_aggregate_elements() {
  namespace agg = deconvnet_ext::aggregate;
  int cases = 0;
  const int failures_before = failures;
  for (auto [h, w, H, W] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
           {6, 5, 20, 24}, {9, 13, 31, 17}, {1, 1, 9, 9}, {40, 36, 23, 29}}) {
    for (int64_t seed = 0; seed < 3; ++seed) {
      at::manual_seed(100 + seed);
      const int64_t K = 5;
      const at::Tensor x0 = at::randint(-W / 2, W, {K}, at::kLong), y0 = at::randint(-H / 2, H, {K}, at::kLong);
      at::Tensor boxes = at::stack({x0, y0, x0 + at::randint(1, 3 * W / 2 + 2, {K}, at::kLong),
                                    y0 + at::randint(1, 3 * H / 2 + 2, {K}, at::kLong)}, 1).contiguous();
      boxes[0] = at::tensor(std::vector<int64_t>{-500, -400, -300, -200}, at::kLong);  // far outside
      for (auto mode : {agg::Mode::kMax, agg::Mode::kSum, agg::Mode::kMean}) {
        const at::Tensor maps = at::randn({K, 3, h, w});
        const bool ok = check_aggregate_element<float, true>(maps, boxes, H, W, mode) &&
                        check_aggregate_element<float, false>(maps, boxes, H, W, mode) &&
                        check_aggregate_element<double, true>(maps.to(at::kDouble), boxes, H, W, mode) &&
                        check_aggregate_element<double, false>(maps.to(at::kDouble), boxes, H, W, mode);
        ++cases;
        if (!ok) {
          check(false, "AggregateElement (" + std::to_string(h) + "x" + std::to_string(w) + " maps into " +
                           std::to_string(H) + "x" + std::to_string(W) + ", seed " + std::to_string(seed) +
                           ", mode " + std::to_string(static_cast<int>(mode)) + ") equals the upsample+paste reference");
        }
      }
    }
  }
  check(failures == failures_before,
        "AggregateElement (fused and unfused, float and double) over " + std::to_string(cases) +
            " (maps, boxes, mode) cases equals at::upsample_bilinear2d + paste + reduce");
}

void test_elements() {
  test_pool_elements();
  test_aggregate_elements();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr,
                 "usage: %s <libdeconvnet_ext_ops.so> <pool|unpool|gather|aggregate|elements>\n",
                 argv[0]);
    return 2;
  }
  if (std::string(argv[2]) == "elements") {  // the element functions need no op library
    at::manual_seed(0);
    std::printf("elements:\n");
    try {
      test_elements();
    } catch (const std::exception& e) {
      std::printf("FAIL: elements raised: %s\n", e.what());
      return 1;
    }
    std::printf("elements: %d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
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
