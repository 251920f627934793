// Asks Linux to back a large, freshly allocated output with transparent huge
// pages before the kernel first writes it. A 51 MB output (unpooling a
// (16,64,56,56) map) otherwise takes ~12k page faults, which cost more than
// the unpool itself; with 2 MB pages the faults almost vanish. This is what
// torch's own CPU allocator does under THP_MEM_ALLOC_ENABLE=1, applied only to
// our outputs. Advice only: nothing changes if the kernel ignores it (THP off,
// non-Linux). DECONVNET_EXT_NO_HUGEPAGES=1 turns it off.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace deconvnet_ext {
namespace cpu {

inline void advise_huge_pages(void* data, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(1) << 21;
  static const bool enabled = [] {
    const char* off = std::getenv("DECONVNET_EXT_NO_HUGEPAGES");
    return off == nullptr || off[0] == '\0' || off[0] == '0';
  }();
  if (!enabled || bytes < 2 * kHuge) return;
  // Only whole 2 MB pages inside the buffer: the advice never touches memory
  // that is not ours.
  const std::uintptr_t begin = (reinterpret_cast<std::uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t end = (reinterpret_cast<std::uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) {
    (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace deconvnet_ext
