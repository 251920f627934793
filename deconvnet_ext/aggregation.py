"""Proposal aggregation: paste K per-proposal score maps back into image space and
reduce them pixel-wise (DeconvNet's instance-wise inference), as one fused op.

`aggregate_proposals` wraps `torch.ops.deconvnet_ext.aggregate_proposals` (CPU and
CUDA kernels, csrc/cpu and csrc/cuda): it checks its arguments here, with messages
that name the argument, then calls the op. `deconvnet_ext.reference.aggregate_proposals`
is its pure-PyTorch twin (same results; to float rounding for the resize, see
csrc/common/bilinear.h).

Autograd: the op is for inference. Its forward works on tensors that require grad,
but asking for a gradient through it raises a RuntimeError naming the op (use
`reference.aggregate_proposals`, which is differentiable, when you need one).
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence

import torch

from . import _extension  # noqa: F401  (loads the compiled op library)

__all__ = ["aggregate_proposals"]

_MODES = ("max", "sum", "mean")
_COORD_LIMIT = 1 << 30


def _image_size(image_size: Sequence[int]) -> tuple[int, int]:
    try:
        size = tuple(int(v) for v in image_size)
    except TypeError:
        raise TypeError(f"image_size must be a pair of ints (H, W), got {image_size!r}") from None
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"image_size must be two positive ints (H, W), got {image_size!r}")
    return size


def _check_maps_and_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor):
        raise TypeError(f"maps must be a tensor, got {type(maps).__name__}")
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes must be a tensor, got {type(boxes).__name__}")
    if maps.dim() != 4:
        raise ValueError(f"maps must be 4-d (K, C, h, w), got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise TypeError(f"maps must be a floating-point tensor, got dtype {maps.dtype}")
    if maps.shape[0] > 0 and (maps.shape[2] == 0 or maps.shape[3] == 0):
        raise ValueError(f"maps must have positive height and width, got shape {tuple(maps.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4), got {tuple(boxes.shape)}")
    if boxes.shape[0] != maps.shape[0]:
        raise ValueError(f"boxes has {boxes.shape[0]} rows but maps has K={maps.shape[0]} maps")
    if boxes.is_floating_point() or boxes.is_complex() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must be an integer tensor [x0, y0, x1, y1), got dtype {boxes.dtype}")
    if boxes.device != maps.device:
        raise ValueError(f"boxes is on {boxes.device} but maps is on {maps.device}")
    if boxes.numel() == 0:
        return
    b = boxes.long()
    empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise ValueError(f"boxes row {row} = {b[row].tolist()} is empty: need x1 > x0 and y1 > y0")
    if bool((b.abs() > _COORD_LIMIT).any()):
        row = int((b.abs() > _COORD_LIMIT).any(1).nonzero()[0, 0])
        raise ValueError(f"boxes row {row} = {b[row].tolist()} has a coordinate beyond +-2^30")


def _check_image_index(image_index: Optional[torch.Tensor], num_images: Optional[int],
                       maps: torch.Tensor) -> int:
    """The number of output canvases B (1 without image_index)."""
    if image_index is None:
        if num_images is not None and int(num_images) != 1:
            raise ValueError(f"num_images={num_images!r} needs image_index (K,) to say which "
                             "image each proposal belongs to")
        return 1
    if not isinstance(image_index, torch.Tensor):
        raise TypeError(f"image_index must be a tensor, got {type(image_index).__name__}")
    K = maps.shape[0]
    if image_index.dim() != 1 or image_index.shape[0] != K:
        raise ValueError(f"image_index must have shape (K,) = ({K},), got {tuple(image_index.shape)}")
    if image_index.is_floating_point() or image_index.is_complex() or image_index.dtype == torch.bool:
        raise TypeError(f"image_index must be an integer tensor, got dtype {image_index.dtype}")
    if image_index.device != maps.device:
        raise ValueError(f"image_index is on {image_index.device} but maps is on {maps.device}")
    lo = int(image_index.min()) if K > 0 else 0
    hi = int(image_index.max()) if K > 0 else -1
    if num_images is None:
        return hi + 1
    try:
        if isinstance(num_images, bool):
            raise TypeError
        num_images = operator.index(num_images)
    except TypeError:
        raise TypeError(f"num_images must be an int, got {num_images!r}") from None
    if num_images < 0:
        raise ValueError(f"num_images must be non-negative, got {num_images}")
    if K > 0 and (lo < 0 or hi >= num_images):
        bad = lo if lo < 0 else hi
        raise ValueError(f"image_index holds {bad}, outside [0, num_images={num_images})")
    return num_images


def aggregate_proposals(maps: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
                        mode: str = "max", image_index: Optional[torch.Tensor] = None,
                        num_images: Optional[int] = None) -> torch.Tensor:
    """Paste K proposal score maps into image space and reduce them per pixel.

    Args:
        maps: (K, C, h, w) float32 / float64 / float16 / bfloat16 score maps of K
            proposal crops (any strides).
        boxes: (K, 4) integer tensor, `[x0, y0, x1, y1)` in image pixels, x1 > x0 and
            y1 > y0; boxes may extend past the image (crops with context).
        image_size: (H, W) of the image(s).
        mode: "max" (per pixel and class, the max of 0 and of every pasted map covering
            it; NaN propagates), "sum" (sum of the covering maps), or "mean" (that sum
            divided by the number of proposals of the image).
        image_index: optional (K,) integer tensor, the image of each proposal.
        num_images: B, the number of images (default: image_index.max() + 1).

    Each map is resized to its box as F.interpolate(mode="bilinear",
    align_corners=False) does and pasted at the box, clipped to the image.

    Returns:
        (C, H, W) tensor of maps' dtype; (B, C, H, W) when image_index is given.
        K = 0 gives zeros.
    """
    _check_maps_and_boxes(maps, boxes)
    H, W = _image_size(image_size)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    B = _check_image_index(image_index, num_images, maps)
    if image_index is None:
        return torch.ops.deconvnet_ext.aggregate_proposals(maps, boxes, None, [H, W], 1, mode)
    return torch.ops.deconvnet_ext.aggregate_proposals(maps, boxes, image_index, [H, W], B, mode)


@torch.library.register_fake("deconvnet_ext::aggregate_proposals")
def _aggregate_proposals_fake(maps, boxes, image_index, image_size, num_images, mode):
    torch._check(maps.dim() == 4, lambda: f"maps must be 4-d, got {maps.dim()}-d")
    H, W = image_size
    C = maps.shape[1]
    if image_index is None:
        return maps.new_empty((C, H, W))
    return maps.new_empty((num_images, C, H, W))


def _aggregate_proposals_setup_context(ctx, inputs, output) -> None:
    pass


def _aggregate_proposals_backward(ctx, grad):
    raise RuntimeError(
        "deconvnet_ext.aggregate_proposals has no backward (it is an inference op); "
        "use deconvnet_ext.reference.aggregate_proposals where a gradient is needed")


torch.library.register_autograd("deconvnet_ext::aggregate_proposals",
                                _aggregate_proposals_backward,
                                setup_context=_aggregate_proposals_setup_context)
