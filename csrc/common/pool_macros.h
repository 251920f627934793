// Inlining of the shared pooling helpers. They must inline into the AVX2
// loops, which are compiled with __attribute__((target("avx2,fma"))): GCC does
// not inline a plain `inline` function across differing target options (it
// calls it, which also blocks vectorization), but always_inline it does.
#pragma once

#if defined(__CUDACC__)
#define DECONVNET_EXT_INLINE __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define DECONVNET_EXT_INLINE inline __attribute__((always_inline))
#else
#define DECONVNET_EXT_INLINE inline
#endif
