"""Instance-wise inference, as in DeconvNet: proposals -> crops -> one batched forward ->
score maps pasted back and aggregated -> softmax; FCN-8s on the whole image; ensemble;
optional dense CRF.

The steps are separate functions so that the demo, ``deconvnet eval`` and
``deconvnet predict`` (and user code) can reuse any of them:

    boxes  = proposal_boxes(image, config)                       # (K,4) int64, with context
    scores = deconvnet_scores(model, [image], [boxes], config)   # [(C,H,W)] aggregated scores
    probs  = torch.softmax(scores[0], 0)
    fcn    = fcn_scores(fcn_model, [image], config.flip)[0]      # (C,H,W) logits
    both   = ensemble(probs, fcn, rule="mean")
    refined = dense_crf(both, image)                             # from deconvnet_ext.crf

or everything at once with ``predict_variants`` (``network_rows`` + ``crf_rows`` per
image; ``deconvnet_ext.pipeline`` streams a whole split through them, the CPU stages in
worker processes).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .crf import CRFParams, dense_crf
from .data.crop_geometry import TRAINING_CROP_CONTEXT

ENSEMBLE_RULES = ("mean", "product")
AGGREGATION_MODES = ("max", "mean", "topk")


@dataclass
class InferenceConfig:
    """Knobs of the instance-wise pipeline (defaults follow the paper / original release).

    max_proposals: proposals kept per image (paper: top 50 of ~2000).
    min_size: proposals whose short side is under this many pixels are skipped; None
        (default) scales the original's 112 px on ~500 px VOC images to the image
        (``proposals.scaled_min_size``).
    context: each proposal is enlarged about its centre by this factor before cropping
        (crops with context; 1.0 = none). Default: 1.2 / (250/224) = 1.075, what a
        training crop shows of its box (``data.crop_geometry.TRAINING_CROP_CONTEXT``).
        At 1.2 the net saw objects smaller than it learnt them and spread them over the
        crop: on the tuning split (synthetic seed 2000003), 1.2 -> 1.075 on the same
        checkpoints gave DeconvNet 34.9 -> 36.9, 38.3 -> 40.8 and 41.5 -> 44.9 mean IU
        (three checkpoints); on the second, background turned object 2.7% -> 1.4% of
        pixels.
    proposal_method: "selective_search" (OpenCV, fast mode) or "edgeboxes" (needs
        ``edge_model``, a structured-edge model file).
    proposal_upscale: the proposer runs on images whose longer side is under its work
        size (``proposals.propose``'s 256 px) enlarged to it, as larger images are
        shrunk to it; selective search then finds more small objects, at ~2.4x its time
        (the synthetic 120 x 160 val images: recall at IoU 0.5 71% -> 82%, boxes under
        16 x 16 px 43% -> 64%). False: they run at their own size.
    batch_size: crops per forward pass (an image's crops never share a batch with
        another image's, so its scores do not depend on the images around it).
    aggregation: "max" (paper) or "mean" over the proposals covering a pixel, or "topk":
        the mean of the ``topk`` largest scores of the proposals covering a pixel (a max
        that needs a few crops to agree; ``topk_aggregation``).
    topk: k of the "topk" aggregation (1 is "max").
    refine_rounds: rounds of self-consistent proposal selection after the aggregation
        (0: none): keep the proposals whose box overlaps a region the aggregated
        segmentation found at IoU >= ``refine_iou`` and aggregate those again
        (``proposal_refinement``).
    refine_iou: the IoU a proposal needs with a found region to be kept.
    min_objectness: aggregate only the crops whose proposal score (the DeconvNet's
        fitted ``proposal_scorer``: p(the box overlaps an object at IoU >= 0.5), read
        off the crop's own map) is at least this (0: every crop, the paper; none passes:
        the best-scored one). Needs a DeconvNet with a proposal scorer.
    region_crops: after the aggregation, crop each connected object region it found
        (the region's bounding box with ``context``), run the network on those crops
        and aggregate again with them added to the proposal crops (kept by the scorer
        when ``min_objectness`` > 0; the region crops are always kept): a tight crop of
        what a few loose proposals found (``deconvnet_image_scores``). Costs one more
        forward pass over a few crops per image.
    uncovered_background: the background probability of a pixel that no aggregated
        crop covers (the other classes share the rest equally); 0: every score 0 there,
        uniform probabilities, as the paper's zero canvas gives. At least 1/C, the argmax
        is background either way; what changes is what the CRF and the ensemble read
        there: with few crops kept (``min_objectness``) uniform pixels are where the CRF
        spreads objects.
    flip: test-time mirroring: each network's scores are the mean of its scores for the
        input and, mirrored back, for the horizontally mirrored input (DeconvNet's per
        crop, so the proposal scorer's fit and every aggregation see the averaged maps;
        FCN-8s's per image). Twice the network time; the paper does not (False). Why
        the demo leaves it off: on its tuning splits (synthetic seeds 2000003 /
        2000006, its checkpoints and defaults, the scorer refitted on the averaged
        maps; 2026-12-07) it lifts FCN-8s 55.3 -> 57.9 / 47.1 -> 48.1 and DeconvNet
        56.3 -> 57.0 / 50.5 -> 50.5, so DeconvNet's lead over FCN-8s shrinks (+1.0 ->
        -0.9 / +3.4 -> +2.4), for ~40 s more inference and ~25 s more scorer fit.
    ensemble_rule: "mean" of the DeconvNet and FCN-8s probabilities (paper) or "product",
        the original release's ``deconv * max(0, fcn)``.
    crf: dense CRF parameters used by the "+CRF" variants.
    """
    max_proposals: int = 50
    min_size: Optional[int] = None
    context: float = TRAINING_CROP_CONTEXT
    proposal_method: str = "selective_search"
    edge_model: Optional[str] = None
    proposal_upscale: bool = False
    batch_size: int = 64
    aggregation: str = "max"
    topk: int = 5
    refine_rounds: int = 0
    refine_iou: float = 0.3
    min_objectness: float = 0.0
    region_crops: bool = False
    uncovered_background: float = 0.0
    flip: bool = False
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
        if isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1:
            raise ValueError(f"topk must be an int >= 1, got {self.topk!r}")
        if (isinstance(self.refine_rounds, bool) or not isinstance(self.refine_rounds, int)
                or self.refine_rounds < 0):
            raise ValueError(f"refine_rounds must be an int >= 0, got {self.refine_rounds!r}")
        if not 0.0 < self.refine_iou <= 1.0:
            raise ValueError(f"refine_iou must be in (0, 1], got {self.refine_iou!r}")
        if not 0.0 <= self.min_objectness < 1.0:
            raise ValueError(f"min_objectness must be in [0, 1), got {self.min_objectness!r}")
        if not 0.0 <= self.uncovered_background < 1.0:
            raise ValueError(f"uncovered_background must be in [0, 1), "
                             f"got {self.uncovered_background!r}")
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
                        "cropping (default %(default).3f, the training crops' own; 1 = no context)")
    g.add_argument("--proposals", dest="proposal_method", default=d.proposal_method,
                   choices=("selective_search", "edgeboxes"),
                   help="proposal generator (default %(default)s)")
    g.add_argument("--edge-model", default=None,
                   help="structured-edge model file (.yml.gz) for --proposals edgeboxes")
    g.add_argument("--proposal-upscale", action=argparse.BooleanOptionalAction,
                   default=d.proposal_upscale,
                   help="run the proposer on small images enlarged to its 256-px work size "
                        "(more small objects found, ~2.4x the proposal time; default: "
                        "%(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="crops per forward pass, within one image (default %(default)s)")
    g.add_argument("--aggregation", default=d.aggregation, choices=AGGREGATION_MODES,
                   help="how proposal score maps combine per pixel: max (the paper), mean, "
                        "or topk, the mean of the --topk largest (default %(default)s)")
    g.add_argument("--topk", type=int, default=d.topk,
                   help="k of --aggregation topk (default %(default)s; 1 = max)")
    g.add_argument("--refine-rounds", type=int, default=d.refine_rounds,
                   help="rounds of keeping only the proposals that match a region the "
                        "aggregated segmentation found, then aggregating again "
                        "(default %(default)s)")
    g.add_argument("--refine-iou", type=float, default=d.refine_iou,
                   help="IoU a proposal needs with a found region to be kept "
                        "(default %(default)s)")
    g.add_argument("--min-objectness", type=float, default=d.min_objectness,
                   help="aggregate only the proposal crops that the DeconvNet checkpoint's "
                        "proposal scorer gives at least this probability of holding an "
                        "object (default %(default)s: every crop)")
    g.add_argument("--region-crops", action=argparse.BooleanOptionalAction,
                   default=d.region_crops,
                   help="after aggregating, crop each object region found and aggregate "
                        "again with those crops added (default: %(default)s)")
    g.add_argument("--uncovered-background", type=float, default=d.uncovered_background,
                   help="background probability of the pixels no aggregated proposal "
                        "crop covers (default %(default)s: uniform probabilities there)")
    g.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip,
                   help="average each network's scores with those of the mirrored input "
                        "(DeconvNet per crop, FCN-8s per image; twice the network time; "
                        "default: %(default)s)")
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
                               edge_model=args.edge_model,
                               proposal_upscale=args.proposal_upscale,
                               batch_size=args.batch_size,
                               aggregation=args.aggregation, topk=args.topk,
                               refine_rounds=args.refine_rounds, refine_iou=args.refine_iou,
                               min_objectness=args.min_objectness,
                               region_crops=args.region_crops,
                               uncovered_background=args.uncovered_background,
                               flip=args.flip, ensemble_rule=args.ensemble_rule,
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
    mode on ``device`` (a DeconvNet on the CPU in channels_last memory format: the same
    scores to float rounding, faster); either path may be None. A checkpoint of the
    wrong kind (an FCN-8s given as the DeconvNet or the reverse) raises UserError naming
    the file."""
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
        model = model.to(device).eval()
        if kind == "deconvnet" and device.type == "cpu":
            # oneDNN runs the tiny DeconvNet's convolutions 1.6x faster channels_last on
            # CPU (64 crops of 64x64: 320 -> 195 ms, this project's 2-core machine);
            # weights alone decide the layout, the crops may stay NCHW.
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
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
                    method=config.proposal_method, edge_model=config.edge_model,
                    upscale=config.proposal_upscale)
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

def segment_crops(model: torch.nn.Module, crops: torch.Tensor, batch_size: int = 64,
                  flip: bool = False) -> torch.Tensor:
    """Pre-softmax score maps of crops. crops: float (K,3,S,S). Returns float32 (K,C,S,S)
    on the crops' device; forward in batches of ``batch_size`` under inference_mode.
    ``flip``: the mean of the maps of the crops and, mirrored back, of the mirrored
    crops (each in its own batches, so a crop's maps never depend on the mirror pass)."""
    model.eval()
    device = _model_device(model)
    outputs = []
    with torch.inference_mode():
        for start in range(0, crops.shape[0], batch_size):
            batch = crops[start:start + batch_size].to(device)
            outputs.append(_mirror_mean(model, batch) if flip else model(batch).float())
    if not outputs:
        raise ValueError("crops is empty: need at least one crop to segment")
    return torch.cat(outputs).to(crops.device)


def _mirror_mean(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """float32 mean of ``model(batch)`` and ``model`` of the horizontally mirrored batch,
    mirrored back (test-time mirroring, ``InferenceConfig.flip``)."""
    plain = model(batch).float()
    mirrored = model(batch.flip(-1))
    return (plain + mirrored.float().flip(-1)) * 0.5


def deconvnet_crop_maps(model: torch.nn.Module, image: np.ndarray, boxes: torch.Tensor,
                        config: Optional[InferenceConfig] = None) -> torch.Tensor:
    """Pre-softmax score maps of one image's proposal crops.

    image: uint8 (H,W,3) RGB. boxes: int64 (K,4) proposals (``proposal_boxes``), K >= 1.
    Returns float32 (K,C,S,S) on the model's device. The crops go through the network
    in chunks of ``config.batch_size`` of this image's crops only: a convolution's
    floating-point result can change with the batch it runs in, so mixing images in a
    batch would make an image's scores depend on its neighbours in the split.
    """
    config = config or InferenceConfig()
    boxes = torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        raise ValueError("boxes is empty: every image needs at least one proposal")
    device = _model_device(model)
    crops = crop_and_resize(_image_tensor(image).to(device), boxes, int(model.input_size))
    return segment_crops(model, crops, config.batch_size, config.flip)


def aggregate_crop_maps(maps: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
                        config: Optional[InferenceConfig] = None,
                        scorer: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """One image's crop score maps (K,C,S,S) pasted at their boxes (K,4) and combined
    per pixel (``config.aggregation``): "max" and "mean" with the fused
    ``dx.aggregate_proposals``, "topk" with ``topk_aggregation.aggregate_topk_mean``;
    with ``config.min_objectness`` > 0 only the crops that ``scorer`` (a
    ``ProposalScorer``, then required) gives at least that score;
    then ``config.refine_rounds`` rounds of ``proposal_refinement.consistent_proposals``
    (aggregate again the proposals that match what the last aggregation found; none
    kept: every score 0); last, with ``config.uncovered_background`` > 0, the pixels
    that none of the finally aggregated crops covers get that background probability
    (``_background_where_uncovered``). Returns float32 (C,H,W) on the maps' device."""
    from .proposal_refinement import consistent_proposals

    config = config or InferenceConfig()
    boxes = torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4).to(maps.device)
    height, width = int(image_size[0]), int(image_size[1])
    maps, boxes = kept_crops(maps, boxes, (height, width), config, scorer)
    scores = _aggregate(maps, boxes, (height, width), config)
    covering = boxes  # the proposals whose maps make up ``scores``
    for _ in range(config.refine_rounds):
        keep = consistent_proposals(scores, boxes, config.refine_iou)
        if keep.all():
            break  # aggregating the same proposals again gives the same scores
        # a pixel no kept proposal covers gets every score 0, as an uncovered pixel of
        # the first aggregation does: background in the argmax, uniform probabilities
        # (or config.uncovered_background, below)
        scores = (_aggregate(maps[keep], boxes[keep], (height, width), config) if keep.any()
                  else torch.zeros_like(scores))
        covering = boxes[keep]
    if config.uncovered_background > 0:
        _background_where_uncovered(scores, covering, config.uncovered_background)
    return scores


def kept_crops(maps: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
               config: InferenceConfig, scorer: Optional[torch.nn.Module] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(maps, boxes) of the crops ``aggregate_crop_maps`` aggregates: with
    ``config.min_objectness`` > 0 those ``scorer`` scores at least that (none: the
    best-scored one), else all. boxes: int64 on the maps' device."""
    boxes = torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4).to(maps.device)
    if config.min_objectness <= 0:
        return maps, boxes
    if scorer is None:
        raise ValueError("min_objectness > 0 needs a proposal scorer (a DeconvNet "
                         "checkpoint with one: deconvnet_ext.proposal_scorer)")
    objectness = scorer.score(maps, boxes, (int(image_size[0]), int(image_size[1])))
    keep = objectness >= config.min_objectness
    if not keep.any():  # every image gets a prediction: its likeliest object
        keep[objectness.argmax()] = True
    return maps[keep], boxes[keep]


def deconvnet_image_scores(model: torch.nn.Module, image: np.ndarray, boxes: torch.Tensor,
                           maps: torch.Tensor, config: InferenceConfig,
                           timer: Optional["StageTimer"] = None) -> torch.Tensor:
    """One image's aggregated DeconvNet scores (float32 (C,H,W), pre-softmax) from its
    proposal crops' maps (``deconvnet_crop_maps``): ``aggregate_crop_maps`` with the
    model's proposal scorer; with ``config.region_crops`` a second pass adds a crop
    of each connected object region the first found (``proposal_refinement.region_boxes``,
    enlarged by ``config.context``) to the kept proposal crops and aggregates again;
    ``timer`` (a ``StageTimer``) then counts that pass's forward as "network".

    Why: a proposal that holds an object rarely frames it as the training crops did
    (ground-truth box with context); the region's box does, once a few loose crops have
    found the object. Regions are found only where the first pass painted an object, so
    no new object can appear where no kept crop saw one.

    Measured, and why the demo leaves it off: tuning splits 2000003 / 2000006 (never a
    demo seed), the demo's checkpoints and defaults otherwise (2026-12-07): DeconvNet
    56.3 -> 56.9 / 50.5 -> 51.9, +CRF 58.5 -> 59.4 / 54.5 -> 55.6, but EDeconvNet
    66.7 -> 65.8 / 57.7 -> 56.3 and EDeconvNet+CRF 71.1 -> 67.2 / 56.3 -> 55.3: a
    region crop paints its region confidently whether the region is an object or a
    false positive, and FCN-8s then outvotes it less. Inference took 54-57 s instead
    of 47-49 s."""
    from .proposal_refinement import region_boxes
    from .proposals import add_context

    scorer = proposal_scorer_of(model)
    size = image.shape[:2]
    if not config.region_crops:
        return aggregate_crop_maps(maps, boxes, size, config, scorer)
    maps, boxes = kept_crops(maps, boxes, size, config, scorer)
    every = dataclasses.replace(config, min_objectness=0.0)
    scores = aggregate_crop_maps(maps, boxes, size, every)
    regions = region_boxes(scores.argmax(0))
    if len(regions) == 0:
        return scores
    if config.context != 1.0:
        regions = add_context(regions, size, config.context)
    regions = torch.as_tensor(np.asarray(regions), dtype=torch.int64).reshape(-1, 4)
    # no timer: no throwaway one either (a StageTimer synchronises a CUDA device)
    timing = (timer("network", _model_device(model)) if timer is not None
              else contextlib.nullcontext())
    with timing:
        region_maps = deconvnet_crop_maps(model, image, regions, config).to(maps.device)
    return aggregate_crop_maps(torch.cat([maps, region_maps]),
                               torch.cat([boxes, regions.to(boxes.device)]), size, every)


def _background_where_uncovered(scores: torch.Tensor, boxes: torch.Tensor,
                                probability: float) -> None:
    """In place: the pixels of ``scores`` (C,H,W) that no box of ``boxes`` (K,4) covers
    get background (class 0) score log(p (C-1) / (1-p)), the other classes keeping 0, so
    their softmax gives background exactly ``probability`` and each other class an equal share."""
    from . import aggregate_proposals

    num_classes, height, width = scores.shape
    if num_classes < 2:
        return  # background alone: its probability is 1 whatever its score
    ones = scores.new_ones((len(boxes), 1, 1, 1))  # a constant map pastes as its box
    covered = aggregate_proposals(ones, boxes, image_size=(height, width), mode="max")[0] > 0
    level = math.log(probability * (num_classes - 1) / (1.0 - probability))
    scores[0].masked_fill_(~covered, level)


def proposal_scorer_of(model: Optional[torch.nn.Module]) -> Optional[torch.nn.Module]:
    """The DeconvNet's fitted proposal scorer, or None (none fitted, or not a DeconvNet)."""
    return getattr(model, "proposal_scorer", None)


def check_proposal_scorer(model: Optional[torch.nn.Module], config: InferenceConfig,
                          checkpoint: Optional[str] = None) -> None:
    """UserError, before any work, when ``config.min_objectness`` > 0 asks for the
    proposal scorer that the DeconvNet ``model`` (read from ``checkpoint``) lacks."""
    from .errors import UserError
    if model is not None and config.min_objectness > 0 and proposal_scorer_of(model) is None:
        raise UserError(f"--min-objectness {config.min_objectness} needs a DeconvNet "
                        f"checkpoint with a proposal scorer, and {checkpoint or 'the model'} "
                        "has none (`deconvnet demo` fits one; in code: "
                        "deconvnet_ext.proposal_scorer.fit_proposal_scorer)")


def _aggregate(maps: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int],
               config: InferenceConfig) -> torch.Tensor:
    from . import aggregate_proposals

    if config.aggregation == "topk":
        from .topk_aggregation import aggregate_topk_mean
        return aggregate_topk_mean(maps, boxes, image_size, config.topk)
    return aggregate_proposals(maps, boxes, image_size=image_size, mode=config.aggregation)


def deconvnet_scores(model: torch.nn.Module, images: Sequence[np.ndarray],
                     boxes: Sequence[torch.Tensor], config: Optional[InferenceConfig] = None
                     ) -> List[torch.Tensor]:
    """Instance-wise DeconvNet scores of several images.

    images: uint8 (H,W,3) RGB each (sizes may differ). boxes: per image int64 (K_i,4)
    proposals (``proposal_boxes``). Each image's crops go through the network in their
    own batches (``deconvnet_crop_maps``: an image's scores are the same bits whatever
    images come with it) and are aggregated with ``aggregate_crop_maps``. Returns per
    image float32 (C,H,W) aggregated pre-softmax scores on the model's device.
    """
    config = config or InferenceConfig()
    if len(images) != len(boxes):
        raise ValueError(f"images and boxes must have the same length, got {len(images)} "
                         f"images and {len(boxes)} box tensors")
    results = []
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        image_boxes = torch.as_tensor(image_boxes, dtype=torch.int64).reshape(-1, 4)
        if image_boxes.shape[0] == 0:
            raise ValueError(f"boxes[{i}] is empty: every image needs at least one proposal")
        maps = deconvnet_crop_maps(model, image, image_boxes, config)
        results.append(deconvnet_image_scores(model, image, image_boxes, maps, config))
    return results


# ----------------------------------------------------------------------------- FCN-8s

def fcn_scores(model: torch.nn.Module, images: Sequence[np.ndarray], flip: bool = False
               ) -> List[torch.Tensor]:
    """FCN-8s on whole images. images: uint8 (H,W,3) each. Returns per image float32
    (C,H,W) logits on the model's device. One forward per image (a batch of one), so an
    image's logits do not depend on the other images given. ``flip``: the mean with the
    logits of the mirrored image, mirrored back (``InferenceConfig.flip``)."""
    model.eval()
    device = _model_device(model)
    results = []
    with torch.inference_mode():
        for image in images:
            x = _image_tensor(image)[None].to(device)
            results.append((_mirror_mean(model, x) if flip else model(x).float())[0])
    return results
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
# each "+CRF" row refines this row's probabilities
CRF_INPUT = {"DeconvNet+CRF": "DeconvNet", "EDeconvNet+CRF": "EDeconvNet"}
STAGES = ("decode", "proposals", "network", "aggregation", "crf")


class StageTimer:
    """Wall seconds spent in each stage of the pipeline (``STAGES``), summed over calls.

    >>> timer = StageTimer()
    >>> with timer("network", device):   # waits for the device's queued work at the end
    ...     ...
    >>> timer.seconds                     # {"decode": 0.0, ..., "network": 1.2, ...}

    Stages nest: a stage timed inside another is counted once, in its own entry, and
    taken out of the enclosing one's (the region crops' forward pass inside
    "aggregation" counts as "network"), so the entries add up to the wall time.
    """

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._inner: List[float] = []  # per open stage: seconds of the stages inside it

    @contextlib.contextmanager
    def __call__(self, stage: str, device: Optional[torch.device] = None):
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
            inner = self._inner.pop()
            self.seconds[stage] += elapsed - inner
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, seconds: Dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + float(value)


def wanted_variants(deconvnet: Optional[torch.nn.Module], fcn: Optional[torch.nn.Module],
                    use_crf: bool = True, variants: Optional[Sequence[str]] = None
                    ) -> Tuple[str, ...]:
    """The rows that can be computed, in ``VARIANTS`` order: ``variants`` (default all)
    less the "+CRF" rows when ``use_crf`` is False and the rows whose model is None (the
    ensemble rows need both)."""
    wanted = set(VARIANTS if variants is None else variants)
    unknown = wanted - set(VARIANTS)
    if unknown:
        raise ValueError(f"variants must be among {VARIANTS}, got {sorted(unknown)}")
    if not use_crf:
        wanted -= set(CRF_INPUT)
    if deconvnet is None:
        wanted -= {"DeconvNet", "DeconvNet+CRF", "EDeconvNet", "EDeconvNet+CRF"}
    if fcn is None:
        wanted -= {"FCN-8s", "EDeconvNet", "EDeconvNet+CRF"}
    return tuple(v for v in VARIANTS if v in wanted)


def network_rows(image: np.ndarray, deconvnet: Optional[torch.nn.Module],
                 fcn: Optional[torch.nn.Module], config: InferenceConfig,
                 wanted: Sequence[str], boxes: Optional[torch.Tensor] = None,
                 timer: Optional[StageTimer] = None) -> Dict[str, np.ndarray]:
    """The network part of ``predict_variants`` for one image: {row: float32 (C,H,W)
    probabilities (numpy)} for each of "FCN-8s", "DeconvNet", "EDeconvNet" that is in
    ``wanted`` or that a wanted "+CRF" row refines (``crf_rows`` finishes those).
    ``boxes``: the image's proposals (computed here when None and DeconvNet is needed);
    ``timer`` collects the seconds of "proposals", "network" and "aggregation"."""
    timer = timer or StageTimer()
    rows_needed = set(wanted) | {CRF_INPUT[v] for v in wanted if v in CRF_INPUT}
    need_deconv = bool(rows_needed & {"DeconvNet", "EDeconvNet"})
    need_fcn = bool(rows_needed & {"FCN-8s", "EDeconvNet"})
    rows: Dict[str, np.ndarray] = {}
    maps = fcn_logits = None
    if need_deconv:
        if boxes is None:
            with timer("proposals"):
                boxes = proposal_boxes(image, config)
        boxes = torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        with timer("network", _model_device(deconvnet)):
            maps = deconvnet_crop_maps(deconvnet, image, boxes, config)
    if need_fcn:
        with timer("network", _model_device(fcn)):
            fcn_logits = fcn_scores(fcn, [image], config.flip)[0]
    with timer("aggregation"):
        if "FCN-8s" in rows_needed:
            rows["FCN-8s"] = torch.softmax(fcn_logits, dim=0).cpu().numpy()
        if need_deconv:
            deconv_probs = torch.softmax(deconvnet_image_scores(
                deconvnet, image, boxes, maps, config, timer), dim=0)
            if "DeconvNet" in rows_needed:
                rows["DeconvNet"] = deconv_probs.cpu().numpy()
            if "EDeconvNet" in rows_needed:
                rows["EDeconvNet"] = ensemble(deconv_probs, fcn_logits,
                                              config.ensemble_rule).cpu().numpy()
    return rows


def crf_rows(rows: Dict[str, np.ndarray], image: np.ndarray, config: InferenceConfig,
             wanted: Sequence[str]) -> Dict[str, np.ndarray]:
    """The wanted "+CRF" rows of one image: the dense CRF over ``rows`` (from
    ``network_rows``) and the image. Returns {row: float32 (C,H,W) marginals}."""
    return {v: dense_crf(rows[CRF_INPUT[v]], image, config.crf)
            for v in wanted if v in CRF_INPUT}


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
    Returns per image {variant name: float32 (C,H,W) probabilities (numpy)}. Each image
    is computed on its own (``network_rows`` then ``crf_rows``): its rows are the same
    bits whatever other images are given with it.
    """
    config = config or InferenceConfig()
    wanted = wanted_variants(deconvnet, fcn, use_crf, variants)
    if boxes is not None and len(boxes) != len(images):
        raise ValueError(f"images and boxes must have the same length, got {len(images)} "
                         f"images and {len(boxes)} box tensors")
    out: List[Dict[str, np.ndarray]] = []
    for i, image in enumerate(images):
        rows = network_rows(image, deconvnet, fcn, config, wanted,
                            None if boxes is None else boxes[i])
        rows.update(crf_rows(rows, image, config, wanted))
        out.append({v: rows[v] for v in wanted})
    return out
