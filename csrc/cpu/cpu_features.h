// Which CPU loops run.
//
// - The AVX2/FMA loops are compiled per function with
//   __attribute__((target("avx2,fma"))), never with -march=native, so one build
//   runs everywhere; has_avx2_fma() says whether this CPU takes them.
//   DECONVNET_EXT_DISABLE_AVX2=1 says no (and the aggregation then rounds as
//   torch's non-FMA kernels do).
// - The portable loops: at::parallel_for over the element functions of
//   csrc/common/ (the lines the CUDA kernels run). portable_loops() says
//   whether the ops take them instead of their fast paths: initially when
//   DECONVNET_EXT_DISABLE_AVX2=1, and switchable at run time
//   (deconvnet_ext._C._set_portable_loops), so the tests run the whole op sweep
//   through both without a second process.
#pragma once

#include <atomic>
#include <cstdlib>

namespace deconvnet_ext {
namespace cpu {

inline bool avx2_disabled_by_env() {
  const char* off = std::getenv("DECONVNET_EXT_DISABLE_AVX2");
  return off != nullptr && off[0] != '\0' && off[0] != '0';
}

inline bool has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool yes = [] {
    if (avx2_disabled_by_env()) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

// One flag per process (an inline function's static is shared by every
// translation unit of the library).
inline std::atomic<bool>& portable_loops_flag() {
  static std::atomic<bool> flag{avx2_disabled_by_env()};
  return flag;
}

inline bool portable_loops() { return portable_loops_flag().load(std::memory_order_relaxed); }

// Returns the previous setting.
inline bool set_portable_loops(bool on) { return portable_loops_flag().exchange(on); }

}  // namespace cpu
}  // namespace deconvnet_ext

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DECONVNET_EXT_X86_AVX2 1
#define DECONVNET_EXT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DECONVNET_EXT_X86_AVX2 0
#define DECONVNET_EXT_TARGET_AVX2
#endif
