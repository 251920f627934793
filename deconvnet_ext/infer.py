"""Instance-wise inference, as in DeconvNet: proposals -> crops -> one batched forward ->
score maps pasted back and aggregated -> softmax; FCN-8s on the whole image; ensemble;
optional dense CRF.

The steps are separate functions so that the demo, ``deconvnet eval`` and
``deconvnet predict`` (and user code) can reuse any of them:

    boxes  = proposal_boxes(image, config)                       # (K,4) int64, with context
    scores = deconvnet_scores(model, [image], [boxes], config)   # [(C,H,W)] aggregated scores
    probs  = torch.softmax(scores[0], 0)
    fcn    = fcn_scores(fcn_model, [image])[0]                   # (C,H,W) logits
    both   = ensemble(probs, fcn, rule="mean")
    refined = dense_crf(both, image)                             # from deconvnet_ext.crf

or everything at once with ``predict_variants``.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .crf import CRFParams, dense_crf

ENSEMBLE_RULES = ("mean", "product")
AGGREGATION_MODES = ("max", "mean")


@dataclass
class InferenceConfig:
    """Knobs of the instance-wise pipeline (defaults follow the paper / original release).

    max_proposals: proposals kept per image (paper: top 50 of ~2000).
    min_size: proposals whose short side is under this many pixels are skipped; None
        (default) scales the original's 112 px on ~500 px VOC images to the image
        (``proposals.scaled_min_size``).
    context: each proposal is enlarged about its centre by this factor before cropping
        (crops with context; 1.0 = none).
    proposal_method: "selective_search" (OpenCV, fast mode) or "edgeboxes" (needs
        ``edge_model``, a structured-edge model file).
    batch_size: crops per forward pass (crops of several images share batches).
    aggregation: "max" (paper) or "mean" over the proposals covering a pixel.
    ensemble_rule: "mean" of the DeconvNet and FCN-8s probabilities (paper) or "product",
        the original release's ``deconv * max(0, fcn)``.
    crf: dense CRF parameters used by the "+CRF" variants.
    """
    max_proposals: int = 50
    min_size: Optional[int] = None
    context: float = 1.2
    proposal_method: str = "selective_search"
    edge_model: Optional[str] = None
    batch_size: int = 64
    aggregation: str = "max"
    ensemble_rule: str = "mean"
    crf: CRFParams = field(default_factory=CRFParams)

    def __post_init__(self) -> None:
        if self.max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {self.max_proposals}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.aggregation not in AGGREGATION_MODES:
            raise ValueError(f"aggregation must be one of {AGGREGATION_MODES}, "
                             f"got {self.aggregation!r}")
        if self.ensemble_rule not in ENSEMBLE_RULES:
            raise ValueError(f"ensemble_rule must be one of {ENSEMBLE_RULES}, "
                             f"got {self.ensemble_rule!r}")
        if not self.context >= 1.0:
            raise ValueError(f"context must be >= 1.0 (an enlargement factor), "
                             f"got {self.context}")
        if self.min_size is not None and self.min_size < 0:
            raise ValueError(f"min_size must be >= 0 or None, got {self.min_size}")


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The InferenceConfig options, shared by ``deconvnet predict``, ``eval`` and ``demo``."""
    d = InferenceConfig()
    g = parser.add_argument_group("inference")
    g.add_argument("--max-proposals", type=int, default=d.max_proposals,
                   help="proposals segmented per image (default %(default)s, the paper's 50)")
    g.add_argument("--min-size", type=int, default=d.min_size,
                   help="skip proposals whose short side is under this many pixels "
                        "(default: the original's 112 px at 500 px, scaled to the image)")
    g.add_argument("--context", type=float, default=d.context,
                   help="enlarge each proposal about its centre by this factor before "
                        "cropping (default %(default)s; 1 = no context)")
    g.add_argument("--proposals", dest="proposal_method", default=d.proposal_method,
                   choices=("selective_search", "edgeboxes"),
                   help="proposal generator (default %(default)s)")
    g.add_argument("--edge-model", default=None,
                   help="structured-edge model file (.yml.gz) for --proposals edgeboxes")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="crops per forward pass (default %(default)s)")
    g.add_argument("--aggregation", default=d.aggregation, choices=AGGREGATION_MODES,
                   help="how proposal score maps combine per pixel (default %(default)s)")
    g.add_argument("--ensemble", dest="ensemble_rule", default=d.ensemble_rule,
                   choices=ENSEMBLE_RULES,
                   help="EDeconvNet rule: mean of probabilities (paper) or the original "
                        "release's deconv * max(0, fcn) product (default %(default)s)")
    g.add_argument("--crf-iterations", type=int, default=d.crf.iterations,
                   help="dense CRF mean-field iterations (default %(default)s)")


def inference_config_from_args(args: argparse.Namespace) -> InferenceConfig:
    """InferenceConfig from the options of ``add_inference_arguments``."""
    from .errors import UserError
    if args.proposal_method == "edgeboxes" and not args.edge_model:
        raise UserError("--proposals edgeboxes needs --edge-model FILE (a structured-edge "
                        "model, e.g. OpenCV's model.yml.gz)")
    if args.edge_model and not os.path.isfile(args.edge_model):
        raise UserError(f"--edge-model {args.edge_model!r}: file not found")
    try:
        return InferenceConfig(max_proposals=args.max_proposals, min_size=args.min_size,
                               context=args.context, proposal_method=args.proposal_method,
                               edge_model=args.edge_model, batch_size=args.batch_size,
                               aggregation=args.aggregation, ensemble_rule=args.ensemble_rule,
                               crf=CRFParams(iterations=args.crf_iterations))
    except ValueError as exc:  # a bad option value: the user's mistake, one line
        raise UserError(str(exc)) from None


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H,W,3) RGB -> normalized float32 (3,H,W), the same transform as training."""
    from .data.transforms import image_to_tensor
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            and image.shape[2] == 3):
        got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"image must be a uint8 (H,W,3) RGB array, got {got}")
    return torch.as_tensor(image_to_tensor(image))


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_models(checkpoint: Optional[str], fcn_checkpoint: Optional[str] = None,
                device: Optional[torch.device] = None
                ) -> "tuple[Optional[torch.nn.Module], Optional[torch.nn.Module]]":
    """(DeconvNet, FCN-8s) from checkpoint files written by ``deconvnet train``, in eval
    mode on ``device``; either path may be None. A checkpoint of the wrong kind (an FCN-8s
    given as the DeconvNet or the reverse) raises UserError naming the file."""
    from .checkpoint import load_model
    from .errors import UserError

    device = device or default_device()
    models = []
    for path, kind, flag in ((checkpoint, "deconvnet", "--checkpoint"),
                             (fcn_checkpoint, "fcn8s", "--fcn-checkpoint")):
        if path is None:
            models.append(None)
            continue
        model, meta = load_model(path)
        if meta.get("kind") != kind:
            raise UserError(f"{flag} {path}: holds a {meta.get('kind')!r} model, "
                            f"expected {kind!r}")
        models.append(model.to(device).eval())
    return models[0], models[1]


# ----------------------------------------------------------------------------- proposals

def proposal_boxes(image: np.ndarray, config: Optional[InferenceConfig] = None) -> torch.Tensor:
    """Ranked proposals of one image with context padding.

    image: uint8 (H,W,3) RGB. Returns int64 (K,4) boxes [x0,y0,x1,y1) in image pixels,
    K <= max_proposals; boxes may extend past the image (the context). When the proposal
    generator finds nothing, the whole image is the one proposal, so every image gets a
    prediction.
    """
    from .proposals import add_context, propose, scaled_min_size

    config = config or InferenceConfig()
    height, width = image.shape[:2]
    min_size = scaled_min_size((height, width)) if config.min_size is None else config.min_size
    boxes = propose(image, max_proposals=config.max_proposals, min_size=min_size,
                    method=config.proposal_method, edge_model=config.edge_model)
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.int64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        boxes = torch.tensor([[0, 0, width, height]], dtype=torch.int64)
    if config.context != 1.0:
        boxes = torch.as_tensor(np.asarray(add_context(boxes.numpy(), (height, width),
                                                       config.context)),
                                dtype=torch.int64).reshape(-1, 4)
    return boxes


# ----------------------------------------------------------------------------- crops

def crop_and_resize(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of ``image`` at ``boxes``, each resized to size x size (aspect ignored, as the
    original release does), bilinear, in one ``grid_sample`` call.

    image: float (3,H,W) normalized. boxes: int (K,4) [x0,y0,x1,y1), may extend past the
    image; outside the image the crop is 0, i.e. the mean colour after normalization.
    Returns float (K,3,size,size) on image's device.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (3,H,W), got shape {tuple(image.shape)}")
    boxes = torch.as_tensor(boxes).reshape(-1, 4)
    k = boxes.shape[0]
    _, height, width = image.shape
    if k == 0:
        return image.new_zeros(0, image.shape[0], size, size)
    b = boxes.to(device=image.device, dtype=torch.float64)
    if bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
        raise ValueError("boxes must have x1 > x0 and y1 > y0")
    # Output pixel i samples the crop at x0 + (i + 0.5) * w / size (pixel-centre mapping,
    # as F.interpolate(align_corners=False)); grid_sample wants that in [-1, 1] units of
    # the whole image (align_corners=False: -1 and 1 are the image's outer edges).
    steps = (torch.arange(size, device=image.device, dtype=torch.float64) + 0.5) / size
    xs = b[:, 0:1] + steps[None, :] * (b[:, 2:3] - b[:, 0:1])          # (K,S)
    ys = b[:, 1:2] + steps[None, :] * (b[:, 3:4] - b[:, 1:2])          # (K,S)
    gx = (xs / width * 2 - 1)[:, None, :].expand(k, size, size)
    gy = (ys / height * 2 - 1)[:, :, None].expand(k, size, size)
    grid = torch.stack([gx, gy], dim=-1).to(image.dtype)
    src = image.unsqueeze(0).expand(k, -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------- DeconvNet

def segment_crops(model: torch.nn.Module, crops: torch.Tensor, batch_size: int = 64
                  ) -> torch.Tensor:
    """Pre-softmax score maps of crops. crops: float (K,3,S,S). Returns float32 (K,C,S,S)
    on the crops' device; forward in batches of ``batch_size`` under inference_mode."""
    model.eval()
    device = _model_device(model)
    outputs = []
    with torch.inference_mode():
        for start in range(0, crops.shape[0], batch_size):
            batch = crops[start:start + batch_size].to(device)
            outputs.append(model(batch).float())
    if not outputs:
        raise ValueError("crops is empty: need at least one crop to segment")
    return torch.cat(outputs).to(crops.device)


def deconvnet_scores(model: torch.nn.Module, images: Sequence[np.ndarray],
                     boxes: Sequence[torch.Tensor], config: Optional[InferenceConfig] = None
                     ) -> List[torch.Tensor]:
    """Instance-wise DeconvNet scores of several images.

    images: uint8 (H,W,3) RGB each (sizes may differ). boxes: per image int64 (K_i,4)
    proposals (``proposal_boxes``). All crops of all images go through the network in
    shared batches; their score maps are aggregated per image with
    ``dx.aggregate_proposals`` (one call per distinct image size, ``image_index`` picking
    each proposal's image). Returns per image float32 (C,H,W) aggregated pre-softmax
    scores on the model's device.
    """
    from . import aggregate_proposals

    config = config or InferenceConfig()
    if len(images) != len(boxes):
        raise ValueError(f"images and boxes must have the same length, got {len(images)} "
                         f"images and {len(boxes)} box tensors")
    size = int(model.input_size)
    device = _model_device(model)
    crops, owner = [], []
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.int64).reshape(-1, 4)
        if image_boxes.shape[0] == 0:
            raise ValueError(f"boxes[{i}] is empty: every image needs at least one proposal")
        crops.append(crop_and_resize(_image_tensor(image).to(device), image_boxes, size))
        owner.append(torch.full((image_boxes.shape[0],), i, dtype=torch.int64))
    maps = segment_crops(model, torch.cat(crops), config.batch_size)
    owner_all = torch.cat(owner).to(maps.device)
    boxes_all = torch.cat([torch.as_tensor(b, dtype=torch.int64).reshape(-1, 4)
                           for b in boxes]).to(maps.device)

    results: List[Optional[torch.Tensor]] = [None] * len(images)
    by_size: Dict[tuple, List[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[:2]), []).append(i)
    for (height, width), members in by_size.items():
        # Proposals of the images of this size, renumbered 0..len(members)-1.
        remap = torch.full((len(images),), -1, dtype=torch.int64, device=maps.device)
        remap[torch.tensor(members, device=maps.device)] = torch.arange(
            len(members), device=maps.device)
        keep = remap[owner_all] >= 0
        aggregated = aggregate_proposals(maps[keep], boxes_all[keep], image_size=(height, width),
                                         mode=config.aggregation,
                                         image_index=remap[owner_all[keep]],
                                         num_images=len(members))
        for j, i in enumerate(members):
            results[i] = aggregated[j]
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- FCN-8s

def fcn_scores(model: torch.nn.Module, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
    """FCN-8s on whole images. images: uint8 (H,W,3) each. Returns per image float32
    (C,H,W) logits on the model's device (images of one size share a forward pass)."""
    model.eval()
    device = _model_device(model)
    results: List[Optional[torch.Tensor]] = [None] * len(images)
    by_size: Dict[tuple, List[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[:2]), []).append(i)
    with torch.inference_mode():
        for members in by_size.values():
            batch = torch.stack([_image_tensor(images[i]) for i in members]).to(device)
            logits = model(batch).float()
            for j, i in enumerate(members):
                results[i] = logits[j]
    return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------- ensemble

def ensemble(deconv_probs: torch.Tensor, fcn_logits: torch.Tensor, rule: str = "mean"
             ) -> torch.Tensor:
    """EDeconvNet: combine DeconvNet probabilities (C,H,W) with FCN-8s logits (C,H,W).

    "mean" (the paper): average of the two probability maps.
    "product" (the original release): deconv_probs * max(0, fcn_logits), renormalized per
    pixel; a pixel where every product is 0 keeps the DeconvNet probabilities.
    Returns float32 (C,H,W) probabilities.
    """
    if deconv_probs.shape != fcn_logits.shape:
        raise ValueError(f"deconv_probs {tuple(deconv_probs.shape)} and fcn_logits "
                         f"{tuple(fcn_logits.shape)} must have the same shape")
    deconv_probs = deconv_probs.float()
    fcn_logits = fcn_logits.float().to(deconv_probs.device)
    if rule == "mean":
        return 0.5 * (deconv_probs + torch.softmax(fcn_logits, dim=0))
    if rule == "product":
        product = deconv_probs * fcn_logits.clamp_min(0)
        total = product.sum(dim=0, keepdim=True)
        return torch.where(total > 0, product / total.clamp_min(1e-30), deconv_probs)
    raise ValueError(f"rule must be one of {ENSEMBLE_RULES}, got {rule!r}")


# ----------------------------------------------------------------------------- all at once

VARIANTS = ("FCN-8s", "DeconvNet", "DeconvNet+CRF", "EDeconvNet", "EDeconvNet+CRF")


def predict_variants(images: Sequence[np.ndarray], deconvnet: Optional[torch.nn.Module],
                     fcn: Optional[torch.nn.Module] = None,
                     config: Optional[InferenceConfig] = None, use_crf: bool = True,
                     boxes: Optional[Sequence[torch.Tensor]] = None,
                     variants: Optional[Sequence[str]] = None
                     ) -> List[Dict[str, np.ndarray]]:
    """The paper's table rows for a few images at once.

    images: uint8 (H,W,3) RGB each. deconvnet / fcn: either may be None (its rows are
    skipped; the ensemble rows need both). use_crf=False skips the "+CRF" rows.
    boxes: optional precomputed proposals per image. variants: compute only these
    (default all of ``VARIANTS``).
    Returns per image {variant name: float32 (C,H,W) probabilities (numpy)}.
    """
    config = config or InferenceConfig()
    wanted = set(VARIANTS if variants is None else variants)
    unknown = wanted - set(VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {sorted(unknown)}")
    if not use_crf:
        wanted -= {"DeconvNet+CRF", "EDeconvNet+CRF"}
    if deconvnet is None:
        wanted -= {"DeconvNet", "DeconvNet+CRF", "EDeconvNet", "EDeconvNet+CRF"}
    if fcn is None:
        wanted -= {"FCN-8s", "EDeconvNet", "EDeconvNet+CRF"}
    need_deconv = bool(wanted - {"FCN-8s"})
    need_fcn = bool(wanted & {"FCN-8s", "EDeconvNet", "EDeconvNet+CRF"})

    out: List[Dict[str, np.ndarray]] = [dict() for _ in images]
    deconv_probs: List[Optional[torch.Tensor]] = [None] * len(images)
    fcn_logits: List[Optional[torch.Tensor]] = [None] * len(images)
    if need_deconv:
        if boxes is None:
            boxes = [proposal_boxes(image, config) for image in images]
        scores = deconvnet_scores(deconvnet, images, boxes, config)
        deconv_probs = [torch.softmax(s, dim=0) for s in scores]
    if need_fcn:
        fcn_logits = fcn_scores(fcn, images)
    for i, image in enumerate(images):
        rows = out[i]
        if "FCN-8s" in wanted:
            rows["FCN-8s"] = torch.softmax(fcn_logits[i], dim=0).cpu().numpy()
        if "DeconvNet" in wanted or "DeconvNet+CRF" in wanted:
            probs = deconv_probs[i].cpu().numpy()
            if "DeconvNet" in wanted:
                rows["DeconvNet"] = probs
            if "DeconvNet+CRF" in wanted:
                rows["DeconvNet+CRF"] = dense_crf(probs, image, config.crf)
        if "EDeconvNet" in wanted or "EDeconvNet+CRF" in wanted:
            both = ensemble(deconv_probs[i], fcn_logits[i], config.ensemble_rule).cpu().numpy()
            if "EDeconvNet" in wanted:
                rows["EDeconvNet"] = both
            if "EDeconvNet+CRF" in wanted:
                rows["EDeconvNet+CRF"] = dense_crf(both, image, config.crf)
    return out
