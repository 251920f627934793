"""Segmentation metrics from a confusion matrix: per-class IoU, mean IU, pixel accuracy.

The confusion matrix is accumulated with one ``bincount`` per image (no Python loop over
pixels or classes). Label 255 (VOC's "void"/boundary band) is ignored, as is any label
outside ``[0, num_classes)``.

Mean IU follows the VOC devkit's practice for a split: a class that appears neither in
the ground truth nor in the prediction has an undefined IoU (0/0) and is left out of the
mean, instead of counting as 0 or 1. ``per_class_iou`` returns NaN for such classes.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

IGNORE_LABEL = 255

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    return x


def confusion_matrix(label: ArrayLike, prediction: ArrayLike, num_classes: int,
                     ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """Confusion matrix of one image (or any batch of pixels).

    label, prediction: integer arrays of the same shape (e.g. (H,W)), class ids;
    pixels whose label is ``ignore_label`` or outside [0, num_classes) are skipped.
    Returns int64 (num_classes, num_classes): rows = ground truth, columns = prediction.
    """
    label = _as_numpy(label, "label")
    prediction = _as_numpy(prediction, "prediction")
    if label.shape != prediction.shape:
        raise ValueError(f"label and prediction must have the same shape, got label "
                         f"{label.shape} and prediction {prediction.shape}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    label = label.reshape(-1).astype(np.int64, copy=False)
    prediction = prediction.reshape(-1).astype(np.int64, copy=False)
    valid = (label != ignore_label) & (label >= 0) & (label < num_classes)
    label, prediction = label[valid], prediction[valid]
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_classes):
        bad = prediction[(prediction < 0) | (prediction >= num_classes)][0]
        raise ValueError(f"prediction holds class id {bad}, outside [0, {num_classes})")
    flat = np.bincount(label * num_classes + prediction, minlength=num_classes ** 2)
    return flat.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class: TP / (TP + FP + FN). float64 (C,); NaN where the class is
    absent from both ground truth and prediction (0/0)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {confusion.shape}")
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean of ``per_class_iou`` over the classes present in ground truth or prediction
    (VOC practice; absent classes are excluded). NaN when no pixel was counted."""
    iou = per_class_iou(confusion)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of counted (non-ignored) pixels predicted correctly; NaN when none."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")


class ConfusionMatrix:
    """Running confusion matrix over a split.

    >>> cm = ConfusionMatrix(21)
    >>> cm.update(label_hw, prediction_hw)        # once per image
    >>> cm.mean_iou(), cm.per_class_iou(), cm.pixel_accuracy()
    """

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL):
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, label: ArrayLike, prediction: ArrayLike) -> None:
        """Add one image's (or batch's) pixels; shapes as ``confusion_matrix``."""
        self.matrix += confusion_matrix(label, prediction, self.num_classes, self.ignore_label)

    def per_class_iou(self) -> np.ndarray:
        return per_class_iou(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)

    def summary(self, class_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """JSON-friendly dict: mean_iou, pixel_accuracy, per_class_iou {name: IoU or None}."""
        names: List[str] = (list(class_names) if class_names is not None
                            else [str(i) for i in range(self.num_classes)])
        if len(names) != self.num_classes:
            raise ValueError(f"class_names must have {self.num_classes} entries, "
                             f"got {len(names)}")
        iou = self.per_class_iou()
        return {
            "mean_iou": self.mean_iou(),
            "pixel_accuracy": self.pixel_accuracy(),
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)},
        }
