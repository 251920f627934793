"""Python face of the fused pooling ops (torch.ops.deconvnet_ext.*): the pinned public
wrappers, their fake (meta) kernels for torch.compile, and their autograd.

    out, sw = max_pool2d_with_switches(x, kernel_size, stride=None, padding=0,
                                       dilation=1, ceil_mode=False)
    y = max_unpool2d_with_switches(out, sw, kernel_size, stride=None, padding=0,
                                   dilation=1, output_size=(H, W))
    idx = switches_to_indices(sw, kernel_size, stride=None, padding=0, dilation=1,
                              input_size=(H, W))

Switch convention: see deconvnet_ext/reference.py (s = i * kW + j inside the window).
Autograd (registered in C++, csrc/autograd.cpp): pool backward = unpool of the gradient;
unpool backward = gather of the gradient at the switches; gather backward = unpool. Each
backward is itself one of the custom ops, so double backward works too.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch._prims_common import suggest_memory_format
from torch._subclasses.fake_tensor import is_fake

from . import _extension  # noqa: F401  (loads the compiled ops)
from .reference import pool_params
from .reference import switches_to_indices as _switches_to_indices

IntPair = Union[int, Sequence[int]]

_ops = torch.ops.deconvnet_ext
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _params(kernel_size: IntPair, stride: Optional[IntPair], padding: IntPair,
            dilation: IntPair) -> Tuple[List[int], List[int], List[int], List[int]]:
    # The common call (plain ints) without the general parser: this runs on every call.
    if (type(kernel_size) is int and type(padding) is int and type(dilation) is int
            and (stride is None or type(stride) is int)):
        k = [kernel_size, kernel_size]
        s = k if stride is None else [stride, stride]
        return k, s, [padding, padding], [dilation, dilation]
    try:
        k, s, p, d = pool_params(kernel_size, stride, padding, dilation)
    except TypeError as exc:
        raise TypeError("kernel_size, stride, padding and dilation must each be an int or a "
                        f"pair of ints, got kernel_size={kernel_size!r}, stride={stride!r}, "
                        f"padding={padding!r}, dilation={dilation!r}") from exc
    return list(k), list(s), list(p), list(d)


def _check_switches_in_window(switches: torch.Tensor, kernel: Sequence[int]) -> None:
    """Reports switch values outside their window, on the CPU. The kernels themselves
    stay safe on every device (such a switch selects nothing); this check is the
    wrapper's courtesy. It is skipped where it would cost a device sync (CUDA, any
    non-CPU device) and while tracing (torch.compile, fake tensors), where values are
    unknown."""
    if (not isinstance(switches, torch.Tensor) or switches.device.type != "cpu"
            or switches.dtype != torch.uint8 or switches.numel() == 0
            or torch.compiler.is_compiling() or is_fake(switches)):
        return
    window = kernel[0] * kernel[1]
    if window > 255:
        return
    top = int(switches.max())
    if top >= window:
        raise ValueError(f"switches holds the value {top}, outside its window: kernel_size "
                         f"{tuple(kernel)} allows switches 0..{window - 1}")


def max_pool2d_with_switches(x: torch.Tensor, kernel_size: IntPair,
                             stride: Optional[IntPair] = None, padding: IntPair = 0,
                             dilation: IntPair = 1,
                             ceil_mode: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max pooling that records where each max came from.

    x: (N, C, H, W) or (C, H, W), float32/float64/float16/bfloat16, contiguous or
    channels_last. Returns (out, switches): `out` equals F.max_pool2d(x, ...) bit for bit
    (NaN wins its window) in x's memory format; `switches` is uint8 of out's shape, the
    max's position i * kW + j inside its window (ties take the first).
    """
    k, s, p, d = _params(kernel_size, stride, padding, dilation)
    return _ops.max_pool2d_with_switches.default(x, k, s, p, d, bool(ceil_mode))


def max_unpool2d_with_switches(x: torch.Tensor, switches: torch.Tensor, kernel_size: IntPair,
                               stride: Optional[IntPair] = None, padding: IntPair = 0,
                               dilation: IntPair = 1,
                               output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The exact adjoint of the pooling's selection: y[p] = sum of x where the switch
    points at p, zero elsewhere (with non-overlapping windows: F.max_unpool2d).

    x: (N, C, oH, oW) or (C, oH, oW) float; switches: uint8 of x's shape, as returned by
    max_pool2d_with_switches. output_size: (H, W) (or x's full unpooled shape, as
    F.max_unpool2d accepts). Returns (N, C, H, W) (or (C, H, W)) of x's dtype.
    On the CPU raises ValueError when a switch lies outside its window; on CUDA such a
    switch selects nothing (checking would cost a device sync per call).
    """
    if output_size is None:
        raise ValueError("output_size=(H, W) is required: the pooled size does not fix "
                         "the input size")
    size = [int(v) for v in output_size]
    if len(size) not in (2, x.dim()) or (len(size) > 2 and size[:-2] != list(x.shape[:-2])):
        raise ValueError(f"output_size must be (H, W) or {tuple(x.shape[:-2])} + (H, W), "
                         f"got {tuple(size)}")
    k, s, p, d = _params(kernel_size, stride, padding, dilation)
    _check_switches_in_window(switches, k)
    return _ops.max_unpool2d_with_switches.default(x, switches, k, s, p, d, size[-2:])


def switches_to_indices(switches: torch.Tensor, kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        dilation: IntPair = 1,
                        input_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """uint8 switches -> the int64 flat indices h * W + w that
    F.max_pool2d(..., return_indices=True) returns (identical where the input has no
    ties). Same shape as `switches`; input_size (H, W) is the pooled input's size."""
    return _switches_to_indices(switches, kernel_size, stride, padding, dilation, input_size)


# ---- fake (meta) kernels: shapes, dtypes and memory formats only ----

def _pooled_size(size, k: int, s: int, p: int, d: int, ceil_mode: bool):
    """torch's pooling output size (csrc/common/pool_geometry.h: pooled_size)."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out = out - 1
    return out


def _working_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format the kernels compute in (and return), as in C++."""
    if t.dim() == 4 and suggest_memory_format(t) == torch.channels_last:
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_kernel(t: torch.Tensor, shape, dtype: Optional[torch.dtype] = None):
    """What the kernels allocate: `shape`, t's device and dtype (or `dtype`), in the
    working format of t (at::empty(..., memory_format) gives these exact strides)."""
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device,
                       memory_format=_working_format(t))


def _check_fake_pair(op: str, x: torch.Tensor, switches: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: self must be float32, float64, float16 or bfloat16, "
                        f"got {x.dtype}")
    if switches.dtype != torch.uint8:
        raise TypeError(f"{op}: switches must be uint8, got {switches.dtype}")
    if switches.device != x.device:
        raise ValueError(f"{op}: switches is on {switches.device} but self is on {x.device}")
    if x.dim() not in (3, 4) or switches.dim() != x.dim():
        raise ValueError(f"{op}: self and switches must both be 3-d or 4-d, got "
                         f"{tuple(x.shape)} and {tuple(switches.shape)}")


@torch.library.register_fake("deconvnet_ext::max_pool2d_with_switches")
def _pool_fake(x, kernel_size, stride, padding, dilation, ceil_mode):
    if x.dim() not in (3, 4):
        raise ValueError(f"max_pool2d_with_switches: self must be 3-d or 4-d, got shape "
                         f"{tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"max_pool2d_with_switches: self must be float32, float64, float16 "
                        f"or bfloat16, got {x.dtype}")
    oh = _pooled_size(x.shape[-2], kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = _pooled_size(x.shape[-1], kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    shape = (*x.shape[:-2], oh, ow)
    return _empty_like_kernel(x, shape), _empty_like_kernel(x, shape, torch.uint8)


@torch.library.register_fake("deconvnet_ext::max_unpool2d_with_switches")
def _unpool_fake(x, switches, kernel_size, stride, padding, dilation, output_size):
    _check_fake_pair("max_unpool2d_with_switches", x, switches)
    shape = (*x.shape[:-2], output_size[0], output_size[1])
    return _empty_like_kernel(x, shape)


@torch.library.register_fake("deconvnet_ext::gather_at_switches")
def _gather_fake(y, switches, kernel_size, stride, padding, dilation):
    _check_fake_pair("gather_at_switches", y, switches)
    shape = (*y.shape[:-2], switches.shape[-2], switches.shape[-1])
    return _empty_like_kernel(y, shape)


# ---- autograd: registered in C++ (csrc/autograd.cpp, the Autograd dispatch key) ----
# pool backward = unpool of the gradient; unpool backward = gather of the gradient at
# the switches; gather backward = unpool. Each backward is itself one of the ops, so
# double backward works too. No Python runs on the autograd path of a call.
