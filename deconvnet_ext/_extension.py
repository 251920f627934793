"""Loads the compiled extension, which registers torch.ops.deconvnet_ext.*."""
import contextlib
from typing import Iterator

import torch  # noqa: F401  (loads libc10 / libtorch before our extension)

try:
    from . import _C  # noqa: F401  (import runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - only on a broken install
    import glob
    import os
    _here = os.path.dirname(os.path.abspath(__file__))
    if (os.path.isfile(os.path.join(_here, os.pardir, "setup.py"))
            and not glob.glob(os.path.join(_here, "_C*"))):
        # `pip install .` then `python` in the checkout: the unbuilt source tree on
        # sys.path (the current directory) hides the installed package.
        raise ImportError(
            f"deconvnet_ext was imported from its source checkout ({_here}), which holds "
            "no compiled _C: run Python from another directory to use the installed "
            "package, or install in place with `pip install --no-build-isolation -e .`"
        ) from exc
    raise ImportError(
        "deconvnet_ext's compiled ops could not be loaded "
        f"({exc}). Build them against the torch you run with: "
        "`pip install --no-build-isolation -e .` from the source tree."
    ) from exc


def build_info() -> dict:
    """How this build was compiled: {'version', 'with_cuda', 'cuda_arch_list',
    'torch_version', 'torch_cuda_version', 'cpu_avx2_fma'}."""
    return dict(_C.build_info())


@contextlib.contextmanager
def portable_cpu_loops(on: bool = True) -> Iterator[None]:
    """Within the block the CPU ops run their portable loops (``on=True``: an
    at::parallel_for over the element functions of csrc/common/, the very functions
    the CUDA kernels run) or their fast paths (``on=False``: AVX2 / blocked loops).
    Process-wide, not thread-local: for tests and benchmarks."""
    previous = _C._set_portable_loops(bool(on))
    try:
        yield
    finally:
        _C._set_portable_loops(previous)
