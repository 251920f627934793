// aggregate_proposals on CPU (part 3: the loop, dispatch and registration;
// aggregate_proposals_plan.h places the proposals, aggregate_proposals_rows.h
// holds the per-row rules): paste K bilinearly resized score maps at their
// boxes and reduce them per pixel (max / sum / mean), fused: the K resized
// maps are never written; each output row reads the (at most two) map rows it
// interpolates between, resized horizontally once and kept while consecutive
// output rows reuse them.
//
// Work split: tasks are (image, class, band of output rows); a task owns its
// output rows, so threads never share an output element. Within a task the
// proposals of the image are applied in index order, so every output element
// is reduced over proposals in index order: "sum" equals the reference's
// sequential additions, and two runs agree bit for bit.
//
// Rounding follows csrc/common/bilinear.h: fused multiply-adds where the CPU
// has FMA (as torch's AVX2/AVX512 kernels compute), plain products otherwise.
//
// The portable loop (cpu::portable_loops()) is instead a parallel_for over
// AggregateElement, the per-pixel function the CUDA kernel runs; the tests
// check this fast path against it.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/aggregate_element.h"
#include "common/bilinear.h"
#include "common/bilinear_aggregate_args.h"
#include "cpu/aggregate_proposals_plan.h"
#include "cpu/aggregate_proposals_rows.h"
#include "cpu/element_loop.h"

namespace deconvnet_ext {
namespace aggregate {
namespace {

using bilinear::Taps;
using cpu::Columns;
using cpu::Lines;
using cpu::Placement;
using cpu::Plan;
using cpu::ScalarRows;
using cpu::make_plan;
#if DECONVNET_EXT_X86_AVX2
using cpu::Avx2Rows;
#endif

// The AVX2/FMA loops and torch's fused rounding go together: both follow
// cpu::has_avx2_fma() (DECONVNET_EXT_DISABLE_AVX2=1 takes the portable path).
bool cpu_has_avx2_fma() { return deconvnet_ext::cpu::has_avx2_fma(); }

// Whether this CPU computes torch's bilinear weights with fused multiply-adds
// (x86: its AVX2/AVX512 kernels, chosen where the CPU has AVX2+FMA; other
// architectures: compilers contract by default and FMA is always there).
bool fused_rounding() {
#if DECONVNET_EXT_X86_AVX2
  return cpu_has_avx2_fma();
#else
  return true;
#endif
}

// ------------------------------------------------------------ the loop
// Output rows per task. Whole planes when there are enough (image, class)
// planes to keep every thread busy: a task then streams each map plane from
// top to bottom once (prefetch-friendly) while its output plane stays in L2.
// Otherwise (few classes, e.g. C = 1) planes are split into bands.
int64_t band_rows(const Shape& s) {
  const int64_t planes = std::max<int64_t>(s.B * s.C, 1);
  const int64_t threads = std::max<int64_t>(at::get_num_threads(), 1);
  const int64_t least = std::max<int64_t>(1, (4 * threads + planes - 1) / planes);
  // Planes of one image cost the same: a task count divisible by the thread
  // count splits them evenly (21 classes on 2 threads: 2 bands, not 1).
  int64_t bands = least;
  while (bands < least * threads && (planes * bands) % threads != 0) ++bands;
  if ((planes * bands) % threads != 0) bands = least;
  return std::max<int64_t>(8, (s.H + bands - 1) / bands);
}

constexpr int64_t kPrefetchRows = 8;

template <typename T, bool kFused, typename Rows>
void aggregate_into(const Shape& s, const T* maps, const Plan<T>& plan, T* out) {
  const int64_t rows_per_band = band_rows(s);
  const int64_t bands = (s.H + rows_per_band - 1) / rows_per_band;
  const int64_t tasks = s.B * s.C * bands;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    // Two horizontally resized map rows, tagged with the map row they hold.
    std::vector<T> buffer(2 * static_cast<size_t>(s.W));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t band = task % bands;
      const int64_t c = (task / bands) % s.C;
      const int64_t b = task / (bands * s.C);
      const int64_t r0 = band * rows_per_band;
      const int64_t r1 = std::min(r0 + rows_per_band, s.H);
      T* plane = out + (b * s.C + c) * s.H * s.W;
      // The canvas starts at zero; zeroed here, by the thread that owns it.
      std::fill(plane + r0 * s.W, plane + r1 * s.W, T(0));
      const int64_t q_end = plan.image_start[b + 1];
      // The first proposal from q on that covers rows of this band.
      auto covering = [&](int64_t q) {
        for (; q < q_end; ++q) {
          const Placement& p = plan.placements[plan.order[q]];
          if (std::max(r0, p.cy0) < std::min(r1, p.cy1)) break;
        }
        return q;
      };
      // The map rows this task reads, asked for ahead of their reads: a cursor
      // kPrefetchRows output rows ahead over (proposal, output row), which
      // prefetches the part of each tap row the box's columns use, once,
      // crossing into the next proposal's map before the current one ends.
      int64_t ahead_q = covering(plan.image_start[b]);
      int64_t ahead_y = 0, ahead_last = -1;
      if (ahead_q < q_end) ahead_y = std::max(r0, plan.placements[plan.order[ahead_q]].cy0);
      auto next_lines = [&]() -> Lines {
        Lines lines{nullptr, nullptr};
        if (ahead_q >= q_end) return lines;
        const int64_t k = plan.order[ahead_q];
        const Placement& p = plan.placements[k];
        const Taps<T>& t = plan.row_taps[p.row_offset + (ahead_y - p.cy0)];
        // The rows not asked for yet: {i0, i1} or one of them, adjacent.
        const int64_t lo = std::max(t.i0, ahead_last + 1), hi = t.i1;
        if (lo <= hi) {
          ahead_last = hi;
          const int64_t first = plan.col_i0[p.col_offset];
          const int64_t last = plan.col_i1[p.col_offset + (p.cx1 - p.cx0) - 1];
          const T* map = maps + (k * s.C + c) * s.h * s.w;
          const char* from = reinterpret_cast<const char*>(map + lo * s.w + first);
          lines.from = from - reinterpret_cast<uintptr_t>(from) % 64;
          lines.to = reinterpret_cast<const char*>(map + hi * s.w + last + 1);
        }
        if (++ahead_y >= std::min(r1, p.cy1)) {
          ahead_q = covering(ahead_q + 1);
          ahead_last = -1;
          if (ahead_q < q_end) ahead_y = std::max(r0, plan.placements[plan.order[ahead_q]].cy0);
        }
        return lines;
      };
      for (int64_t d = 0; d < kPrefetchRows; ++d) {
        const Lines lines = next_lines();
        for (const char* line = lines.from; line < lines.to; line += 64) __builtin_prefetch(line);
      }
      for (int64_t q = plan.image_start[b]; q < q_end; ++q) {
        const int64_t k = plan.order[q];
        const Placement& p = plan.placements[k];
        const int64_t y_begin = std::max(r0, p.cy0);
        const int64_t y_end = std::min(r1, p.cy1);
        if (y_begin >= y_end) continue;
        const T* map = maps + (k * s.C + c) * s.h * s.w;
        const int64_t n = p.cx1 - p.cx0;
        const int64_t j = p.col_offset;
        const Columns<T> columns{plan.col_i0.data() + j, plan.col_i1.data() + j,
                                 plan.col_l0.data() + j, plan.col_l1.data() + j,
                                 plan.window_base.data() + p.window_offset,
                                 plan.col_rel0.data() + j, plan.col_rel1.data() + j,
                                 static_cast<int32_t>(p.window_span)};
        int64_t held[2] = {-1, -1};
        T* slot[2] = {buffer.data(), buffer.data() + s.W};
        // The slot holding map row `i`, resizing it into a slot other than
        // `keep` (the one the other tap of this output row needs) if absent.
        auto row = [&](int64_t i, int keep) -> int {
          if (held[0] == i) return 0;
          if (held[1] == i) return 1;
          const int use = (keep == 0) ? 1 : 0;
          Rows::horizontal(map + i * s.w, columns, slot[use], n);
          held[use] = i;
          return use;
        };
        for (int64_t y = y_begin; y < y_end; ++y) {
          Lines lines = next_lines();
          const Taps<T>& t = plan.row_taps[p.row_offset + (y - p.cy0)];
          // Resizing the first tap must not evict the second if it is held.
          const int s0 = row(t.i0, held[0] == t.i1 ? 0 : (held[1] == t.i1 ? 1 : -1));
          const int s1 = row(t.i1, s0);
          // The prefetches spread over the vertical step (a burst of them
          // stalls once the core's miss queue is full), the rest after it.
          Rows::vertical(s.mode, plane + y * s.W + p.cx0, slot[s0], slot[s1], t.l0, t.l1, n, lines);
          for (; lines.from < lines.to; lines.from += 64) __builtin_prefetch(lines.from);
        }
      }
      const int64_t count = plan.image_start[b + 1] - plan.image_start[b];
      if (s.mode == Mode::kMean && count > 0) {
        const T divisor = static_cast<T>(count);
        for (T* o = plane + r0 * s.W; o < plane + r1 * s.W; ++o) *o = *o / divisor;
      }
    }
  });
}

template <typename T, bool kFused, typename Rows>
void run(const Shape& s, const at::Tensor& maps, const at::Tensor& boxes,
         const at::Tensor& image_index, at::Tensor& out) {
  const Plan<T> plan = make_plan<T, kFused>(s, boxes, image_index);
  aggregate_into<T, kFused, Rows>(s, maps.const_data_ptr<T>(), plan, out.data_ptr<T>());
}

// Dispatches on dtype and on the CPU's FMA support; `out` is a
// (B, C, H, W) tensor of maps' dtype (float32 or float64).
void aggregate_dispatch(const Shape& s, const at::Tensor& maps, const at::Tensor& boxes,
                        const at::Tensor& image_index, at::Tensor& out) {
  const bool fused = fused_rounding();
  if (maps.scalar_type() == at::kFloat) {
#if DECONVNET_EXT_X86_AVX2
    if (cpu_has_avx2_fma()) return run<float, true, Avx2Rows>(s, maps, boxes, image_index, out);
    return run<float, false, ScalarRows<float, false>>(s, maps, boxes, image_index, out);
#else
    return run<float, true, ScalarRows<float, true>>(s, maps, boxes, image_index, out);
#endif
  }
  if (fused) return run<double, true, ScalarRows<double, true>>(s, maps, boxes, image_index, out);
  return run<double, false, ScalarRows<double, false>>(s, maps, boxes, image_index, out);
}

// The portable loop: a parallel_for over AggregateElement
// (csrc/common/aggregate_element.h), the function the CUDA kernel runs, on the
// maps' own dtype (float16 / bfloat16 read into float32 and rounded once, as
// there), with the rounding this CPU's torch uses (fused_rounding()).
at::Tensor aggregate_portable(const Shape& s, const at::Tensor& maps, const at::Tensor& boxes,
                              const std::optional<at::Tensor>& image_index) {
  const at::Tensor maps_c = maps.contiguous();
  const at::Tensor boxes_c = boxes.to(at::kLong).contiguous();
  const at::Tensor index_c = s.batched ? image_index->to(at::kLong).contiguous() : at::Tensor();
  cpu::check_values(s, boxes_c, index_c);
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, maps_c.options());
  const bool fused = fused_rounding();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, maps_c.scalar_type(),
                                  "aggregate_proposals", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* m = maps_c.const_data_ptr<scalar_t>();
    const int64_t* b = boxes_c.const_data_ptr<int64_t>();
    const int64_t* index = s.batched ? index_c.const_data_ptr<int64_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t work = 4 + 4 * s.K;
    if (fused) {
      deconvnet_ext::cpu::for_each_element(
          AggregateElement<scalar_t, opmath_t, true>{m, b, index, o, s}, out.numel(), work);
    } else {
      deconvnet_ext::cpu::for_each_element(
          AggregateElement<scalar_t, opmath_t, false>{m, b, index, o, s}, out.numel(), work);
    }
  });
  return s.batched ? out : out.select(0, 0);
}

at::Tensor aggregate_proposals_cpu(const at::Tensor& maps, const at::Tensor& boxes,
                                   const std::optional<at::Tensor>& image_index,
                                   c10::IntArrayRef image_size, int64_t num_images,
                                   c10::string_view mode) {
  const Shape s = check_args(maps, boxes, image_index, image_size, num_images, std::string(mode));
  const auto dtype = maps.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "aggregate_proposals: maps dtype must be float32, float64, float16 or bfloat16, got ",
              dtype);
  if (deconvnet_ext::cpu::portable_loops()) return aggregate_portable(s, maps, boxes, image_index);
  // float16 / bfloat16 are resized and reduced in float32, rounded once at the end.
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  const at::Tensor maps_c = (reduced ? maps.to(at::kFloat) : maps).contiguous();
  const at::Tensor boxes_c = boxes.to(at::kLong).contiguous();
  const at::Tensor index_c =
      s.batched ? image_index->to(at::kLong).contiguous() : at::Tensor();
  // Every element is written by the task that owns it (zeroed first).
  at::Tensor out = at::empty({s.B, s.C, s.H, s.W}, maps_c.options());
  if (out.numel() > 0) aggregate_dispatch(s, maps_c, boxes_c, index_c, out);
  else if (s.K > 0) make_plan<float, true>(s, boxes_c, index_c);  // still check the values
  if (reduced) out = out.to(dtype);
  return s.batched ? out : out.select(0, 0);
}

}  // namespace

TORCH_LIBRARY_IMPL(deconvnet_ext, CPU, m) {
  m.impl("aggregate_proposals", &aggregate_proposals_cpu);
}

}  // namespace aggregate
}  // namespace deconvnet_ext
