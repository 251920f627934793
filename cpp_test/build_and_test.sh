#!/usr/bin/env bash
# Builds the op library and the C++ test with CMake against the installed
# torch's libtorch (Ninja, into ./cmake-build) and runs them with ctest.
# Extra arguments go to the CMake configure step, e.g.
#   bash cpp_test/build_and_test.sh -DDECONVNET_EXT_WITH_CUDA=ON \
#     -DCUDAToolkit_ROOT=/usr/local/cuda -DCUDA_TOOLKIT_ROOT_DIR=/usr/local/cuda \
#     -DCUDA_nvrtc_LIBRARY=<site-packages>/nvidia/cu13/lib/libnvrtc.so.13
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python}"
if ! command -v cmake >/dev/null 2>&1; then
  "$PYTHON" -m pip install cmake   # a bare CI machine: CMake comes from PyPI
fi
if ! command -v ninja >/dev/null 2>&1; then
  "$PYTHON" -m pip install ninja
fi

TORCH_PREFIX="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
TORCH_CUDA="$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')"

# A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit
# (see CMakeLists.txt): point it at the toolkit and at the nvrtc that came
# with torch's pip wheels; without a toolkit, link libtorch's CPU part directly.
CUDA_ARGS=()
if [ -n "$TORCH_CUDA" ]; then
  CUDA_ROOT="${CUDA_HOME:-/usr/local/cuda}"
  if [ -x "$CUDA_ROOT/bin/nvcc" ]; then
    CUDA_ARGS+=(-DCUDAToolkit_ROOT="$CUDA_ROOT" -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT")
    NVRTC="$("$PYTHON" - <<'PY'
import glob, os, site
paths = [p for d in site.getsitepackages() for p in glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so.*"))]
print(sorted(paths)[0] if paths else "")
PY
)"
    if [ -n "$NVRTC" ]; then
      CUDA_ARGS+=(-DCUDA_nvrtc_LIBRARY="$NVRTC")
    fi
  else
    echo "build_and_test.sh: torch is a CUDA build but no CUDA toolkit at $CUDA_ROOT: linking libtorch's CPU libraries directly"
    CUDA_ARGS+=(-DDECONVNET_EXT_LIBTORCH_CPU_ONLY=ON)
  fi
fi

cmake -S . -B cmake-build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${CUDA_ARGS[@]}" "$@"
cmake --build cmake-build --parallel "${MAX_JOBS:-2}"
ctest --test-dir cmake-build --output-on-failure
