"""Image/label transforms shared by training and inference.

Images are uint8 (H, W, 3) RGB numpy arrays until `image_to_tensor`; labels are uint8
(H, W) class ids with 255 = ignore. Images resize bilinearly, labels by nearest
neighbour (a blended class id means nothing).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from .palette import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The colour that normalises to 0: what crops are padded with outside the image.
MEAN_RGB_UINT8 = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"{name} must be a uint8 (H, W, 3) RGB array, got {got}")


def _check_label(label: np.ndarray, name: str = "label") -> None:
    if not isinstance(label, np.ndarray) or label.dtype != np.uint8 or label.ndim != 2:
        got = (f"{label.dtype} {label.shape}" if isinstance(label, np.ndarray)
               else type(label).__name__)
        raise ValueError(f"{name} must be a uint8 (H, W) array, got {got}")


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W), scaled to [0, 1] then normalised with
    the ImageNet mean/std (what VGG16 encoders expect)."""
    _check_image(image)
    # converted by numpy: a copy torch can own (the image may be a read-only cached array)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> int64 (H, W) (what cross_entropy takes; 255 stays 255)."""
    _check_label(label)
    return torch.from_numpy(label.astype(np.int64))


def _size(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"{name} must be positive (height, width), got {size!r}")
    return int(height), int(width)


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize of uint8 (H, W, 3) to size (h, w) (or int for square)."""
    _check_image(image)
    height, width = _size(size)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of uint8 (H, W) labels to size (h, w)."""
    _check_label(label)
    height, width = _size(size)
    return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)


def box_to_output_affine(box: Sequence[float], size: int | Sequence[int],
                         flip: bool = False) -> np.ndarray:
    """2x3 float64 affine taking image pixel coordinates to output-crop coordinates,
    mapping box [x0, y0, x1, y1) onto the (h, w) output (pixel centres, i.e. the
    convention of F.interpolate(align_corners=False)); flip mirrors horizontally."""
    height, width = _size(size)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {list(box)}")
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    # out + 0.5 = (in + 0.5 - x0) * sx
    m = np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5],
                  [0.0, sy, (0.5 - y0) * sy - 0.5]])
    if flip:
        m[0] = -m[0]
        m[0, 2] += width - 1
    return m


def crop_image(image: np.ndarray, box: Sequence[float], size: int | Sequence[int],
               flip: bool = False) -> np.ndarray:
    """The region box [x0, y0, x1, y1) of uint8 (H, W, 3) `image`, resized (aspect
    ignored, bilinear) to (h, w) -> uint8 (h, w, 3). The box may extend past the image:
    outside pixels are the ImageNet mean colour (0 after image_to_tensor)."""
    _check_image(image)
    height, width = _size(size)
    m = box_to_output_affine(box, (height, width), flip)
    return cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN_RGB_UINT8)


def crop_label(label: np.ndarray, box: Sequence[float], size: int | Sequence[int],
               flip: bool = False, fill: int = IGNORE_INDEX) -> np.ndarray:
    """The region box of uint8 (H, W) `label`, nearest-resized to (h, w) -> uint8;
    outside the image the label is `fill` (255 = ignore by default)."""
    _check_label(label)
    height, width = _size(size)
    m = box_to_output_affine(box, (height, width), flip)
    return cv2.warpAffine(label, m, (width, height), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=int(fill))
