"""Where the instance-wise pipeline loses its points (the demo's second table).

The paper's table says how good each method is; these say why DeconvNet scores what it
does, by taking one stage of the pipeline out at a time:

- **oracle boxes**: DeconvNet with the ground-truth instance boxes (plus the usual
  context) instead of proposals -- the network's upper bound once proposals are perfect.
  A low oracle means the network is the bottleneck; a big gap to the DeconvNet row means
  the proposals (missed objects, or background proposals turned false positives) are.
- **proposal recall** at IoU 0.5 and 0.7, by object size (box area in pixels): the
  fraction of ground-truth instances some proposal finds. What is not found cannot be
  segmented.
- **crop mean IU**: the network alone on stage-1-style crops of the val instances
  (centred, 1.2x box, no mirror) -- no aggregation, no proposals.
- **proposal ceilings**: DeconvNet on the proposals a perfect selector would keep, read
  with the ground truth: every proposal at IoU >= 0.5 to an object (a perfect proposal
  scorer, what ``InferenceConfig.min_objectness`` approximates), and each object's one
  best proposal (a perfect pick of each object's best-framed crop). Between the
  DeconvNet row and the oracle they split the loss into what choosing crops could win
  back and what only better proposals could (missed objects, loose framing).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .infer import InferenceConfig, deconvnet_scores, proposal_boxes, segment_crops
from .metrics import ConfusionMatrix
from .proposals import add_context, box_iou

# (name, lowest box area, highest box area) in pixels; COCO's small/medium/large split
# at 32^2 and 96^2, with the smallest objects (< 16^2) apart.
SIZE_BUCKETS = (("< 16²", 0, 16 ** 2), ("16²-32²", 16 ** 2, 32 ** 2),
                ("32²-96²", 32 ** 2, 96 ** 2), ("≥ 96²", 96 ** 2, float("inf")))
RECALL_IOUS = (0.5, 0.7)
CEILING_IOU = 0.5  # a proposal at this IoU to an object counts as finding it (as recall @0.5)
# (key, what it keeps): the proposal ceilings, in the order the table prints them
CEILINGS = (("perfect_scorer", "every proposal at IoU ≥ 0.5 to an object"),
            ("best_proposal", "each object's best proposal only"))


def _gt_records(sample):
    from .data.voc import instance_records
    return instance_records(sample.label, sample.instances, sample.name)


def raw_proposals(dataset, config: InferenceConfig, limit: Optional[int] = None
                  ) -> List[np.ndarray]:
    """``config``'s proposals of ``dataset``'s first ``limit`` images (all: None) before
    context padding, int64 (K,4) each: what recall and the ceilings score. Computed once
    by ``run_diagnostics`` for both (selective search is most of their time)."""
    raw = dataclasses.replace(config, context=1.0)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    return [proposal_boxes(dataset[i].image, raw).numpy() for i in range(total)]


def proposal_recall(dataset, config: InferenceConfig, limit: Optional[int] = None,
                    proposals: Optional[Sequence[np.ndarray]] = None) -> dict:
    """Recall of ``config``'s proposals (before context padding) over ``dataset``'s
    instances: {"overall": {"0.5": r, "0.7": r}, "by_size": {bucket: {"instances": n,
    "0.5": r, "0.7": r}}, "proposals_per_image": mean}. ``proposals``: those of
    ``raw_proposals(dataset, config, limit)``, computed here when None."""
    if proposals is None:
        proposals = raw_proposals(dataset, config, limit)
    best_iou: List[float] = []
    areas: List[float] = []
    counts = []
    for i, boxes in enumerate(proposals):
        records = _gt_records(dataset[i])
        counts.append(len(boxes))
        if not records:
            continue
        gt = np.asarray([box for _, box, _ in records], np.float64)
        iou = box_iou(gt, boxes.astype(np.float64))
        best_iou += iou.max(axis=1).tolist()
        areas += ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])).tolist()
    best, area = np.asarray(best_iou), np.asarray(areas)

    def recall(mask):
        return {f"{t}": (float((best[mask] >= t).mean()) if mask.any() else None)
                for t in RECALL_IOUS}
    out = {"instances": int(best.size), "overall": recall(np.ones(best.size, bool)),
           "by_size": {}, "proposals_per_image": float(np.mean(counts)) if counts else 0.0}
    for name, lo, hi in SIZE_BUCKETS:
        mask = (area >= lo) & (area < hi)
        out["by_size"][name] = {"instances": int(mask.sum()), **recall(mask)}
    return out


def oracle_confusion(dataset, deconvnet: torch.nn.Module, config: InferenceConfig,
                     limit: Optional[int] = None, images_per_step: int = 4) -> ConfusionMatrix:
    """DeconvNet with ground-truth boxes (context as in ``config``) instead of proposals;
    an image without instances gets the whole image as its one box. Every box is
    aggregated: the proposal scorer (``config.min_objectness``) is for proposals, and
    these boxes are perfect."""
    config = dataclasses.replace(config, min_objectness=0.0)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    cm = ConfusionMatrix(deconvnet.num_classes)
    for first in range(0, total, images_per_step):
        samples = [dataset[i] for i in range(first, min(first + images_per_step, total))]
        boxes = []
        for sample in samples:
            height, width = sample.label.shape
            gt = np.asarray([box for _, box, _ in _gt_records(sample)], np.int64).reshape(-1, 4)
            if len(gt) == 0:
                gt = np.asarray([[0, 0, width, height]], np.int64)
            elif config.context != 1.0:
                gt = np.asarray(add_context(gt, (height, width), config.context), np.int64)
            boxes.append(torch.as_tensor(gt, dtype=torch.int64).reshape(-1, 4))
        scores = deconvnet_scores(deconvnet, [s.image for s in samples], boxes, config)
        for sample, score in zip(samples, scores):
            cm.update(sample.label, score.argmax(dim=0).cpu().numpy().astype(np.uint8))
    return cm


def ceiling_picks(proposals: np.ndarray, objects: np.ndarray) -> Dict[str, np.ndarray]:
    """Which of an image's proposals (K,4) a perfect selector keeps, given its objects'
    boxes (N,4), both [x0,y0,x1,y1) without context: {"perfect_scorer": every proposal
    whose IoU with some object is >= CEILING_IOU, "best_proposal": each object's
    highest-IoU proposal when that IoU is >= CEILING_IOU (the first on ties; a proposal
    best for two objects once)}, sorted int64 indices into ``proposals``."""
    proposals = np.asarray(proposals).reshape(-1, 4)
    objects = np.asarray(objects).reshape(-1, 4)
    if len(objects) == 0 or len(proposals) == 0:
        empty = np.zeros(0, np.int64)
        return {"perfect_scorer": empty, "best_proposal": empty}
    iou = box_iou(objects, proposals)  # (N, K)
    found = iou.max(axis=1) >= CEILING_IOU
    return {"perfect_scorer": np.flatnonzero(iou.max(axis=0) >= CEILING_IOU).astype(np.int64),
            "best_proposal": np.unique(iou.argmax(axis=1)[found]).astype(np.int64)}


def ceiling_confusions(dataset, deconvnet: torch.nn.Module, config: InferenceConfig,
                       limit: Optional[int] = None,
                       proposals: Optional[Sequence[np.ndarray]] = None
                       ) -> Dict[str, ConfusionMatrix]:
    """DeconvNet fed only the proposals ``ceiling_picks`` keeps ({key of CEILINGS:
    confusion}): ``config``'s proposals, context and aggregation, every kept crop
    aggregated (the selection replaces the proposal scorer). An image where nothing is
    kept is all background, as a pipeline that keeps no crop would paint it. Only the
    kept crops go through the network: a few per image (each set in its own batches, so
    each row is the pipeline fed those boxes, bit for bit). ``proposals``: those of
    ``raw_proposals(dataset, config, limit)``, computed here when None."""
    if proposals is None:
        proposals = raw_proposals(dataset, config, limit)
    every = dataclasses.replace(config, min_objectness=0.0)
    cms = {key: ConfusionMatrix(deconvnet.num_classes) for key, _ in CEILINGS}
    for i, image_proposals in enumerate(proposals):
        sample = dataset[i]
        height, width = sample.label.shape
        objects = np.asarray([box for _, box, _ in _gt_records(sample)], np.int64)
        for key, picked in ceiling_picks(image_proposals, objects).items():
            if len(picked) == 0:
                cms[key].update(sample.label, np.zeros((height, width), np.uint8))
                continue
            boxes = image_proposals[picked]
            if config.context != 1.0:
                boxes = np.asarray(add_context(boxes, (height, width), config.context))
            boxes = torch.as_tensor(boxes, dtype=torch.int64).reshape(-1, 4)
            score = deconvnet_scores(deconvnet, [sample.image], [boxes], every)[0]
            cms[key].update(sample.label, score.argmax(dim=0).cpu().numpy().astype(np.uint8))
    return cms


def crop_confusion(dataset, deconvnet: torch.nn.Module, batch_size: int = 64) -> ConfusionMatrix:
    """The network alone on stage-1-style crops of ``dataset``'s instances (no mirror,
    fixed centre window): its segmentation quality without proposals or aggregation."""
    from .data.crops import InstanceCrops
    crops = InstanceCrops(dataset, deconvnet.input_size, stage=1, mirror=False, seed=0,
                          progress=False)
    cm = ConfusionMatrix(deconvnet.num_classes)
    for start in range(0, len(crops), batch_size):
        items = [crops[i] for i in range(start, min(start + batch_size, len(crops)))]
        images = torch.stack([image for image, _ in items])
        labels = torch.stack([label for _, label in items])
        scores = segment_crops(deconvnet, images, batch_size)
        cm.update(labels.numpy(), scores.argmax(dim=1).numpy())
    return cm


def run_diagnostics(dataset, deconvnet: torch.nn.Module, config: InferenceConfig,
                    limit: Optional[int] = None) -> dict:
    """Every measurement, JSON-ready (percent for mean IU, fractions for recall)."""
    oracle = oracle_confusion(dataset, deconvnet, config, limit)
    proposals = raw_proposals(dataset, config, limit)
    ceilings = ceiling_confusions(dataset, deconvnet, config, limit, proposals)
    crop = crop_confusion(dataset if limit is None else _Head(dataset, limit), deconvnet)
    return {"oracle_boxes_mean_iu": 100 * oracle.mean_iou(),
            "oracle_boxes_pixel_acc": 100 * oracle.pixel_accuracy(),
            **{f"{key}_mean_iu": 100 * cm.mean_iou() for key, cm in ceilings.items()},
            "crop_mean_iu": 100 * crop.mean_iou(),
            "recall": proposal_recall(dataset, config, limit, proposals)}


class _Head:
    """The first ``n`` samples of a dataset (with its load_annotation / names)."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))
        self.names = list(getattr(dataset, "names", range(len(dataset))))[:self.n]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def load_annotation(self, i):
        return self.dataset.load_annotation(i)


def diagnostics_markdown(diag: dict, training: Optional[Dict[str, dict]] = None,
                         deconvnet_mean_iu: Optional[float] = None) -> str:
    """The demo's second table: where the points go (and training, per stage)."""
    lines = ["| diagnostic | value |", "|---|---|"]
    if deconvnet_mean_iu is not None:
        lines.append(f"| DeconvNet (proposals), mean IU | {deconvnet_mean_iu:.1f} |")
    for key, kept in CEILINGS:
        if f"{key}_mean_iu" in diag:  # results.json files older than these rows lack them
            lines.append(f"| DeconvNet, {kept} (read off the ground truth), mean IU | "
                         f"{diag[f'{key}_mean_iu']:.1f} |")
    lines.append(f"| DeconvNet with ground-truth boxes (oracle), mean IU | "
                 f"{diag['oracle_boxes_mean_iu']:.1f} |")
    lines.append(f"| DeconvNet on stage-1 val crops, crop mean IU | {diag['crop_mean_iu']:.1f} |")
    rec = diag["recall"]
    lines.append(f"| proposal recall @0.5 / @0.7 ({rec['instances']} instances, "
                 f"{rec['proposals_per_image']:.0f} proposals/image) | "
                 f"{_pct(rec['overall']['0.5'])} / {_pct(rec['overall']['0.7'])} |")
    for name, row in rec["by_size"].items():
        lines.append(f"| &nbsp; recall, box area {name} ({row['instances']} instances) | "
                     f"{_pct(row['0.5'])} / {_pct(row['0.7'])} |")
    if training:
        lines += ["", "| training stage | steps | seconds | loss first → last |",
                  "|---|---:|---:|---|"]
        for stage, row in training.items():
            if not isinstance(row, dict) or "steps" not in row:
                continue
            first, last = row.get("loss_first"), row.get("loss_last")
            loss = (f"{first:.3f} → {last:.3f}" if first is not None and last is not None
                    else "-")
            lines.append(f"| {stage} | {row['steps']} | {row['seconds']:.0f} | {loss} |")
    return "\n".join(lines)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


__all__: Sequence[str] = ("raw_proposals", "proposal_recall", "oracle_confusion", "ceiling_picks",
                          "ceiling_confusions", "crop_confusion", "run_diagnostics",
                          "diagnostics_markdown", "SIZE_BUCKETS", "CEILINGS")
