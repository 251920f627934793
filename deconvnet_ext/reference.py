"""Pure-PyTorch twins of every fused op: the ground truth for tests and the
baseline for benchmarks. Written for clarity, not speed; no compiled code.

Switch convention (shared with the kernels): for an output position (oh, ow) of a
pooling with kernel (kH, kW), stride (sH, sW), padding (pH, pW), dilation (dH, dW),
switch value s = i * kW + j names the input position
    h = oh * sH - pH + i * dH,   w = ow * sW - pW + j * dW.
A switch with s >= kH * kW, or whose position lies in the padding, selects nothing.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

IntPair = Union[int, Sequence[int]]


def _pair(value: IntPair, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return (value[0], value[0])
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def pool_params(kernel_size: IntPair, stride: Optional[IntPair], padding: IntPair,
                dilation: IntPair):
    """(kernel, stride, padding, dilation) as pairs; stride None or () means kernel."""
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(stride, "stride")
    return k, s, _pair(padding, "padding"), _pair(dilation, "dilation")


def _switch_positions(switches: torch.Tensor, kernel_size, stride, padding, dilation,
                      input_size: Sequence[int]):
    """Flat int64 input index of every switch, and whether it selects anything."""
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = pool_params(kernel_size, stride, padding, dilation)
    H, W = int(input_size[0]), int(input_size[1])
    oH, oW = switches.shape[-2:]
    s = switches.long()
    dev = switches.device
    oh = torch.arange(oH, device=dev).view(-1, 1)
    ow = torch.arange(oW, device=dev).view(1, -1)
    h = oh * sH - pH + torch.div(s, kW, rounding_mode="floor") * dH
    w = ow * sW - pW + torch.remainder(s, kW) * dW
    valid = (s < kH * kW) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    index = torch.where(valid, h * W + w, torch.zeros_like(h))
    return index, valid


def switches_to_indices(switches: torch.Tensor, kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        dilation: IntPair = 1, input_size: Sequence[int] = None) -> torch.Tensor:
    """uint8 switches -> the int64 flat indices (h * W + w) that
    F.max_pool2d(..., return_indices=True) returns. Same shape as `switches`."""
    if input_size is None:
        raise ValueError("input_size=(H, W) is required to convert switches to flat indices")
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = pool_params(kernel_size, stride, padding, dilation)
    W = int(input_size[1])
    oH, oW = switches.shape[-2:]
    s = switches.long()
    dev = switches.device
    h = torch.arange(oH, device=dev).view(-1, 1) * sH - pH + torch.div(s, kW, rounding_mode="floor") * dH
    w = torch.arange(oW, device=dev).view(1, -1) * sW - pW + torch.remainder(s, kW) * dW
    return h * W + w


def indices_to_switches(indices: torch.Tensor, kernel_size: IntPair,
                        stride: Optional[IntPair] = None, padding: IntPair = 0,
                        dilation: IntPair = 1, input_size: Sequence[int] = None) -> torch.Tensor:
    """torch's int64 pooling indices -> uint8 switches (the inverse of switches_to_indices)."""
    (kH, kW), (sH, sW), (pH, pW), (dH, dW) = pool_params(kernel_size, stride, padding, dilation)
    W = int(input_size[1])
    oH, oW = indices.shape[-2:]
    dev = indices.device
    h = torch.div(indices, W, rounding_mode="floor")
    w = torch.remainder(indices, W)
    i = (h - (torch.arange(oH, device=dev).view(-1, 1) * sH - pH)) // dH
    j = (w - (torch.arange(oW, device=dev).view(1, -1) * sW - pW)) // dW
    return (i * kW + j).to(torch.uint8)


def max_pool2d_with_switches(x: torch.Tensor, kernel_size: IntPair,
                             stride: Optional[IntPair] = None, padding: IntPair = 0,
                             dilation: IntPair = 1, ceil_mode: bool = False):
    """F.max_pool2d, with the argmax kept as a uint8 position inside its window."""
    k, s, p, d = pool_params(kernel_size, stride, padding, dilation)
    out, indices = F.max_pool2d(x, k, s, p, d, ceil_mode, return_indices=True)
    return out, indices_to_switches(indices, k, s, p, d, x.shape[-2:])


def _as_4d(t: torch.Tensor) -> torch.Tensor:
    return t.unsqueeze(0) if t.dim() == 3 else t


def max_unpool2d_with_switches(x: torch.Tensor, switches: torch.Tensor, kernel_size: IntPair,
                               stride: Optional[IntPair] = None, padding: IntPair = 0,
                               dilation: IntPair = 1,
                               output_size: Sequence[int] = None) -> torch.Tensor:
    """The exact adjoint of the pooling's selection: y[p] = sum of x where the switch
    points at p, zero elsewhere. Where windows don't overlap (and every switch selects
    something) this is F.max_unpool2d with switches_to_indices."""
    if output_size is None:
        raise ValueError("output_size=(H, W) is required")
    k, s, p, d = pool_params(kernel_size, stride, padding, dilation)
    H, W = int(output_size[-2]), int(output_size[-1])
    squeeze = x.dim() == 3
    x4, sw4 = _as_4d(x), _as_4d(switches)
    index, valid = _switch_positions(sw4, k, s, p, d, (H, W))
    N, C = x4.shape[:2]
    non_overlapping = s[0] >= (k[0] - 1) * d[0] + 1 and s[1] >= (k[1] - 1) * d[1] + 1
    if non_overlapping and d == (1, 1) and bool(valid.all()) and x4.numel() > 0:
        y = F.max_unpool2d(x4, index, k, s, p, output_size=(H, W))
    else:
        values = torch.where(valid, x4, torch.zeros((), dtype=x4.dtype, device=x4.device))
        y = x4.new_zeros(N, C, H * W)
        y.scatter_add_(2, index.reshape(N, C, -1), values.reshape(N, C, -1))
        y = y.view(N, C, H, W)
    return y.squeeze(0) if squeeze else y


def gather_at_switches(y: torch.Tensor, switches: torch.Tensor, kernel_size: IntPair,
                       stride: Optional[IntPair] = None, padding: IntPair = 0,
                       dilation: IntPair = 1) -> torch.Tensor:
    """out[p] = y[position of switches[p]], 0 where the switch selects nothing.
    The unpool's backward (and the pool's forward gather)."""
    k, s, p, d = pool_params(kernel_size, stride, padding, dilation)
    squeeze = y.dim() == 3
    y4, sw4 = _as_4d(y), _as_4d(switches)
    N, C, H, W = y4.shape
    index, valid = _switch_positions(sw4, k, s, p, d, (H, W))
    out = y4.reshape(N, C, H * W).gather(2, index.reshape(N, C, -1)).view(sw4.shape)
    out = torch.where(valid, out, torch.zeros((), dtype=y4.dtype, device=y4.device))
    return out.squeeze(0) if squeeze else out


def pasted_maps(maps: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int]):
    """The paste step of the aggregation: for each map k whose box (K,4) [x0,y0,x1,y1)
    meets the image of size (H, W), yields (k, (cy0, cy1, cx0, cx1), patch): the map
    resized to its box as F.interpolate(bilinear, align_corners=False) does, clipped to
    the image rows cy0:cy1 and columns cx0:cx1 (patch (C, cy1-cy0, cx1-cx0))."""
    H, W = int(image_size[0]), int(image_size[1])
    for k in range(maps.shape[0]):
        x0, y0, x1, y1 = (int(v) for v in boxes[k].tolist())
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if cx1 <= cx0 or cy1 <= cy0:
            continue  # entirely outside the image
        resized = F.interpolate(maps[k:k + 1], size=(y1 - y0, x1 - x0), mode="bilinear",
                                align_corners=False)[0]
        yield k, (cy0, cy1, cx0, cx1), resized[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


def aggregate_proposals(maps: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
                        mode: str = "max", image_index: Optional[torch.Tensor] = None,
                        num_images: Optional[int] = None) -> torch.Tensor:
    """Resize each map to its box (bilinear, align_corners=False), paste it clipped to
    the image, reduce: "max" (canvas starts at 0, NaN propagates as torch.maximum),
    "sum", or "mean" (sum / number of proposals of that image).
    maps (K,C,h,w), boxes (K,4) integer [x0,y0,x1,y1). Returns (C,H,W), or
    (B,C,H,W) when image_index (K,) is given."""
    if mode not in ("max", "sum", "mean"):
        raise ValueError(f"mode must be 'max', 'sum' or 'mean', got {mode!r}")
    K, C = maps.shape[0], maps.shape[1]
    H, W = int(image_size[0]), int(image_size[1])
    batched = image_index is not None
    if batched and num_images is None:
        num_images = int(image_index.max()) + 1 if K > 0 else 0
    B = int(num_images) if batched else 1
    canvas = maps.new_zeros(B, C, H, W)
    # every proposal counts for "mean", also one entirely outside its image
    count = [0] * B
    for k in range(K):
        count[int(image_index[k]) if batched else 0] += 1
    for k, (cy0, cy1, cx0, cx1), patch in pasted_maps(maps, boxes, (H, W)):
        b = int(image_index[k]) if batched else 0
        region = canvas[b, :, cy0:cy1, cx0:cx1]
        if mode == "max":
            region.copy_(torch.maximum(region, patch))
        else:
            region.add_(patch)
    if mode == "mean":
        for b in range(B):
            if count[b] > 0:
                canvas[b].div_(count[b])
    return canvas if batched else canvas[0]
