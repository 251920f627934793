// Run-time CPU feature check for the AVX2/FMA loops. They are compiled per
// function with __attribute__((target("avx2,fma"))), never with -march=native,
// so one build runs everywhere and takes the fast path where the CPU has it.
#pragma once

namespace deconvnet_ext {
namespace cpu {

inline bool has_avx2_fma() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
