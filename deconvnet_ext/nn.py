"""Modules over the switch pooling ops, plus the conv/deconv + BN + ReLU blocks the
models are built from.

The pooling pair is switchable between two implementations that must agree exactly:

* ``pool_impl="ext"``: ``dx.max_pool2d_with_switches`` / ``dx.max_unpool2d_with_switches``;
  switches are uint8 (the position of the max inside its window).
* ``pool_impl="torch"``: ``F.max_pool2d(return_indices=True)`` / ``F.max_unpool2d``;
  switches are torch's int64 flat indices.

A pool and the unpool that consumes its switches must use the same implementation;
:class:`MaxPool2dWithSwitches` returns the switches together with the input size so the
unpool restores the exact pre-pool shape (odd sizes included).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops  # noqa: F401  (registers the ops' autograd and fake kernels)
from .reference import pool_params

_ext_ops = torch.ops.deconvnet_ext

IntPair = Union[int, Sequence[int]]
POOL_IMPLS = ("ext", "torch")


def check_pool_impl(pool_impl: str) -> str:
    """Return ``pool_impl`` if it names a known implementation, else raise ValueError."""
    if pool_impl not in POOL_IMPLS:
        raise ValueError(f"pool_impl must be one of {POOL_IMPLS}, got {pool_impl!r}")
    return pool_impl


class PoolSwitches(NamedTuple):
    """What an unpool needs from its pool: the switches (uint8 for "ext", int64 flat
    indices for "torch"), the implementation that made them, and the pool's input
    (H, W)."""
    switches: torch.Tensor
    pool_impl: str
    input_size: Tuple[int, int]


class MaxPool2dWithSwitches(nn.Module):
    """Max pooling that records where each max came from.

    forward(x: (N,C,H,W) or (C,H,W) float) -> (out (N,C,oH,oW), PoolSwitches).
    ``out`` equals ``F.max_pool2d(x, ...)`` for either ``pool_impl``.
    """

    def __init__(self, kernel_size: IntPair = 2, stride: Optional[IntPair] = None,
                 padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
                 pool_impl: str = "ext") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = pool_params(
            kernel_size, stride, padding, dilation)
        self.ceil_mode = bool(ceil_mode)
        self.pool_impl = check_pool_impl(pool_impl)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, PoolSwitches]:
        impl = check_pool_impl(self.pool_impl)
        input_size = (int(x.shape[-2]), int(x.shape[-1]))
        if impl == "ext":
            # The registered op directly: the parameters were normalised once in __init__.
            out, switches = _ext_ops.max_pool2d_with_switches.default(
                x, list(self.kernel_size), list(self.stride), list(self.padding),
                list(self.dilation), self.ceil_mode)
        else:
            out, switches = F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                                         self.dilation, self.ceil_mode, return_indices=True)
        return out, PoolSwitches(switches, impl, input_size)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}, pool_impl={self.pool_impl!r}")


class MaxUnpool2dWithSwitches(nn.Module):
    """Puts every value back at its recorded switch, zeros elsewhere.

    forward(x: (N,C,oH,oW), switches: PoolSwitches) -> (N,C,H,W) with (H, W) the
    pooled input's size. The implementation is the one that produced the switches
    (a uint8 switch tensor cannot be read as torch indices or vice versa).
    """

    def __init__(self, kernel_size: IntPair = 2, stride: Optional[IntPair] = None,
                 padding: IntPair = 0, dilation: IntPair = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = pool_params(
            kernel_size, stride, padding, dilation)

    def forward(self, x: torch.Tensor, switches: PoolSwitches) -> torch.Tensor:
        if not isinstance(switches, PoolSwitches):
            raise TypeError("switches must be the PoolSwitches returned by "
                            f"MaxPool2dWithSwitches, got {type(switches).__name__}")
        if switches.pool_impl == "ext":
            # Switches made by MaxPool2dWithSwitches are in their windows by construction,
            # so the public wrapper's value check (a reduction and a host sync per call)
            # is skipped; the kernel stays safe for any switch value regardless.
            return _ext_ops.max_unpool2d_with_switches.default(
                x, switches.switches, list(self.kernel_size), list(self.stride),
                list(self.padding), list(self.dilation), list(switches.input_size))
        if self.dilation != (1, 1):
            raise ValueError("pool_impl='torch' cannot unpool a dilated pooling "
                             f"(dilation={self.dilation}); use pool_impl='ext'")
        return F.max_unpool2d(x, switches.switches, self.kernel_size, self.stride,
                              self.padding, output_size=switches.input_size)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}")


def set_pool_impl(module: nn.Module, pool_impl: str) -> nn.Module:
    """Switch every MaxPool2dWithSwitches inside ``module`` to ``pool_impl``; returns
    ``module``. Weights are untouched, so outputs and gradients stay the same."""
    check_pool_impl(pool_impl)
    for m in module.modules():
        if isinstance(m, MaxPool2dWithSwitches):
            m.pool_impl = pool_impl
    if hasattr(module, "pool_impl"):
        module.pool_impl = pool_impl
    return module


class ConvBNReLU(nn.Module):
    """conv (k x k, stride 1) -> BatchNorm2d -> ReLU. (N,Cin,H,W) -> (N,Cout,H',W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DeconvBNReLU(nn.Module):
    """transposed conv (k x k, stride 1) -> BatchNorm2d -> ReLU, the decoder's layer.
    With padding (k-1)/2 it keeps the size; with padding 0 it grows it by k-1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 padding: int = 0) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.deconv(x)))
