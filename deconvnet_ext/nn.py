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

For models written with torch's own modules, :class:`MaxPool2d` and :class:`MaxUnpool2d`
are drop-in subclasses of ``torch.nn.MaxPool2d`` / ``torch.nn.MaxUnpool2d`` (same
constructor arguments, forward signatures and state_dict), and :func:`convert_pooling`
swaps them into an existing model in one call.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops  # registers the ops' autograd and fake kernels
from ._extension import build_info
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
    indices for "torch"), the implementation that made them, the pool's input (H, W),
    and the pool's geometry (kernel_size, stride, padding, dilation as pairs; None in
    objects built by hand with the first three fields only).

    Not a tensor: handed to a torch function that expects torch's int64 indices
    (``F.max_unpool2d``, ``torch.gather``, ...) it raises a TypeError that says so and
    how to get the indices (:meth:`indices`).
    """
    switches: torch.Tensor
    pool_impl: str
    input_size: Tuple[int, int]
    kernel_size: Optional[Tuple[int, int]] = None
    stride: Optional[Tuple[int, int]] = None
    padding: Optional[Tuple[int, int]] = None
    dilation: Optional[Tuple[int, int]] = None

    def indices(self) -> torch.Tensor:
        """torch's int64 flat indices h * W + w (what ``F.max_pool2d(...,
        return_indices=True)`` returns, identical where the pooled input has no ties):
        ``dx.switches_to_indices`` of the uint8 switches, or the indices themselves
        for pool_impl "torch". Same shape as the pooled output."""
        if self.pool_impl == "torch":
            return self.switches
        if self.kernel_size is None:
            raise ValueError("these PoolSwitches do not record their pool's geometry; use "
                             "dx.switches_to_indices(switches, kernel_size, stride, padding, "
                             "dilation, input_size=...)")
        return ops.switches_to_indices(self.switches, self.kernel_size, self.stride,
                                       self.padding, self.dilation, self.input_size)

    @property
    def shape(self) -> torch.Size:
        """The switches' (= the pooled output's) shape."""
        return self.switches.shape

    def size(self, dim: Optional[int] = None):
        """``switches.size(dim)``, as on the indices tensor torch would return."""
        return self.switches.size() if dim is None else self.switches.size(dim)

    @property
    def device(self) -> torch.device:
        return self.switches.device

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", None) or str(func)
        raise TypeError(
            f"{name}() was given the PoolSwitches of a deconvnet_ext pooling (uint8 "
            "positions inside each window, plus the pooled input's size) where torch "
            "expects int64 indices. Unpool them with deconvnet_ext.nn.MaxUnpool2d (what "
            "deconvnet_ext.nn.convert_pooling puts in place of torch.nn.MaxUnpool2d), or "
            "get torch's indices with switches.indices() (= dx.switches_to_indices("
            "switches.switches, kernel_size, stride, padding, dilation, "
            "input_size=switches.input_size))")


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
        return out, PoolSwitches(switches, impl, input_size, self.kernel_size, self.stride,
                                 self.padding, self.dilation)

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


# ---- drop-in replacements for torch.nn.MaxPool2d / torch.nn.MaxUnpool2d ----

_EXT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_MAX_WINDOW = 256  # a switch is one byte
_BUILT_WITH_CUDA = bool(build_info()["with_cuda"])  # read once: forward stays traceable


def _ext_pool_runs(x: torch.Tensor, kernel: Tuple[int, int]) -> bool:
    """Whether the fused pool takes this input (else the drop-in falls back to torch's
    int64 indices): a float dtype, a window of at most 256 elements, a CPU tensor or a
    CUDA one with a CUDA build."""
    if x.dtype not in _EXT_DTYPES or kernel[0] * kernel[1] > _MAX_WINDOW:
        return False
    if x.device.type == "cpu" or x.device.type == "meta":
        return True
    return x.device.type == "cuda" and _BUILT_WITH_CUDA


def _disjoint(kernel, stride, dilation) -> bool:
    """Every input position lies in at most one window (stride >= dilated kernel span)."""
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))


def _windows_disjoint(sw: PoolSwitches) -> bool:
    return _disjoint(sw.kernel_size, sw.stride, sw.dilation)


class _PoolAsTorch(torch.autograd.Function):
    """The fused pool whose backward sums overlapping windows' gradients in torch's CPU
    order (a scatter-add over the output positions in turn), so the input gradient
    matches torch's bit for bit; still only the uint8 switches are saved. (Where windows
    are disjoint the op's own backward already matches, and on CUDA the op's
    deterministic gather is kept.)"""

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        out, switches = _ext_ops.max_pool2d_with_switches.default(
            x, kernel_size, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(switches)
        ctx.save_for_backward(switches)
        ctx.params = (kernel_size, stride, padding, dilation)
        ctx.input_shape = tuple(x.shape)
        return out, switches

    @staticmethod
    def backward(ctx, grad_out, _grad_switches):
        (switches,) = ctx.saved_tensors
        H, W = ctx.input_shape[-2:]
        indices = ops.switches_to_indices(switches, *ctx.params, input_size=(H, W))
        planes = grad_out.shape[:-2]
        grad_x = grad_out.new_zeros(*planes, H * W).scatter_add_(
            -1, indices.flatten(-2), grad_out.flatten(-2))
        return grad_x.view(ctx.input_shape), None, None, None, None, None


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` (a subclass: same arguments, attributes and state_dict)
    whose ``return_indices=True`` keeps one byte per output instead of eight.

    forward(input: (N,C,H,W) or (C,H,W)) -> out, or (out, PoolSwitches) with
    ``return_indices=True``. ``out`` is torch's, bit for bit. The switches hold the
    uint8 position of each max inside its window, the input's (H, W) and the pool's
    geometry: :class:`MaxUnpool2d` takes them where torch's takes indices, and
    ``switches.indices()`` gives torch's int64 indices. Autograd saves only the switches
    (torch's pool saves its input and the int64 indices).

    Inputs the fused op does not take (integer dtypes, windows over 256 elements, a
    device without kernels in this build) pool with torch's op; the PoolSwitches then
    carry torch's int64 indices (pool_impl "torch") and everything else works the same.
    """

    def forward(self, input: torch.Tensor):
        if not self.return_indices:
            return F.max_pool2d(input, self.kernel_size, self.stride, self.padding,
                                self.dilation, ceil_mode=self.ceil_mode)
        k, s, p, d = pool_params(self.kernel_size, self.stride, self.padding, self.dilation)
        input_size = (input.shape[-2], input.shape[-1])
        if _ext_pool_runs(input, k):
            params = (list(k), list(s), list(p), list(d), bool(self.ceil_mode))
            if (not _disjoint(k, s, d) and input.device.type == "cpu"
                    and torch.is_grad_enabled() and input.requires_grad):
                out, switches = _PoolAsTorch.apply(input, *params)
            else:
                out, switches = _ext_ops.max_pool2d_with_switches.default(input, *params)
            impl = "ext"
        else:
            out, switches = F.max_pool2d(input, k, s, p, d, ceil_mode=self.ceil_mode,
                                         return_indices=True)
            impl = "torch"
        return out, PoolSwitches(switches, impl, input_size, k, s, p, d)


def _spatial_output_size(output_size: Sequence[int], x: torch.Tensor) -> Tuple[int, int]:
    """(H, W) from output_size given as (H, W) or as a full size (x.size() of the
    pooled input: 4 entries, or x.dim() entries)."""
    size = tuple(output_size)
    if len(size) not in (2, 4, x.dim()):
        raise ValueError("output_size must be (H, W) or the pooled input's full size, got "
                         f"{size!r}")
    return size[-2], size[-1]


class _UnpoolAsTorch(torch.autograd.Function):
    """torch's unpool (where overlapping windows chose one position twice, that position
    holds one of the values, as ``F.max_unpool2d`` writes it), with the uint8 switches,
    not int64 indices, saved for backward: the gradient is the gather at the switches,
    which is what torch's backward computes from its indices."""

    @staticmethod
    def forward(ctx, x, switches, kernel_size, stride, padding, dilation, size):
        indices = ops.switches_to_indices(switches, kernel_size, stride, padding, dilation,
                                          size)
        ctx.save_for_backward(switches)
        ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation))
        return torch._C._nn.max_unpool2d(x, indices, [size[0], size[1]])

    @staticmethod
    def backward(ctx, grad_y):
        (switches,) = ctx.saved_tensors
        grad_x = _ext_ops.gather_at_switches.default(grad_y, switches, *ctx.params)
        return grad_x, None, None, None, None, None, None


class MaxUnpool2d(nn.MaxUnpool2d):
    """``torch.nn.MaxUnpool2d`` (a subclass: same arguments and attributes) that also
    takes the :class:`PoolSwitches` of :class:`MaxPool2d` / :class:`MaxPool2dWithSwitches`.

    forward(input: (N,C,oH,oW) or (C,oH,oW), indices, output_size=None) -> (N,C,H,W).

    * ``indices`` a tensor (torch's int64 indices): exactly ``torch.nn.MaxUnpool2d``.
    * ``indices`` a PoolSwitches: every value goes back where its pool took it from
      (the pool's own kernel, stride, padding and dilation place it, as torch's flat
      indices do). ``output_size`` None restores the pooled input's true size. torch
      instead guesses ``(oH - 1) * stride - 2 * padding + kernel_size``, which is wrong
      after ``ceil_mode=True``, odd input sizes or dilation: there a converted model's
      output is the true size where torch's was the guess (or an error). With an
      ``output_size`` of (H, W) or a full size (``skip.size()``), and wherever torch's
      guess is right, the output equals torch's bit for bit.

    Disjoint windows at the true size (every DeconvNet/SegNet pattern) run the fused
    unpool, whose autograd saves only the uint8 switches. Overlapping windows (stride
    smaller than the kernel) follow torch's semantics exactly (``F.max_unpool2d`` of
    ``switches.indices()``: a position two windows chose holds one value, not their
    sum), still saving only the uint8 switches; an output_size other than the pooled
    input's is ``F.max_unpool2d`` of ``switches.indices()``, checks included.
    """

    def forward(self, input: torch.Tensor, indices, output_size=None) -> torch.Tensor:
        if not isinstance(indices, PoolSwitches):
            return F.max_unpool2d(input, indices, self.kernel_size, self.stride,
                                  self.padding, output_size)
        switches = indices
        if switches.kernel_size is None:
            raise ValueError("indices is a PoolSwitches without its pool's geometry (built "
                             "by hand?); make it with deconvnet_ext.nn.MaxPool2d or "
                             "MaxPool2dWithSwitches")
        true_size = (switches.input_size[0], switches.input_size[1])
        size = true_size if output_size is None else _spatial_output_size(output_size, input)
        if size[0] != true_size[0] or size[1] != true_size[1]:
            # Another size: torch's checks and torch's placement of the flat indices.
            return F.max_unpool2d(input, switches.indices(), self.kernel_size, self.stride,
                                  self.padding, output_size)
        if switches.pool_impl == "ext" and _windows_disjoint(switches):
            # Switches a pool made lie in their windows, so the public wrapper's value
            # check (a reduction and a host sync) is skipped; the kernel is safe anyway.
            return _ext_ops.max_unpool2d_with_switches.default(
                input, switches.switches, list(switches.kernel_size), list(switches.stride),
                list(switches.padding), list(switches.dilation), [size[0], size[1]])
        if switches.pool_impl == "ext" and torch.is_grad_enabled() and input.requires_grad:
            return _UnpoolAsTorch.apply(input, switches.switches, switches.kernel_size,
                                        switches.stride, switches.padding, switches.dilation,
                                        (size[0], size[1]))
        if switches.pool_impl == "ext":
            return torch._C._nn.max_unpool2d(input, switches.indices(), [size[0], size[1]])
        # torch's op without F.max_unpool2d's guess-based size check, which refuses
        # some true sizes (after dilation).
        return torch._C._nn.max_unpool2d(input, switches.switches, [size[0], size[1]])


def _copy_module_state(old: nn.Module, new: nn.Module) -> nn.Module:
    """Mode, forward (pre-)hooks and extra attributes of ``old`` onto ``new``."""
    new.train(old.training)
    for key, value in old.__dict__.items():
        if key not in new.__dict__:
            new.__dict__[key] = value
    for hook_id, hook in old._forward_pre_hooks.items():
        new.register_forward_pre_hook(hook, with_kwargs=hook_id in old._forward_pre_hooks_with_kwargs)
    for hook_id, hook in old._forward_hooks.items():
        new.register_forward_hook(hook, with_kwargs=hook_id in old._forward_hooks_with_kwargs,
                                  always_call=hook_id in old._forward_hooks_always_called)
    return new


def _pooling_replacement(module: nn.Module) -> nn.Module:
    if type(module) is nn.MaxPool2d and module.return_indices:
        new = MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                        return_indices=True, ceil_mode=module.ceil_mode)
    elif type(module) is nn.MaxUnpool2d:
        new = MaxUnpool2d(module.kernel_size, module.stride, module.padding)
    else:
        return module
    return _copy_module_state(module, new)


def convert_pooling(module: nn.Module) -> nn.Module:
    """Swap every ``torch.nn.MaxPool2d(return_indices=True)`` and every
    ``torch.nn.MaxUnpool2d`` inside ``module`` (``module`` itself included) for
    :class:`MaxPool2d` / :class:`MaxUnpool2d`, in place; returns the (new) root, as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does.

    A module instance reused in several places (one pool for every level) becomes one
    replacement instance, reused the same way. Everything else is left alone: plain
    ``MaxPool2d`` without indices, subclasses of torch's pooling modules (their forward
    may differ), every parameter and buffer, so ``state_dict()`` keys do not change.
    The forward code is untouched: ``x, idx = self.pool(x)`` then
    ``self.unpool(x, idx, output_size=...)`` gives the same outputs and gradients, with
    less memory saved for backward.

        model = deconvnet_ext.nn.convert_pooling(model)
    """
    memo: Dict[int, Tuple[nn.Module, nn.Module]] = {}

    def convert(m: nn.Module) -> nn.Module:
        if id(m) in memo:  # (old, new): keeping old alive keeps its id unique
            return memo[id(m)][1]
        new = _pooling_replacement(m)
        memo[id(m)] = (m, new)
        for name, child in list(new._modules.items()):
            if child is not None:
                replaced = convert(child)
                if replaced is not child:
                    new._modules[name] = replaced
        return new

    return convert(module)
