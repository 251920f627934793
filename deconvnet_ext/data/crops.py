"""Instance-crop training sets for DeconvNet's two training stages.

Stage 1 (easy): one crop per ground-truth instance -- its box enlarged 1.2x about the
centre, warped to round(S * 250/224) px square, a random S x S window of that, randomly
mirrored. Only that instance is labelled (its class); every other pixel is background,
except the 255 band around that instance (and outside the image), which stays ignore.

Stage 2 (hard): crops from object proposals that overlap a ground-truth instance
(IoU >= iou_threshold), with every class labelled. Proposals come from selective search
(default, computed once per training image with a progress bar and cached to
`cache_dir` when given) or, as a cheap option, from jittered ground-truth boxes
(proposals="jitter"). Crops whose best-matching instance is of a rare class are
repeated (oversampled) so every class is seen about as often.

Randomness (crop offset, mirror), two modes:
  - seed=None (default): drawn from torch's global generator, so a trainer that seeds
    torch per sample position (as deconvnet_ext.train does) gets reproducible,
    resumable crops that differ from epoch to epoch;
  - seed=int: item i of epoch e uses np.random.default_rng([seed, stage, e, i]),
    independent of any global state. Call `set_epoch(e)` before each epoch (with
    DataLoader workers, before the iterator is created, without persistent_workers).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ..proposals import box_iou, propose, scaled_min_size
from .crop_geometry import ENLARGE, RESIZE_RATIO
from .palette import IGNORE_INDEX
from .transforms import crop_image, crop_label, image_to_tensor
from .voc import VOCSegmentation, instance_records

_CACHE_VERSION = 1
JITTER_PER_INSTANCE = 10  # jittered boxes per instance for proposals="jitter"


def _enlarge(box, factor: float) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * factor / 2, (y1 - y0) * factor / 2
    return [cx - hw, cy - hh, cx + hw, cy + hh]


class InstanceCrops(torch.utils.data.Dataset):
    """Crops of `dataset` (a VOCSegmentation or anything with the same `[i]` ->
    Sample, `load_annotation(i)` and `len()`) for training stage `stage` (1 or 2).

    `[i]` -> (image float32 (3, S, S) normalised as image_to_tensor, label int64 (S, S)
    class ids with 255 = ignore), S = input_size.

    enlarge: box enlargement before cropping (1.2). mirror: random horizontal flips.
    seed: None (torch's global RNG) or an int (own per-(epoch, index) generator).
    proposals ("selective_search" | "jitter"), max_proposals, min_size (None = the
    original 112 px scaled to the image; see proposals.scaled_min_size, divided by 4
    here so that stage 2 also trains on small and thin objects), iou_threshold,
    oversample, max_repeat, cache_dir, negatives, negative_iou: stage 2 only.
    negatives: background proposals (best IoU with every instance < negative_iou) added
    as this fraction of the positive crops (0: none, the original), labelled like every
    stage-2 crop, so stage 2 also learns to answer "background" for a crop that holds
    no object -- what max aggregation needs, since every proposal votes."""

    def __init__(self, dataset: VOCSegmentation, input_size: int, stage: int = 1, *,
                 enlarge: float = ENLARGE, mirror: bool = True, seed: int | None = None,
                 proposals: str = "selective_search", max_proposals: int = 200,
                 min_size: int | None = None, iou_threshold: float = 0.5,
                 oversample: bool = True, max_repeat: int = 8,
                 cache_dir: str | Path | None = None, progress: bool = True,
                 negatives: float = 0.0, negative_iou: float = 0.3) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        if int(input_size) < 8:
            raise ValueError(f"input_size must be >= 8, got {input_size!r}")
        if proposals not in ("selective_search", "jitter"):
            raise ValueError(f"proposals must be 'selective_search' or 'jitter', got "
                             f"{proposals!r}")
        self.dataset, self.input_size, self.stage = dataset, int(input_size), stage
        self.enlarge, self.mirror = float(enlarge), bool(mirror)
        self.seed = None if seed is None else int(seed)
        # jittered stage-2 boxes are computed once (and cached): always seeded
        self.proposal_seed = 0 if seed is None else int(seed)
        self.epoch = 0
        self.progress = progress
        if not 0.0 <= float(negatives) <= 10.0:
            raise ValueError(f"negatives must be in [0, 10], got {negatives!r}")
        self.negatives, self.negative_iou = float(negatives), float(negative_iou)
        # items: int64 (K, 7) rows of sample index, box x0 y0 x1 y1, class, instance id
        if stage == 1:
            self.items = self._instance_items()
        else:
            self.items = self._proposal_items(proposals, int(max_proposals), min_size,
                                              float(iou_threshold), cache_dir)
        if len(self.items) == 0:
            raise ValueError(f"stage {stage}: the dataset has no instances to crop "
                             f"({len(dataset)} images)")
        # index -> row of items; rare classes repeated (stage 2)
        self.order = np.arange(len(self.items))
        if stage == 2 and oversample:
            self.order = self._oversampled_order(int(max_repeat))

    # ---- item lists ------------------------------------------------------------------
    def _annotations(self, desc: str):
        from ..progress import progress_bar as tqdm  # plain lines off a terminal
        for i in tqdm(range(len(self.dataset)), desc=desc, unit="img",
                      disable=not self.progress, leave=False):
            label, instances = self.dataset.load_annotation(i)
            yield i, label, instances

    def _instance_items(self) -> np.ndarray:
        rows = []
        for i, label, instances in self._annotations("instances"):
            name = self.dataset.names[i] if hasattr(self.dataset, "names") else str(i)
            for inst_id, box, cls in instance_records(label, instances, name):
                rows.append([i, *box, cls, inst_id])
        return np.asarray(rows, np.int64).reshape(-1, 7)

    def _proposal_items(self, method: str, max_proposals: int, min_size: int | None,
                        iou_threshold: float, cache_dir) -> np.ndarray:
        key = {"v": _CACHE_VERSION, "method": method, "max": max_proposals,
               "negatives": self.negatives, "negative_iou": self.negative_iou,
               "min_size": min_size, "iou": iou_threshold, "seed": self.proposal_seed,
               "root": str(getattr(self.dataset, "root", "")),
               "files": self._files_fingerprint()}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"stage2_{method}_{digest}.npy" if cache_dir else None
        if cache is not None and cache.is_file():
            return np.load(cache, allow_pickle=False)
        rows, background = [], []
        from ..progress import progress_bar as tqdm  # plain lines off a terminal
        for i in tqdm(range(len(self.dataset)), desc=f"stage-2 proposals ({method})",
                      unit="img", disable=not self.progress):
            if method == "selective_search":
                sample = self.dataset[i]
                label, instances = sample.label, sample.instances
                name = sample.name
            else:
                label, instances = self.dataset.load_annotation(i)
                name = str(i)
            records = instance_records(label, instances, name)
            if not records:
                continue
            gt = np.asarray([box for _, box, _ in records], np.int64)
            if method == "selective_search":
                size = (max(1, scaled_min_size(label.shape) // 4) if min_size is None
                        else int(min_size))
                boxes = propose(sample.image, max_proposals, size)
            else:
                boxes = self._jittered_boxes(gt, label.shape, i, max_proposals)
            if len(boxes) == 0:
                continue
            iou = box_iou(boxes, gt)
            best = iou.argmax(axis=1)
            keep = iou[np.arange(len(boxes)), best] >= iou_threshold
            for box, j in zip(boxes[keep], best[keep]):
                inst_id, _, cls = records[j]
                rows.append([i, *box.tolist(), cls, inst_id])
            far = iou[np.arange(len(boxes)), best] < self.negative_iou
            background += [[i, *box.tolist(), 0, -1] for box in boxes[far]]
        count = min(len(background), int(round(self.negatives * len(rows))))
        if count:  # a seeded choice, so the cache and every run agree
            pick = np.random.default_rng([self.proposal_seed, 3]).choice(
                len(background), count, replace=False)
            rows += [background[k] for k in np.sort(pick)]
        items = np.asarray(rows, np.int64).reshape(-1, 7)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # unique temp name: several (DDP) processes may build the same cache
            tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, items, allow_pickle=False)
            tmp.replace(cache)  # atomic: a killed run leaves no half-written cache
        return items

    def _files_fingerprint(self) -> str:
        """Hash of the split's ids and their files' sizes and mtimes: a regenerated
        dataset in the same folder does not reuse a stale proposal cache."""
        digest = hashlib.sha1()
        paths = getattr(self.dataset, "_paths", None)
        for name in getattr(self.dataset, "names", []):
            digest.update(name.encode())
            for path in (paths(name) if paths else ()):
                st = path.stat()
                digest.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _jittered_boxes(self, gt: np.ndarray, shape, index: int, count: int) -> np.ndarray:
        """Cheap stand-in for proposals: up to 10 copies of each GT box, shifted by up
        to 20% and rescaled 0.8-1.25x per side, clipped to the image; seeded by (seed,
        image index)."""
        rng = np.random.default_rng([self.proposal_seed, 2, index])
        height, width = shape
        per = max(1, min(JITTER_PER_INSTANCE, count // max(1, len(gt))))
        out = []
        for x0, y0, x1, y1 in gt.astype(np.float64):
            w, h = x1 - x0, y1 - y0
            for _ in range(per):
                cx = (x0 + x1) / 2 + rng.uniform(-0.2, 0.2) * w
                cy = (y0 + y1) / 2 + rng.uniform(-0.2, 0.2) * h
                nw, nh = w * rng.uniform(0.8, 1.25), h * rng.uniform(0.8, 1.25)
                b = np.round([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2])
                b[0::2] = np.clip(b[0::2], 0, width)
                b[1::2] = np.clip(b[1::2], 0, height)
                if b[2] > b[0] and b[3] > b[1]:
                    out.append(b)
        return np.asarray(out, np.int64).reshape(-1, 4)

    def _oversampled_order(self, max_repeat: int) -> np.ndarray:
        classes = self.items[:, 5]
        positive = self.items[:, 6] >= 0  # background proposals (instance -1) stay once
        counts = np.bincount(classes[positive], minlength=int(classes.max()) + 1)
        most = counts.max()
        # repeat rare classes towards the most frequent one's count, at most max_repeat x
        repeat = np.clip(np.round(most / np.maximum(counts, 1)), 1, max(1, max_repeat))
        times = np.where(positive, repeat[classes], 1).astype(np.int64)
        return np.repeat(np.arange(len(self.items)), times)

    # ---- Dataset protocol ------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the random crops/mirrors of epoch `epoch`."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def class_counts(self, num_classes: int = 21) -> np.ndarray:
        """int64 (num_classes,): crops per class in one epoch (after oversampling)."""
        return np.bincount(self.items[self.order, 5], minlength=num_classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        sample_index, x0, y0, x1, y1, cls, inst_id = (int(v) for v in
                                                      self.items[self.order[index]])
        if self.seed is None:
            u_x, u_y, u_flip = torch.rand(3, dtype=torch.float64).tolist()
        else:
            u_x, u_y, u_flip = np.random.default_rng(
                [self.seed, self.stage, self.epoch, index]).random(3).tolist()
        sample = self.dataset[sample_index]
        if self.stage == 1:
            label = self._single_instance_label(sample.label, sample.instances, inst_id, cls)
        else:
            label = sample.label
        s = self.input_size
        big = int(round(s * RESIZE_RATIO))
        # box -> big x big, then a random s x s window: compose into one box
        bx0, by0, bx1, by1 = _enlarge((x0, y0, x1, y1), self.enlarge)
        per_px_x, per_px_y = (bx1 - bx0) / big, (by1 - by0) / big
        ox = min(int(u_x * (big - s + 1)), big - s)
        oy = min(int(u_y * (big - s + 1)), big - s)
        box = [bx0 + ox * per_px_x, by0 + oy * per_px_y,
               bx0 + (ox + s) * per_px_x, by0 + (oy + s) * per_px_y]
        flip = self.mirror and u_flip < 0.5
        image = crop_image(sample.image, box, s, flip)
        label = crop_label(label, box, s, flip)
        return image_to_tensor(image), torch.from_numpy(label).long()

    @staticmethod
    def _single_instance_label(label: np.ndarray, instances: np.ndarray, inst_id: int,
                               cls: int) -> np.ndarray:
        """Stage-1 target: `cls` on the instance, 255 on the ignore band next to it,
        0 elsewhere (other objects are background here, as in the original)."""
        mask = (instances == inst_id).astype(np.uint8)
        near = cv2.dilate(mask, np.ones((11, 11), np.uint8)) > 0
        out = np.zeros_like(label)
        out[near & (label == IGNORE_INDEX)] = IGNORE_INDEX
        out[mask > 0] = cls
        return out
