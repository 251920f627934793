"""Build deconvnet_ext: the C++ ops always, the CUDA kernels when they can be built.

What to build is decided by deconvnet_ext/build_config.py (loaded by path: the package
itself needs the extension this builds): the toolkit from CUDA_HOME, CUDA_PATH or the nvcc
on PATH; CUDA when torch is a CUDA build and the toolkit's CUDA major matches it, else a
CPU-only build with one warning (DECONVNET_EXT_CUDA=1 makes that an error, =0 skips CUDA);
the architectures from TORCH_CUDA_ARCH_LIST, else the visible GPU, else every one the
installed torch supports. Build against the torch you will run with:
`pip install --no-build-isolation .`.
"""
import glob
import importlib.util
import os
import re
import sys

from setuptools import find_packages, setup

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_build_config():
    path = os.path.join(HERE, "deconvnet_ext", "build_config.py")
    spec = importlib.util.spec_from_file_location("deconvnet_ext_build_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


build_config = load_build_config()
try:
    CHOICE = build_config.choose(os.environ, torch)
except build_config.BuildConfigError as exc:
    sys.exit(f"deconvnet_ext: {exc}")
for warning in CHOICE.warnings:
    print(warning, file=sys.stderr)
if CHOICE.with_cuda:
    # cpp_extension reads both when it is imported / when it compiles.
    os.environ["CUDA_HOME"] = CHOICE.cuda_home
    os.environ["TORCH_CUDA_ARCH_LIST"] = CHOICE.arch_list
    # Several architectures cost compile time: use every core unless told otherwise.
    os.environ.setdefault("MAX_JOBS", str(max(1, len(os.sched_getaffinity(0)))))

from torch.utils import cpp_extension  # noqa: E402  (after CUDA_HOME is settled)


def read_version() -> str:
    with open(os.path.join(HERE, "deconvnet_ext", "_version.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def extensions():
    version = read_version()
    with_cuda = CHOICE.with_cuda
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
        ("DECONVNET_EXT_TORCH_CUDA_VERSION", f'"{torch.version.cuda or ""}"'),
    ]
    if with_cuda:
        sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
        macros += [("WITH_CUDA", None),
                   ("DECONVNET_EXT_CUDA_ARCH_LIST", f'"{CHOICE.arch_list}"')]
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr",
                                      "-lineinfo"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    print(f"deconvnet_ext {version} against torch {torch.__version__}: {CHOICE.summary()}",
          file=sys.stderr)
    return [ext_cls(
        name="deconvnet_ext._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )]


def license_metadata() -> dict:
    # setuptools >= 77 wants an SPDX expression and deprecates the free-text field;
    # older ones (the GPU machine's, which has no registry to upgrade from) know only that.
    import setuptools
    major = int(setuptools.__version__.split(".")[0])
    return {"license_expression": "MIT"} if major >= 77 else {"license": "MIT"}


setup(
    version=read_version(),
    **license_metadata(),
    packages=find_packages(include=["deconvnet_ext", "deconvnet_ext.*"]),
    package_data={"deconvnet_ext": ["weights/*.pt"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
