// Autograd of the pooling ops, in C++ (the Autograd dispatch key): no Python on
// the forward or backward path of a call. Every backward is itself one of the
// ops, called through the dispatcher (so it records its own autograd node and
// double backward works):
//   pool backward   = unpool of the gradient at the switches
//   unpool backward = gather of the gradient at the switches
//   gather backward = unpool of the gradient
// Switches are uint8 and never differentiable. aggregate_proposals keeps its
// Python registration (deconvnet_ext/aggregation.py: an inference op that refuses
// a backward).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace deconvnet_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> call_pool(const at::Tensor& self, c10::IntArrayRef k,
                                             c10::IntArrayRef s, c10::IntArrayRef p,
                                             c10::IntArrayRef d, bool ceil_mode) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvnet_ext::max_pool2d_with_switches", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::IntArrayRef,
                                                    c10::IntArrayRef, c10::IntArrayRef,
                                                    c10::IntArrayRef, bool)>();
  return op.call(self, k, s, p, d, ceil_mode);
}

at::Tensor call_unpool(const at::Tensor& self, const at::Tensor& switches, c10::IntArrayRef k,
                       c10::IntArrayRef s, c10::IntArrayRef p, c10::IntArrayRef d,
                       c10::IntArrayRef output_size) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvnet_ext::max_unpool2d_with_switches", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                            c10::IntArrayRef)>();
  return op.call(self, switches, k, s, p, d, output_size);
}

at::Tensor call_gather(const at::Tensor& self, const at::Tensor& switches, c10::IntArrayRef k,
                       c10::IntArrayRef s, c10::IntArrayRef p, c10::IntArrayRef d) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("deconvnet_ext::gather_at_switches", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::IntArrayRef,
                            c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef)>();
  return op.call(self, switches, k, s, p, d);
}

// kernel_size, stride, padding, dilation (2 each) and, where the backward needs
// it, the (H, W) to unpool into: one int list in ctx->saved_data.
std::vector<int64_t> pack(c10::IntArrayRef k, c10::IntArrayRef s, c10::IntArrayRef p,
                          c10::IntArrayRef d, const at::Tensor* sized) {
  std::vector<int64_t> v;
  v.reserve(10);
  for (c10::IntArrayRef a : {k, s, p, d}) v.insert(v.end(), a.begin(), a.end());
  if (sized != nullptr) {
    // sym_size: under torch.compile's dynamic shapes the size is symbolic; the
    // int[2] schema specializes it, as the Python registration did.
    v.push_back(sized->sym_size(-2).guard_int(__FILE__, __LINE__));
    v.push_back(sized->sym_size(-1).guard_int(__FILE__, __LINE__));
  }
  return v;
}

struct Params {
  std::vector<int64_t> v;
  c10::IntArrayRef k() const { return c10::IntArrayRef(v).slice(0, 2); }
  c10::IntArrayRef s() const { return c10::IntArrayRef(v).slice(2, 2); }
  c10::IntArrayRef p() const { return c10::IntArrayRef(v).slice(4, 2); }
  c10::IntArrayRef d() const { return c10::IntArrayRef(v).slice(6, 2); }
  c10::IntArrayRef size() const { return c10::IntArrayRef(v).slice(8, 2); }
};

Params saved(AutogradContext* ctx) { return Params{ctx->saved_data["params"].toIntVector()}; }

class PoolFunction : public torch::autograd::Function<PoolFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& self, c10::IntArrayRef k,
                               c10::IntArrayRef s, c10::IntArrayRef p, c10::IntArrayRef d,
                               bool ceil_mode) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, switches] = call_pool(self, k, s, p, d, ceil_mode);
    ctx->save_for_backward({switches});
    ctx->saved_data["params"] = pack(k, s, p, d, &self);
    ctx->mark_non_differentiable({switches});
    return {out, switches};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor switches = ctx->get_saved_variables()[0];
    const Params q = saved(ctx);
    return {call_unpool(grads[0], switches, q.k(), q.s(), q.p(), q.d(), q.size()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class UnpoolFunction : public torch::autograd::Function<UnpoolFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& self,
                            const at::Tensor& switches, c10::IntArrayRef k, c10::IntArrayRef s,
                            c10::IntArrayRef p, c10::IntArrayRef d,
                            c10::IntArrayRef output_size) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_unpool(self, switches, k, s, p, d, output_size);
    ctx->save_for_backward({switches});
    ctx->saved_data["params"] = pack(k, s, p, d, nullptr);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor switches = ctx->get_saved_variables()[0];
    const Params q = saved(ctx);
    return {call_gather(grads[0], switches, q.k(), q.s(), q.p(), q.d()), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class GatherFunction : public torch::autograd::Function<GatherFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& self,
                            const at::Tensor& switches, c10::IntArrayRef k, c10::IntArrayRef s,
                            c10::IntArrayRef p, c10::IntArrayRef d) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call_gather(self, switches, k, s, p, d);
    ctx->save_for_backward({switches});
    ctx->saved_data["params"] = pack(k, s, p, d, &self);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor switches = ctx->get_saved_variables()[0];
    const Params q = saved(ctx);
    return {call_unpool(grads[0], switches, q.k(), q.s(), q.p(), q.d(), q.size()),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> pool_autograd(const at::Tensor& self, c10::IntArrayRef k,
                                                 c10::IntArrayRef s, c10::IntArrayRef p,
                                                 c10::IntArrayRef d, bool ceil_mode) {
  const variable_list r = PoolFunction::apply(self, k, s, p, d, ceil_mode);
  return {r[0], r[1]};
}

at::Tensor unpool_autograd(const at::Tensor& self, const at::Tensor& switches,
                           c10::IntArrayRef k, c10::IntArrayRef s, c10::IntArrayRef p,
                           c10::IntArrayRef d, c10::IntArrayRef output_size) {
  return UnpoolFunction::apply(self, switches, k, s, p, d, output_size);
}

at::Tensor gather_autograd(const at::Tensor& self, const at::Tensor& switches,
                           c10::IntArrayRef k, c10::IntArrayRef s, c10::IntArrayRef p,
                           c10::IntArrayRef d) {
  return GatherFunction::apply(self, switches, k, s, p, d);
}

}  // namespace
}  // namespace deconvnet_ext

TORCH_LIBRARY_IMPL(deconvnet_ext, Autograd, m) {
  m.impl("max_pool2d_with_switches", &deconvnet_ext::pool_autograd);
  m.impl("max_unpool2d_with_switches", &deconvnet_ext::unpool_autograd);
  m.impl("gather_at_switches", &deconvnet_ext::gather_autograd);
}
