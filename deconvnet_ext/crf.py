"""Fully connected CRF (Krähenbühl & Koltun 2011) post-processing, via pydensecrf.

DeconvNet's "+CRF" rows refine the network's class probabilities with a dense CRF whose
unary is -log p and whose pairwise terms are a smoothness (Gaussian) kernel and an
appearance (bilateral) kernel. The default parameters are the ones issue 5 gives
(Gaussian sxy 3 weight 3; bilateral sxy 20, srgb 3, weight 5; 10 mean-field iterations);
every one is configurable through ``CRFParams``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch

# A probability of exactly 0 would give an infinite unary; clamp before the log.
_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters (pixels for sxy, intensity levels for srgb)."""
    gaussian_sxy: float = 3.0
    gaussian_weight: float = 3.0
    bilateral_sxy: float = 20.0
    bilateral_srgb: float = 3.0
    bilateral_weight: float = 5.0
    iterations: int = 10

    def as_dict(self) -> dict:
        return asdict(self)


def dense_crf(probs: Union[np.ndarray, torch.Tensor], image: np.ndarray,
              params: Optional[CRFParams] = None) -> np.ndarray:
    """Refine class probabilities with a dense CRF.

    probs: float (C,H,W) class probabilities (each pixel sums to ~1), numpy or torch.
    image: uint8 (H,W,3) RGB, the image the probabilities belong to.
    Returns float32 (C,H,W): the CRF's approximate marginals after ``iterations`` steps.
    """
    import pydensecrf.densecrf as dcrf  # local import: optional dependency, slow-ish load

    params = params or CRFParams()
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C,H,W), got shape {probs.shape}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise TypeError(f"probs must be floating point, got dtype {probs.dtype}")
    num_classes, height, width = probs.shape
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.shape != (height, width, 3):
        raise ValueError(f"image must be uint8 (H,W,3) = ({height},{width},3) to match probs, "
                         f"got {image.dtype} {image.shape}")
    if params.iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {params.iterations}")
    if num_classes < 2:
        return probs.astype(np.float32, copy=True)

    crf = dcrf.DenseCRF2D(width, height, num_classes)
    unary = -np.log(np.clip(probs, _MIN_PROB, 1.0)).reshape(num_classes, -1)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_weight)
    # pydensecrf takes a writable buffer only (the image may be a read-only cached one)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb,
                             rgbim=np.require(image, requirements=["C", "W"]), compat=params.bilateral_weight)
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)
