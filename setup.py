"""Build deconvnet_ext: the C++ ops always, the CUDA kernels when they can be built.

CUDA kernels are compiled when torch is a CUDA build and a CUDA toolkit is found
(CUDA_HOME), unless DECONVNET_EXT_CUDA=0; DECONVNET_EXT_CUDA=1 makes a missing
toolkit an error instead of a silent CPU-only build. TORCH_CUDA_ARCH_LIST picks the
GPU architectures (torch's default otherwise). Build against the torch you will run
with: `pip install --no-build-isolation .`.
"""
import glob
import os
import re

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version() -> str:
    with open(os.path.join(HERE, "deconvnet_ext", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def want_cuda() -> bool:
    flag = os.environ.get("DECONVNET_EXT_CUDA", "").strip()
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "0":
        return False
    if flag == "1":
        if not available:
            raise RuntimeError(
                "DECONVNET_EXT_CUDA=1 but the CUDA kernels cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, "
                f"CUDA_HOME={cpp_extension.CUDA_HOME!r} (set CUDA_HOME=/usr/local/cuda or similar)")
        return True
    if flag:
        raise RuntimeError(f"DECONVNET_EXT_CUDA must be 0 or 1, got {flag!r}")
    return available


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def extensions():
    version = read_version()
    with_cuda = want_cuda()
    sources = rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))
                  + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    # Never -march=native: the AVX2 loops are compiled per function with
    # target attributes and chosen at run time (csrc/cpu/cpu_features.h).
    # -fopenmp: at::parallel_for is inlined into our kernels and runs serially unless
    # they are compiled with OpenMP (torch's own build is). The link resolves to the
    # libgomp.so.1 torch already loaded (same soname), so there is one thread pool.
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    macros = [
        ("DECONVNET_EXT_VERSION", f'"{version}"'),
        ("DECONVNET_EXT_TORCH_VERSION", f'"{torch.__version__.split("+")[0]}"'),
    ]
    if with_cuda:
        sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "default (torch's)")
        macros += [("WITH_CUDA", None), ("DECONVNET_EXT_CUDA_ARCH_LIST", f'"{arch}"')]
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr",
                                      "-lineinfo"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    print(f"deconvnet_ext {version}: building {'CPU + CUDA' if with_cuda else 'CPU-only'} "
          f"against torch {torch.__version__}")
    return [ext_cls(
        name="deconvnet_ext._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )]


setup(
    version=read_version(),
    packages=find_packages(include=["deconvnet_ext", "deconvnet_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
