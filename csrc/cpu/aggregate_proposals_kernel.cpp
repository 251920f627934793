// aggregate_proposals on CPU: paste K bilinearly resized score maps at their
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
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/bilinear.h"
#include "common/bilinear_aggregate_args.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DECONVNET_EXT_AGG_X86 1
#else
#define DECONVNET_EXT_AGG_X86 0
#endif

namespace deconvnet_ext {
namespace aggregate {
namespace {

using bilinear::Taps;

// DECONVNET_EXT_NO_AVX2=1 in the environment takes the portable path (as on a
// CPU without AVX2/FMA), so tests on an AVX2 machine can check that path too.
bool cpu_has_avx2_fma() {
#if DECONVNET_EXT_AGG_X86
  static const bool yes = [] {
    const char* off = std::getenv("DECONVNET_EXT_NO_AVX2");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

// Whether this CPU computes torch's bilinear weights with fused multiply-adds
// (x86: its AVX2/AVX512 kernels, chosen where the CPU has AVX2+FMA; other
// architectures: compilers contract by default and FMA is always there).
bool fused_rounding() {
#if DECONVNET_EXT_AGG_X86
  return cpu_has_avx2_fma();
#else
  return true;
#endif
}

// ---------------------------------------------------------------- geometry
// Where proposal k lands: its box clipped to the image, and where its row and
// column taps start in the shared tap arrays.
struct Placement {
  int64_t cy0, cy1, cx0, cx1;  // clipped box, [cy0, cy1) x [cx0, cx1); empty if cy0 >= cy1
  int64_t row_offset;          // first row tap of this proposal
  int64_t col_offset;          // first column tap of this proposal
  int64_t window_offset;       // first 8-column window of this proposal
};

template <typename T>
struct Plan {
  std::vector<Placement> placements;   // (K,)
  std::vector<Taps<T>> row_taps;       // per clipped row of every proposal
  std::vector<int32_t> col_i0, col_i1; // per clipped column of every proposal
  std::vector<T> col_l0, col_l1;
  // The same taps as 8-column windows for the SIMD path: window q of a
  // proposal covers its clipped columns [8q, 8q + 8); its taps lie in the 16
  // map columns [base, base + 16) (base = -1: they don't, gather instead).
  // rel: the tap's offset from base, low 3 bits = lane, sign bit = second half.
  std::vector<int32_t> window_base;    // per full window of every proposal
  std::vector<int32_t> col_rel0, col_rel1;
  std::vector<int64_t> order;          // proposals grouped by image, index order within
  std::vector<int64_t> image_start;    // (B + 1,) offsets into order
};

constexpr int32_t kSecondHalf = INT32_MIN;  // sign bit: lane of the second 8 columns

template <typename T>
void add_windows(Plan<T>& plan, Placement& p, int64_t w) {
  p.window_offset = static_cast<int64_t>(plan.window_base.size());
  const int64_t n = p.cx1 - p.cx0;
  for (int64_t q = 0; q + 8 <= n; q += 8) {
    const int64_t j = p.col_offset + q;
    const int64_t first = plan.col_i0[j];
    const int64_t last = plan.col_i1[j + 7];
    int64_t base = -1;
    if (w >= 16 && last - first < 16) base = std::min<int64_t>(first, w - 16);
    plan.window_base.push_back(static_cast<int32_t>(base));
    for (int64_t x = 0; x < 8 && base >= 0; ++x) {
      const int64_t r0 = plan.col_i0[j + x] - base, r1 = plan.col_i1[j + x] - base;
      plan.col_rel0[j + x] = static_cast<int32_t>(r0 & 7) | (r0 >= 8 ? kSecondHalf : 0);
      plan.col_rel1[j + x] = static_cast<int32_t>(r1 & 7) | (r1 >= 8 ? kSecondHalf : 0);
    }
  }
}

// Box values and image indices checked here (the CPU sees the data for free).
template <typename T, bool kFused>
Plan<T> make_plan(const Shape& s, const at::Tensor& boxes, const at::Tensor& image_index) {
  Plan<T> plan;
  const int64_t* box = boxes.const_data_ptr<int64_t>();
  const int64_t* img = s.batched ? image_index.const_data_ptr<int64_t>() : nullptr;
  constexpr int64_t kCoordLimit = int64_t{1} << 30;
  plan.placements.resize(s.K);
  plan.image_start.assign(s.B + 1, 0);
  int64_t rows = 0, cols = 0;
  for (int64_t k = 0; k < s.K; ++k) {
    const int64_t x0 = box[4 * k], y0 = box[4 * k + 1], x1 = box[4 * k + 2], y1 = box[4 * k + 3];
    TORCH_CHECK(x1 > x0 && y1 > y0, "aggregate_proposals: boxes row ", k, " = [", x0, ", ", y0,
                ", ", x1, ", ", y1, "] is empty (need x1 > x0 and y1 > y0)");
    TORCH_CHECK(std::max({std::abs(x0), std::abs(y0), std::abs(x1), std::abs(y1)}) <= kCoordLimit,
                "aggregate_proposals: boxes row ", k, " has a coordinate beyond +-2^30");
    const int64_t b = s.batched ? img[k] : 0;
    TORCH_CHECK(b >= 0 && b < s.B, "aggregate_proposals: image_index[", k, "] = ", b,
                " is outside [0, num_images=", s.B, ")");
    plan.image_start[b + 1] += 1;
    Placement& p = plan.placements[k];
    p.cy0 = std::max<int64_t>(y0, 0);
    p.cy1 = std::min<int64_t>(y1, s.H);
    p.cx0 = std::max<int64_t>(x0, 0);
    p.cx1 = std::min<int64_t>(x1, s.W);
    if (p.cy0 >= p.cy1 || p.cx0 >= p.cx1) {  // entirely outside the image
      p.cy1 = p.cy0;
      p.cx1 = p.cx0;
    }
    p.row_offset = rows;
    p.col_offset = cols;
    rows += p.cy1 - p.cy0;
    cols += p.cx1 - p.cx0;
  }
  plan.row_taps.resize(rows);
  plan.col_i0.resize(cols);
  plan.col_i1.resize(cols);
  plan.col_l0.resize(cols);
  plan.col_l1.resize(cols);
  plan.col_rel0.resize(cols);
  plan.col_rel1.resize(cols);
  plan.window_base.reserve(cols / 8 + 1);
  for (int64_t k = 0; k < s.K; ++k) {
    Placement& p = plan.placements[k];
    const int64_t x0 = box[4 * k], y0 = box[4 * k + 1], x1 = box[4 * k + 2], y1 = box[4 * k + 3];
    for (int64_t y = p.cy0; y < p.cy1; ++y) {
      plan.row_taps[p.row_offset + (y - p.cy0)] =
          bilinear::source_taps<kFused, T>(s.h, y1 - y0, y - y0);
    }
    for (int64_t x = p.cx0; x < p.cx1; ++x) {
      const Taps<T> t = bilinear::source_taps<kFused, T>(s.w, x1 - x0, x - x0);
      const int64_t j = p.col_offset + (x - p.cx0);
      plan.col_i0[j] = static_cast<int32_t>(t.i0);
      plan.col_i1[j] = static_cast<int32_t>(t.i1);
      plan.col_l0[j] = t.l0;
      plan.col_l1[j] = t.l1;
    }
    add_windows(plan, p, s.w);
  }
  // Counting sort by image, stable: index order within each image.
  for (int64_t b = 0; b < s.B; ++b) plan.image_start[b + 1] += plan.image_start[b];
  plan.order.resize(s.K);
  std::vector<int64_t> fill(plan.image_start.begin(), plan.image_start.end() - 1);
  for (int64_t k = 0; k < s.K; ++k) plan.order[fill[s.batched ? img[k] : 0]++] = k;
  return plan;
}

// ------------------------------------------------------- per-row rules
// The column taps of one proposal (pointers into its Plan).
template <typename T>
struct Columns {
  const int32_t* i0;
  const int32_t* i1;
  const T* l0;
  const T* l1;
  const int32_t* window_base;
  const int32_t* rel0;
  const int32_t* rel1;
};

// dst[x] = src[i0[x]] * l0[x] + src[i1[x]] * l1[x]: one map row resized horizontally.
// out[x] = reduce(out[x], t0[x] * l0 + t1[x] * l1): the vertical step and the
// reduction into the canvas ("mean" reduces as "sum" and divides at the end).
template <typename T, bool kFused>
struct ScalarRows {
  static void horizontal(const T* src, const Columns<T>& col, T* dst, int64_t n) {
    for (int64_t x = 0; x < n; ++x) {
      dst[x] = bilinear::lerp<kFused>(src[col.i0[x]], col.l0[x], src[col.i1[x]], col.l1[x]);
    }
  }
  static void vertical(Mode mode, T* out, const T* t0, const T* t1, T l0, T l1, int64_t n) {
    if (mode == Mode::kMax) {
      for (int64_t x = 0; x < n; ++x) {
        const T v = bilinear::lerp<kFused>(t0[x], l0, t1[x], l1);
        // torch.maximum: a NaN on either side wins (a NaN canvas stays NaN).
        if (v > out[x] || std::isnan(v)) out[x] = v;
      }
    } else {
      for (int64_t x = 0; x < n; ++x) out[x] += bilinear::lerp<kFused>(t0[x], l0, t1[x], l1);
    }
  }
};

#if DECONVNET_EXT_AGG_X86
// float32 with AVX2 + FMA, the same fused rounding as ScalarRows<float, true>.
struct Avx2Rows {
  // Taps within a 16-column window: two loads and in-register permutes
  // (vpermps picks lanes by the low 3 bits, the sign bit picks the half);
  // otherwise (boxes under ~0.55x the map width) hardware gathers.
  __attribute__((target("avx2,fma"))) static __m256 pick(__m256 lo, __m256 hi, __m256i rel) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, rel), _mm256_permutevar8x32_ps(hi, rel),
                            _mm256_castsi256_ps(rel));
  }

  __attribute__((target("avx2,fma"))) static void horizontal(
      const float* src, const Columns<float>& col, float* dst, int64_t n) {
    int64_t x = 0;
    for (; x + 8 <= n; x += 8) {
      const int32_t base = col.window_base[x / 8];
      __m256 a, b;
      if (base >= 0) {
        const __m256 lo = _mm256_loadu_ps(src + base);
        const __m256 hi = _mm256_loadu_ps(src + base + 8);
        a = pick(lo, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col.rel0 + x)));
        b = pick(lo, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col.rel1 + x)));
      } else {
        a = _mm256_i32gather_ps(
            src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col.i0 + x)), 4);
        b = _mm256_i32gather_ps(
            src, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col.i1 + x)), 4);
      }
      const __m256 bl = _mm256_mul_ps(b, _mm256_loadu_ps(col.l1 + x));
      _mm256_storeu_ps(dst + x, _mm256_fmadd_ps(a, _mm256_loadu_ps(col.l0 + x), bl));
    }
    for (; x < n; ++x) dst[x] = std::fma(src[col.i0[x]], col.l0[x], src[col.i1[x]] * col.l1[x]);
  }

  __attribute__((target("avx2,fma"))) static void vertical(
      Mode mode, float* out, const float* t0, const float* t1, float l0, float l1, int64_t n) {
    const __m256 vl0 = _mm256_set1_ps(l0);
    const __m256 vl1 = _mm256_set1_ps(l1);
    int64_t x = 0;
    if (mode == Mode::kMax) {
      for (; x + 8 <= n; x += 8) {
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + x), vl0,
                                         _mm256_mul_ps(_mm256_loadu_ps(t1 + x), vl1));
        const __m256 o = _mm256_loadu_ps(out + x);
        // max_ps(o, v) returns v when either is NaN; keep o where o is NaN.
        const __m256 m = _mm256_max_ps(o, v);
        _mm256_storeu_ps(out + x, _mm256_blendv_ps(m, o, _mm256_cmp_ps(o, o, _CMP_UNORD_Q)));
      }
      for (; x < n; ++x) {
        const float v = std::fma(t0[x], l0, t1[x] * l1);
        if (v > out[x] || std::isnan(v)) out[x] = v;
      }
    } else {
      for (; x + 8 <= n; x += 8) {
        const __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(t0 + x), vl0,
                                         _mm256_mul_ps(_mm256_loadu_ps(t1 + x), vl1));
        _mm256_storeu_ps(out + x, _mm256_add_ps(_mm256_loadu_ps(out + x), v));
      }
      for (; x < n; ++x) out[x] += std::fma(t0[x], l0, t1[x] * l1);
    }
  }
};
#endif

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

constexpr int64_t kPrefetchRows = 10;

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
      for (int64_t q = plan.image_start[b]; q < plan.image_start[b + 1]; ++q) {
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
                                 plan.col_rel0.data() + j, plan.col_rel1.data() + j};
        int64_t held[2] = {-1, -1};
        T* slot[2] = {buffer.data(), buffer.data() + s.W};
        // The slot holding map row `i`, resizing it into a slot other than
        // `keep` (the one the other tap of this output row needs) if absent.
        auto row = [&](int64_t i, int keep) -> int {
          if (held[0] == i) return 0;
          if (held[1] == i) return 1;
          const int use = (keep == 0) ? 1 : 0;
          // The map plane is walked top to bottom: ask for the rows a few
          // steps ahead now (the gathers below stall on cache misses otherwise).
          if (i + kPrefetchRows < s.h) {
            const char* ahead = reinterpret_cast<const char*>(map + (i + kPrefetchRows) * s.w);
            for (int64_t byte = 0; byte < s.w * static_cast<int64_t>(sizeof(T)); byte += 64) {
              __builtin_prefetch(ahead + byte);
            }
          }
          Rows::horizontal(map + i * s.w, columns, slot[use], n);
          held[use] = i;
          return use;
        };
        for (int64_t y = y_begin; y < y_end; ++y) {
          const Taps<T>& t = plan.row_taps[p.row_offset + (y - p.cy0)];
          const int s0 = row(t.i0, -1);
          const int s1 = row(t.i1, s0);
          Rows::vertical(s.mode, plane + y * s.W + p.cx0, slot[s0], slot[s1], t.l0, t.l1, n);
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
#if DECONVNET_EXT_AGG_X86
    if (cpu_has_avx2_fma()) return run<float, true, Avx2Rows>(s, maps, boxes, image_index, out);
    return run<float, false, ScalarRows<float, false>>(s, maps, boxes, image_index, out);
#else
    return run<float, true, ScalarRows<float, true>>(s, maps, boxes, image_index, out);
#endif
  }
  if (fused) return run<double, true, ScalarRows<double, true>>(s, maps, boxes, image_index, out);
  return run<double, false, ScalarRows<double, false>>(s, maps, boxes, image_index, out);
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
