"""Region proposals for instance-wise inference and stage-2 training crops.

`propose` returns ranked integer boxes [x0, y0, x1, y1) inside the image:
  - "selective_search" (default): OpenCV's selective search, fast mode, run on the
    image downscaled to `work_size` for speed, boxes scaled back.
    OpenCV ranks its boxes with an internal random generator that is not reseedable
    from Python (two calls on the same image return different orders). The box *set*
    is deterministic, so we rank it ourselves the way Uijlings et al. do -- hierarchy
    position (here: area order, large first, the top of the grouping hierarchy) times
    a random number -- with a fixed-seed generator: the same image always gives the
    same ranked list.
  - "edgeboxes": EdgeBoxes (Zitnick & Dollar, the paper's choice) on structured edges;
    needs the structured-edge model file (`model.yml.gz` from opencv_extra) passed as
    `edge_model`. Boxes ranked by EdgeBoxes score.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import UserError

METHODS = ("selective_search", "edgeboxes")
# The original release skipped proposals with a side under 112 px on ~500 px VOC images.
FULL_SCALE_MIN_SIZE = 112
FULL_SCALE_LONG_SIDE = 500
_RANK_SEED = 20150  # fixed: the ranking is part of the method, not of the caller's seed


def scaled_min_size(image_size: Sequence[int], full_min_size: int = FULL_SCALE_MIN_SIZE,
                    full_long_side: int = FULL_SCALE_LONG_SIDE) -> int:
    """The original minimum proposal size (112 px on ~500 px images) scaled to an image
    of size (H, W): round(112 * max(H, W) / 500)."""
    return max(1, int(round(full_min_size * max(image_size[:2]) / full_long_side)))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"propose: image must be a uint8 (H, W, 3) RGB array, got {got}")


def _selective_search_xywh(image: np.ndarray) -> np.ndarray:
    """OpenCV selective search (fast) -> unique (K, 4) int64 x, y, w, h in deterministic
    pseudo-random hierarchy order."""
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process(), dtype=np.int64).reshape(-1, 4)
    rects = np.unique(rects, axis=0)  # canonical order (OpenCV's own is not reproducible)
    areas = rects[:, 2] * rects[:, 3]
    # Uijlings' ranking: position in the hierarchy (1 = whole-image region) times U(0,1).
    order = np.lexsort((rects[:, 3], rects[:, 2], rects[:, 1], rects[:, 0], -areas))
    position = np.empty(len(rects))
    position[order] = np.arange(1, len(rects) + 1)
    key = position * np.random.default_rng(_RANK_SEED).random(len(rects))
    return rects[np.argsort(key, kind="stable")]


_EDGE_DETECTORS: dict[str, object] = {}


def _edge_boxes_xywh(image: np.ndarray, edge_model, max_boxes: int) -> np.ndarray:
    if edge_model is None:
        raise UserError("method='edgeboxes' needs edge_model: the path of a structured "
                        "edge model file (model.yml.gz from opencv_extra)")
    path = Path(edge_model)
    if not path.is_file():
        raise UserError(f"edge_model {str(path)!r}: structured edge model file not found")
    key = str(path.resolve())
    if key not in _EDGE_DETECTORS:
        try:
            _EDGE_DETECTORS[key] = cv2.ximgproc.createStructuredEdgeDetection(key)
        except cv2.error as exc:
            raise UserError(f"edge_model {str(path)!r}: cannot load structured edge "
                            f"model ({str(exc).strip().splitlines()[-1]})") from exc
    detector = _EDGE_DETECTORS[key]
    edges = detector.detectEdges(image.astype(np.float32) / 255.0)
    orientation = detector.computeOrientation(edges)
    edges = detector.edgesNms(edges, orientation)
    boxes_model = cv2.ximgproc.createEdgeBoxes()
    boxes_model.setMaxBoxes(int(max_boxes))
    found = boxes_model.getBoundingBoxes(edges, orientation)
    rects = found[0] if isinstance(found, tuple) else found
    return np.asarray(rects, dtype=np.int64).reshape(-1, 4)


def propose(image: np.ndarray, max_proposals: int = 2000, min_size: int = 0,
            method: str = "selective_search", edge_model: str | Path | None = None,
            work_size: int | None = 256, upscale: bool = False) -> np.ndarray:
    """Ranked region proposals for uint8 (H, W, 3) RGB `image`.

    Returns int64 (K, 4) boxes [x0, y0, x1, y1) with 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H,
    best first, no duplicates, K <= max_proposals. Boxes whose shorter side is under
    `min_size` px (image pixels) are skipped (see `scaled_min_size`). work_size: the
    longer image side the proposer runs at when the image is larger (None = full
    resolution); with upscale=True smaller images are enlarged to it too (selective
    search finds more small objects on small images that way, at ~2-4x the time).
    Boxes are scaled back to the image. Deterministic: the same image gives the same
    boxes."""
    _check_image(image)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(max_proposals) < 0:
        raise ValueError(f"max_proposals must be >= 0, got {max_proposals}")
    if int(min_size) < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if work_size is not None and int(work_size) < 16:
        raise ValueError(f"work_size must be >= 16 or None, got {work_size}")
    height, width = image.shape[:2]
    scale = 1.0
    work = image
    if work_size is not None and (max(height, width) > work_size
                                  or (upscale and max(height, width) < work_size)):
        scale = max(height, width) / float(work_size)
        size = (max(1, round(width / scale)), max(1, round(height / scale)))
        shrink = scale > 1
        work = cv2.resize(image, size,
                          interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if method == "selective_search":
        xywh = _selective_search_xywh(work)
    else:
        # ask for more than kept: the min_size filter removes some
        xywh = _edge_boxes_xywh(work, edge_model, max(4 * max_proposals, 100))
    boxes = np.stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2],
                      xywh[:, 1] + xywh[:, 3]], axis=1).astype(np.float64) * scale
    boxes = np.round(boxes).astype(np.int64)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    short_side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    boxes = boxes[short_side >= max(1, int(min_size))]
    # drop duplicates made by rescaling/clipping, keeping the best-ranked copy
    _, first = np.unique(boxes, axis=0, return_index=True)
    boxes = boxes[np.sort(first)]
    return np.ascontiguousarray(boxes[:int(max_proposals)])


def add_context(boxes: np.ndarray, image_size: Sequence[int], ratio: float) -> np.ndarray:
    """Enlarge each box [x0, y0, x1, y1) about its centre by `ratio` (e.g. 1.2), to give
    the net some context. boxes: integer (K, 4) within the image of size (H, W).
    Returns int64 (K, 4), rounded outwards; the result may extend past the image (the
    crop pads, aggregate_proposals clips)."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"boxes must be an integer (K, 4) array, got {boxes.dtype} "
                         f"{boxes.shape}")
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0, got {ratio}")
    height, width = (int(v) for v in image_size[:2])
    if len(boxes) and ((boxes[:, 0] < 0).any() or (boxes[:, 1] < 0).any()
                       or (boxes[:, 2] > width).any() or (boxes[:, 3] > height).any()
                       or (boxes[:, 2] <= boxes[:, 0]).any()
                       or (boxes[:, 3] <= boxes[:, 1]).any()):
        raise ValueError(f"boxes must be non-empty and inside the image_size {height}x"
                         f"{width} (got one outside or empty)")
    b = boxes.astype(np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = (b[:, 2] - b[:, 0]) * ratio / 2, (b[:, 3] - b[:, 1]) * ratio / 2
    out = np.stack([np.floor(cx - hw), np.floor(cy - hh), np.ceil(cx + hw),
                    np.ceil(cy + hh)], axis=1).astype(np.int64)
    # a tiny ratio must still leave a non-empty box
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes [x0, y0, x1, y1): a (N, 4), b (M, 4) -> float64 (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
