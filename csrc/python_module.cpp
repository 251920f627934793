// The Python extension module deconvnet_ext._C: importing it runs the static
// registrations of every op (ops.cpp and the per-device kernel files), and it
// reports how the library was built. The CMake build leaves this file out.
#include <torch/extension.h>

#include <string>

#include "cpu/cpu_features.h"

#ifndef DECONVNET_EXT_VERSION
#define DECONVNET_EXT_VERSION "unknown"
#endif
#ifndef DECONVNET_EXT_TORCH_VERSION
#define DECONVNET_EXT_TORCH_VERSION "unknown"
#endif
#ifndef DECONVNET_EXT_TORCH_CUDA_VERSION
#define DECONVNET_EXT_TORCH_CUDA_VERSION ""  // torch.version.cuda at build time; "" = CPU torch
#endif
#ifndef DECONVNET_EXT_CUDA_ARCH_LIST
#define DECONVNET_EXT_CUDA_ARCH_LIST ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "deconvnet_ext compiled ops (registered under torch.ops.deconvnet_ext)";
  m.def("build_info", []() {
    pybind11::dict info;
    info["version"] = DECONVNET_EXT_VERSION;
#ifdef WITH_CUDA
    info["with_cuda"] = true;
#else
    info["with_cuda"] = false;
#endif
    info["cuda_arch_list"] = std::string(DECONVNET_EXT_CUDA_ARCH_LIST);
    info["torch_version"] = DECONVNET_EXT_TORCH_VERSION;
    info["torch_cuda_version"] = std::string(DECONVNET_EXT_TORCH_CUDA_VERSION);
    info["cpu_avx2_fma"] = deconvnet_ext::cpu::has_avx2_fma();
    return info;
  }, "How this build of deconvnet_ext was compiled: version, CUDA kernels or not, "
     "CUDA arch list, torch version (and its CUDA version) built against, and whether this CPU takes "
     "the AVX2/FMA paths.");
  m.def("_set_portable_loops", &deconvnet_ext::cpu::set_portable_loops, pybind11::arg("on"),
        "Makes the CPU ops run their portable loops (a parallel_for over the element "
        "functions the CUDA kernels run) instead of their fast paths, or not; returns the "
        "previous setting. Initially on when DECONVNET_EXT_DISABLE_AVX2=1. For tests.");
  m.def("_portable_loops", &deconvnet_ext::cpu::portable_loops,
        "Whether the CPU ops run their portable loops.");
}
