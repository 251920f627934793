"""The PASCAL VOC colour map and palette-PNG reading/writing.

VOC stores SegmentationClass / SegmentationObject as palette ("P" mode) PNGs whose
pixel values are class (or instance) indices; the palette only makes them viewable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError

IGNORE_INDEX = 255
"""Label value for pixels that are not scored (VOC's boundary band, 'void')."""

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def voc_colormap(num_colors: int = 256) -> np.ndarray:
    """The VOC devkit's colour map (bit-interleaved class index), uint8 (num_colors, 3).

    Entry 0 is black (background), 255 is (224, 224, 192) (ignore band)."""
    cmap = np.zeros((num_colors, 3), dtype=np.uint8)
    for i in range(num_colors):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def colorize(indices: np.ndarray) -> np.ndarray:
    """Class/instance indices uint8 (H, W) -> RGB uint8 (H, W, 3) in VOC colours."""
    if indices.dtype != np.uint8 or indices.ndim != 2:
        raise ValueError(f"colorize: indices must be uint8 (H, W), got {indices.dtype} "
                         f"{indices.shape}")
    return voc_colormap()[indices]


def write_palette_png(path: str | Path, indices: np.ndarray) -> None:
    """Write uint8 (H, W) indices as a VOC-palette PNG (byte-reproducible)."""
    if indices.dtype != np.uint8 or indices.ndim != 2:
        raise ValueError(f"write_palette_png: indices must be uint8 (H, W), got "
                         f"{indices.dtype} {indices.shape}")
    height, width = indices.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(indices).tobytes())
    image.putpalette(voc_colormap().reshape(-1).tolist())
    image.save(path, format="PNG", optimize=False)


def read_index_png(path: str | Path) -> np.ndarray:
    """Read a palette ("P") or single-channel ("L") index PNG -> uint8 (H, W) indices.

    The palette indices are returned, never the colours. A colour (RGB/RGBA) PNG, as
    produced by re-saving a VOC label in an image editor, is refused: its colours are
    not class ids. Raises UserError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode not in ("P", "L"):
                raise UserError(
                    f"{path}: label PNG must be a palette ('P') or single-channel ('L') "
                    f"index image, got mode {mode!r} (a colour rendering is not a label)")
            return np.array(image, dtype=np.uint8)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: cannot read label PNG ({exc})") from exc
