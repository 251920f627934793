// The per-output element functions of the pool, the unpool and the gather:
// everything a CUDA thread computes for one output, written once. The CUDA
// kernels are grid-stride loops over them (csrc/cuda/element_launch.cuh) and
// the CPU's portable loops a parallel_for over the same ones
// (csrc/cpu/element_loop.h), so the CPU tests run every line the GPU runs but
// the launch. The CPU's AVX2 / blocked loops are fast paths over the same
// geometry, tested bit for bit against these.
//
// Each element is a small struct of pointers and the PoolShape; element(idx)
// computes output idx (flat, in the working layout: NCHW or channels_last).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include <cstdint>

#include "common/argmax_rule.h"
#include "common/layout.h"
#include "common/pool_geometry.h"
#include "common/pool_macros.h"

namespace deconvnet_ext {
namespace pool {

// out[idx] = the max of the window of output idx (F.max_pool2d's value, NaN
// wins), switches[idx] = its tap i * kW + j (ties: the first in window order).
template <typename scalar_t, bool channels_last>
struct PoolElement {
  const scalar_t* in;   // (N, C, H, W)
  scalar_t* out;        // (N, C, oH, oW)
  uint8_t* switches;    // (N, C, oH, oW)
  PoolShape s;

  C10_HOST_DEVICE DECONVNET_EXT_INLINE void operator()(int64_t idx) const {
    using acc_t = at::opmath_type<scalar_t>;
    const layout::Coord o = layout::decompose<channels_last>(idx, s.C, s.oH, s.oW);
    const TapRange ti = window_taps(o.y, s.H, s.p.h);
    const TapRange tj = window_taps(o.x, s.W, s.p.w);
    acc_t best = argmax_initial<acc_t>();
    int64_t best_tap = ti.begin * s.p.w.kernel + tj.begin;
    for (int64_t i = ti.begin; i < ti.end; ++i) {
      const int64_t h = tap_position(o.y, i, s.p.h);
      for (int64_t j = tj.begin; j < tj.end; ++j) {
        const int64_t w = tap_position(o.x, j, s.p.w);
        const acc_t v =
            static_cast<acc_t>(in[layout::offset<channels_last>(o.n, o.c, h, w, s.C, s.H, s.W)]);
        if (argmax_takes(v, best)) {
          best = v;
          best_tap = i * s.p.w.kernel + j;
        }
      }
    }
    out[idx] = static_cast<scalar_t>(best);
    switches[idx] = static_cast<uint8_t>(best_tap);
  }
};

// y[idx] = the sum of x over the windows covering input location idx whose
// switch names it (the covering-window gather: a fixed tap order, no atomics),
// 0 where none does. A switch outside its window matches no tap.
template <typename scalar_t, bool channels_last>
struct UnpoolElement {
  const scalar_t* x;         // (N, C, oH, oW)
  const uint8_t* switches;   // (N, C, oH, oW)
  scalar_t* y;               // (N, C, H, W)
  PoolShape s;

  C10_HOST_DEVICE DECONVNET_EXT_INLINE void operator()(int64_t idx) const {
    using acc_t = at::opmath_type<scalar_t>;
    const layout::Coord q = layout::decompose<channels_last>(idx, s.C, s.H, s.W);
    acc_t acc = acc_t(-0.0);  // -0 + v == v for every v, -0 included
    bool hit = false;
    for (int64_t i = 0; i < s.p.h.kernel; ++i) {
      const int64_t oh = covering_window(q.y, i, s.oH, s.p.h);
      if (oh < 0) continue;
      for (int64_t j = 0; j < s.p.w.kernel; ++j) {
        const int64_t ow = covering_window(q.x, j, s.oW, s.p.w);
        if (ow < 0) continue;
        const int64_t o = layout::offset<channels_last>(q.n, q.c, oh, ow, s.C, s.oH, s.oW);
        if (switches[o] == i * s.p.w.kernel + j) {
          acc += static_cast<acc_t>(x[o]);
          hit = true;
        }
      }
    }
    y[idx] = hit ? static_cast<scalar_t>(acc) : scalar_t(0);
  }
};

// out[idx] = y[the input position switches[idx] names] (0 where it names
// none: outside the window or in the padding), so a bad switch never reads
// out of bounds.
template <typename scalar_t, bool channels_last>
struct GatherElement {
  const scalar_t* y;         // (N, C, H, W)
  const uint8_t* switches;   // (N, C, oH, oW)
  scalar_t* out;             // (N, C, oH, oW)
  PoolShape s;

  C10_HOST_DEVICE DECONVNET_EXT_INLINE void operator()(int64_t idx) const {
    const layout::Coord o = layout::decompose<channels_last>(idx, s.C, s.oH, s.oW);
    int64_t h = 0, w = 0;
    out[idx] = switch_position(switches[idx], o.y, o.x, s.p.h, s.p.w, s.H, s.W, &h, &w)
                   ? y[layout::offset<channels_last>(o.n, o.c, h, w, s.C, s.H, s.W)]
                   : scalar_t(0);
  }
};

}  // namespace pool
}  // namespace deconvnet_ext
