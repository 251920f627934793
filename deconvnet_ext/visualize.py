"""Pictures of predictions: VOC-coloured masks and an image / ground truth / prediction
overlay grid (PIL only, so no plotting library is needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from .data.palette import colorize, write_palette_png

PathLike = Union[str, Path]


def save_mask_png(path: PathLike, mask: np.ndarray) -> None:
    """Write class ids uint8 (H,W) as a VOC palette PNG (values are the class ids, the
    palette makes them viewable), the format of VOC's SegmentationClass."""
    write_palette_png(path, np.asarray(mask, dtype=np.uint8))


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Blend VOC colours of mask uint8 (H,W) over image uint8 (H,W,3); background (0)
    and ignore (255) pixels show the image. Returns uint8 (H,W,3)."""
    colours = colorize(np.asarray(mask, dtype=np.uint8)).astype(np.float32)
    blended = image.astype(np.float32) * (1 - alpha) + colours * alpha
    keep = (mask == 0) | (mask == 255)
    blended[keep] = image[keep]
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def save_overlay_grid(path: PathLike,
                      rows: Sequence[Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]],
                      cell_size: int = 160) -> None:
    """One row per image: the image, its ground truth overlaid, then each prediction
    overlaid (columns titled by the dict's keys, the same keys on every row).

    rows: (image uint8 (H,W,3), label uint8 (H,W), {name: prediction uint8 (H,W)}).
    Each cell is scaled to ``cell_size`` pixels high (aspect kept). Writes a PNG.
    """
    if not rows:
        raise ValueError("rows is empty: nothing to draw")
    names = ["image", "ground truth"] + list(rows[0][2].keys())
    cells = []
    for image, label, predictions in rows:
        if list(predictions.keys()) != names[2:]:
            raise ValueError(f"every row needs the predictions {names[2:]}, "
                             f"got {list(predictions.keys())}")
        row = [image, overlay(image, label)] + [overlay(image, p) for p in predictions.values()]
        cells.append(row)
    widths = [max(int(round(c[0].shape[1] * cell_size / c[0].shape[0])) for c in cells)]
    cell_w, title_h, pad = widths[0], 16, 4
    grid = Image.new("RGB", (len(names) * (cell_w + pad) + pad,
                             title_h + len(cells) * (cell_size + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for j, name in enumerate(names):
        draw.text((pad + j * (cell_w + pad) + 2, 2), name, fill="black")
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            tile = Image.fromarray(cell).resize(
                (int(round(cell.shape[1] * cell_size / cell.shape[0])), cell_size),
                Image.NEAREST)
            grid.paste(tile, (pad + j * (cell_w + pad), title_h + pad + i * (cell_size + pad)))
    grid.save(path, format="PNG")
