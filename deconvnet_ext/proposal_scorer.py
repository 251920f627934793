"""Proposal scoring: which of an image's proposal crops to trust, learnt from the
network's own crop maps.

Why: under DeconvNet's aggregation every proposal votes, and most proposals are not
objects (on the synthetic tuning splits about 12% of the top-200 proposals overlap an
object at IoU >= 0.5). Aggregating only the proposals with IoU >= 0.5 lifted DeconvNet
from 50.5 to 59.6 mean IU (tuning split, synthetic seed 2000003): precision, not the
network or recall, was where the points went. This scorer predicts "IoU >= 0.5 with an
object" for each crop, and ``infer.aggregate_crop_maps`` aggregates only the crops it
trusts (``InferenceConfig.min_objectness``).

Features of a crop, all read off its (C,S,S) score map and its box (no extra forward):
the predicted object fraction, the mean top probability on object pixels, the object
fraction of the crop's border, the mean background probability, the mean entropy, the
share of the object pixels taken by the most frequent class, the predicted object's
extent in the crop (x0, x1, y0, y1 as fractions of the crop), the box's log area as a
fraction of the image and its log aspect ratio, and the histogram of predicted object
classes. A good proposal's crop shows one object of one class filling the crop up to
the context margin; a background crop or one much larger than its object does not.

The model: standardised features -> Linear(F, 64) -> ReLU -> Linear(64, 1) -> sigmoid,
five such MLPs averaged, each fitted full-batch (AdamW, 300 steps, weight decay 0.1,
seeded) on the crops of training images (``fit_proposal_scorer``); it lives in the
DeconvNet checkpoint (``DeconvNet.proposal_scorer``). Measured through the demo's
pipeline on two tuning splits (synthetic seeds 2000003 / 2000006, never a demo seed's
images), the same checkpoints, a scorer of 100 training images, crops kept at p >= 0.5,
top-5 aggregation: DeconvNet 50.5 -> 55.6 / 42.4 -> 48.6, DeconvNet+CRF 54.3 -> 57.0 /
47.9 -> 50.8, EDeconvNet 60.4 -> 65.3 / 51.3 -> 57.2, EDeconvNet+CRF 60.9 -> 66.5 /
51.8 -> 56.0 mean IU (FCN-8s 55.3 / 47.1).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProposalScorer", "crop_features", "fit_proposal_scorer", "feature_count",
           "save_with_scorer", "POSITIVE_IOU"]

POSITIVE_IOU = 0.5      # a crop is a positive when its box overlaps an object this much
HIDDEN = 64             # the scorer's hidden width
MEMBERS = 5             # MLPs averaged
_STATS = 10             # crop_features' map statistics before the geometry and histogram


def feature_count(num_classes: int) -> int:
    """Length of ``crop_features``' rows for ``num_classes`` classes (background first)."""
    return _STATS + 2 + (num_classes - 1)


def _extent(mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(K,S) bool rows/columns holding object -> (first, last + 1) as fractions of S;
    0.5 and 0.5 for a crop with no object pixel."""
    size = mask.shape[1]
    ar = torch.arange(size, device=mask.device)
    lo = torch.where(mask, ar, size).min(1).values.float() / size
    hi = (torch.where(mask, ar, -1).max(1).values.float() + 1) / size
    has = mask.any(1)
    return torch.where(has, lo, 0.5), torch.where(has, hi, 0.5)


def crop_features(maps: torch.Tensor, boxes: torch.Tensor,
                  image_size: Sequence[int]) -> torch.Tensor:
    """maps float (K,C,S,S) one image's crop score maps (pre-softmax), boxes (K,4) their
    boxes [x0,y0,x1,y1) as cropped (with context), image_size (H, W).
    Returns float32 (K, feature_count(C)) on the maps' device (see the module doc)."""
    if maps.dim() != 4 or maps.shape[1] < 2:
        raise ValueError(f"maps must be (K,C,S,S) with C >= 2, got {tuple(maps.shape)}")
    boxes = torch.as_tensor(boxes).reshape(-1, 4).to(maps.device)
    if boxes.shape[0] != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {boxes.shape[0]} boxes")
    num_classes = maps.shape[1]
    p = maps.float().softmax(1)
    top, label = p.max(1)
    obj = label > 0
    count = obj.sum((1, 2))
    fraction = obj.float().mean((1, 2))
    confidence = torch.where(obj, top, 0).sum((1, 2)) / count.clamp_min(1)
    border = torch.cat([obj[:, 0], obj[:, -1], obj[:, :, 0], obj[:, :, -1]], 1)
    entropy = -(p * p.clamp_min(1e-8).log()).sum(1).mean((1, 2))
    hist = F.one_hot(label.flatten(1), num_classes).sum(1)[:, 1:].float()  # (K, C-1)
    dominant = hist.max(1).values / hist.sum(1).clamp_min(1)
    y0, y1 = _extent(obj.any(2))
    x0, x1 = _extent(obj.any(1))
    height, width = float(image_size[0]), float(image_size[1])
    b = boxes.to(torch.float64)
    bw, bh = (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height
    geometry = torch.stack([torch.log(bw * bh + 1e-4), torch.log(bw / bh.clamp_min(1e-4))],
                           1).float()
    stats = torch.stack([fraction, confidence, border.float().mean(1), p[:, 0].mean((1, 2)),
                         entropy, dominant, x0, x1, y0, y1], 1)
    return torch.cat([stats, geometry, hist / hist.sum(1, keepdim=True).clamp_min(1)], 1)


class ProposalScorer(nn.Module):
    """p(crop's box overlaps an object at IoU >= 0.5) from ``crop_features``: the mean
    probability of ``members`` small MLPs fitted from different seeds (one fit's
    threshold decisions moved DeconvNet by up to 5 mean-IU points from seed to seed on
    a tuning split; the mean of five is steadier)."""

    def __init__(self, num_classes: int, hidden: int = HIDDEN, members: int = MEMBERS) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members!r}")
        features = feature_count(num_classes)
        self.num_classes, self.hidden = num_classes, hidden
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            for _ in range(members))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(K, F) features -> (members, K) logits, one row per member."""
        z = (features - self.mean) / self.std
        return torch.stack([net(z).squeeze(1) for net in self.nets])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(K, F) features -> (K,) probabilities (the members' mean)."""
        return torch.sigmoid(self.logits(features)).mean(0)

    @torch.no_grad()
    def score(self, maps: torch.Tensor, boxes: torch.Tensor,
              image_size: Sequence[int]) -> torch.Tensor:
        """(K,) probabilities for one image's crop maps and boxes."""
        if maps.shape[1] != self.num_classes:
            raise ValueError(f"the scorer was fitted for {self.num_classes} classes, the "
                             f"maps have {maps.shape[1]}")
        features = crop_features(maps, boxes, image_size).to(self.mean.device)
        return self(features).to(maps.device)


def fit_scorer_to(scorer: ProposalScorer, features: torch.Tensor, targets: torch.Tensor,
                  weights: Optional[torch.Tensor] = None, steps: int = 300, lr: float = 1e-2,
                  weight_decay: float = 0.1, seed: int = 0) -> float:
    """Fit ``scorer`` in place (full batch, AdamW, each member on its own) to (N, F)
    features and (N,) 0/1 targets, each crop's loss times ``weights`` (N,) when given;
    re-initialises member m's layers from seed ``seed + m``. Returns the members' mean
    final loss."""
    if features.shape[0] == 0:
        raise ValueError("no crops to fit the proposal scorer on")
    with torch.no_grad():
        scorer.mean.copy_(features.mean(0))
        scorer.std.copy_(features.std(0).clamp_min(1e-6) if features.shape[0] > 1
                         else torch.ones_like(scorer.std))
    z = (features - scorer.mean) / scorer.std
    targets = targets.float()
    losses = []
    for m, net in enumerate(scorer.nets):
        generator = torch.Generator().manual_seed(seed + m)
        for layer in net:
            if isinstance(layer, nn.Linear):
                bound = 1 / layer.in_features ** 0.5
                with torch.no_grad():
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.uniform_(-bound, bound, generator=generator)
        opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=weight_decay)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(net(z).squeeze(1), targets,
                                                      weight=weights)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses)


def training_crops(model: nn.Module, dataset, config, num_images: int,
                   negative_fraction: float = 1.0, seed: int = 0, progress: bool = True
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (N,F), IoU (N,), weights (N,)) of the proposal crops of ``dataset``'s
    first ``num_images`` images, proposed and cropped exactly as inference does
    (``config``). The IoU of a crop is its context box's best IoU with the ground-truth
    instance boxes enlarged by the same context (the proposal's own IoU, up to
    rounding). Every positive crop goes through the network; with
    ``negative_fraction`` < 1 only a seeded share of the others does, each weighted
    1 / negative_fraction, so the fit sees the true class balance at a fraction of the
    forward passes (~88% of the proposals are negatives) -- but then the fit also
    depends on the share drawn (~2 points of DeconvNet between draws on the tuning
    splits), which is why the default, and the demo, take them all."""
    from .data.voc import instance_boxes
    from .infer import deconvnet_crop_maps, proposal_boxes
    from .progress import progress_bar
    from .proposals import add_context, box_iou

    if not 0.0 < negative_fraction <= 1.0:
        raise ValueError(f"negative_fraction must be in (0, 1], got {negative_fraction!r}")
    features, ious, weights = [], [], []
    count = min(int(num_images), len(dataset))
    for i in progress_bar(range(count), desc="proposal scorer crops", unit="img",
                          disable=not progress):
        sample = dataset[i]
        size = sample.label.shape[:2]
        boxes = proposal_boxes(sample.image, config)
        gt = np.asarray([box for box, _ in instance_boxes(sample)], np.int64).reshape(-1, 4)
        iou = np.zeros(len(boxes))
        if len(gt):
            gt = add_context(gt, size, config.context)
            iou = box_iou(boxes.numpy(), gt).max(1)
        draw = np.random.default_rng([seed, i]).random(len(boxes))
        keep = (iou >= POSITIVE_IOU) | (draw < negative_fraction)
        if not keep.any():
            continue
        boxes = boxes[torch.as_tensor(keep)]
        maps = deconvnet_crop_maps(model, sample.image, boxes, config)
        features.append(crop_features(maps, boxes, size).cpu())
        ious.append(torch.as_tensor(iou[keep], dtype=torch.float32))
        weights.append(torch.where(ious[-1] >= POSITIVE_IOU, 1.0, 1.0 / negative_fraction))
    if not features:
        raise ValueError(f"the first {count} images gave no proposal crops")
    return torch.cat(features), torch.cat(ious), torch.cat(weights)


def fit_proposal_scorer(model: nn.Module, dataset, config, num_images: int = 100,
                        negative_fraction: float = 1.0, seed: int = 0,
                        progress: bool = True) -> Tuple[ProposalScorer, Dict[str, Any]]:
    """A ProposalScorer for ``model`` (a trained DeconvNet) fitted on the proposal crops
    of ``dataset``'s first ``num_images`` training images (an InferenceConfig ``config``
    says how they are proposed and cropped; ``training_crops``). Returns (scorer in eval
    mode on the model's device, info: images, crops, positives, seconds, loss)."""
    from .infer import _model_device

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features, ious, weights = training_crops(model, dataset, config, num_images,
                                                     negative_fraction, seed, progress)
    finally:
        model.train(was_training)
    targets = ious >= POSITIVE_IOU
    scorer = ProposalScorer(int(model.num_classes))
    device = _model_device(model)
    loss = fit_scorer_to(scorer, features, targets, weights, seed=seed)
    info = {"images": min(int(num_images), len(dataset)), "crops": int(len(targets)),
            "positives": int(targets.sum()), "loss": round(loss, 4),
            "seconds": round(time.perf_counter() - start, 1)}
    return scorer.to(device).eval(), info


def save_with_scorer(model: nn.Module, checkpoint, out=None):
    """Write ``model`` (a DeconvNet holding its fitted ``proposal_scorer``) to ``out``
    (default: over ``checkpoint``, atomically), keeping the meta ``checkpoint`` had
    (the trainer's steps) and adding the model's own (the scorer's shape). Returns the
    path written."""
    from .checkpoint import load_checkpoint, save_checkpoint

    meta = {**load_checkpoint(checkpoint)["meta"], **model.meta()}
    return save_checkpoint(out if out is not None else checkpoint, model, meta)


# ----------------------------------------------------------------------------- CLI

def add_cli_arguments(parser) -> None:
    """Arguments of ``deconvnet fit-scorer``."""
    from .infer import add_inference_arguments
    parser.add_argument("--checkpoint", required=True,
                        help="DeconvNet checkpoint (`deconvnet train`); the scorer is saved "
                             "into it, replacing any it had, unless --out is given")
    parser.add_argument("--data", required=True, help="VOC2012-layout directory")
    parser.add_argument("--split", default="train",
                        help="images whose proposal crops it learns from (default train; "
                             "never the split you evaluate on)")
    parser.add_argument("--images", type=int, default=50,
                        help="the first N images of --split (default %(default)s, the demo's)")
    parser.add_argument("--negative-fraction", type=float, default=1.0,
                        help="share of the crops under IoU 0.5 that are used, each weighted "
                             "by its inverse (default %(default)s, all: the demo's; 1/3 fits "
                             "~2x faster but moves the result with the share drawn)")
    parser.add_argument("--seed", type=int, default=0, help="seed of that share and of the fit")
    parser.add_argument("--out", default=None, help="write the checkpoint here instead")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.epilog = ("Fit with the inference options you will evaluate with (--max-proposals, "
                     "--min-size, --context, ...): the scorer learns from crops proposed and "
                     "cropped exactly so. The demo's are --max-proposals 200 --min-size 0 "
                     "--aggregation topk.")
    add_inference_arguments(parser)


def run_cli(args) -> int:
    """``deconvnet fit-scorer``: fit a DeconvNet checkpoint's proposal scorer on a
    split's proposal crops and save it in the checkpoint (or --out)."""
    from .data.voc import VOCSegmentation
    from .errors import UserError
    from .infer import default_device, inference_config_from_args, load_models

    if args.images < 1:
        raise UserError(f"--images must be >= 1, got {args.images}")
    if not 0.0 < args.negative_fraction <= 1.0:
        raise UserError(f"--negative-fraction must be in (0, 1], got {args.negative_fraction}")
    config = inference_config_from_args(args)
    dataset = VOCSegmentation(args.data, args.split)
    if len(dataset) == 0:
        raise UserError(f"{args.data} ({args.split}) has no images")
    device = torch.device(args.device) if args.device else default_device()
    model, _ = load_models(args.checkpoint, None, device)
    try:
        scorer, info = fit_proposal_scorer(model, dataset, config, num_images=args.images,
                                           negative_fraction=args.negative_fraction,
                                           seed=args.seed, progress=not args.quiet)
    except ValueError as exc:  # e.g. the images gave no proposal crops
        raise UserError(str(exc)) from None
    model.proposal_scorer = scorer
    path = save_with_scorer(model.to(memory_format=torch.contiguous_format), args.checkpoint,
                            args.out)
    print(f"proposal scorer: fitted on {info['crops']} crops ({info['positives']} with IoU "
          f">= {POSITIVE_IOU}) of {info['images']} images of {args.data} ({args.split}) in "
          f"{info['seconds']:.0f} s, loss {info['loss']}; wrote {path}")
    return 0
