// Run-time CPU feature check for the AVX2/FMA loops. They are compiled per
// function with __attribute__((target("avx2,fma"))), never with -march=native,
// so one build runs everywhere and takes the fast path where the CPU has it.
// DECONVNET_EXT_DISABLE_AVX2=1 forces the portable loops (tests use it to check
// them on machines that have AVX2).
#pragma once

#include <cstdlib>

namespace deconvnet_ext {
namespace cpu {

inline bool has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool yes = [] {
    const char* off = std::getenv("DECONVNET_EXT_DISABLE_AVX2");
    if (off != nullptr && off[0] != '\0' && off[0] != '0') return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace deconvnet_ext

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DECONVNET_EXT_X86_AVX2 1
#define DECONVNET_EXT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DECONVNET_EXT_X86_AVX2 0
#define DECONVNET_EXT_TARGET_AVX2
#endif
