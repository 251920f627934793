"""Evaluation over a VOC-format split: the paper's table (FCN-8s, DeconvNet,
DeconvNet+CRF, EDeconvNet, EDeconvNet+CRF; mean IU and per-class IoU), and
``deconvnet eval``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .infer import VARIANTS, InferenceConfig, predict_variants
from .metrics import ConfusionMatrix

# (image, label, {variant: prediction}) for the overlay grid
Example = Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]


@dataclass
class EvalResult:
    """Confusion matrices per variant over one split, plus a few examples to draw."""
    class_names: List[str]
    confusion: Dict[str, ConfusionMatrix]
    num_images: int = 0
    seconds: float = 0.0
    examples: List[Example] = field(default_factory=list)
    names: List[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"num_images": self.num_images, "seconds": round(self.seconds, 2),
                "class_names": self.class_names,
                "variants": {v: cm.summary(self.class_names) for v, cm in self.confusion.items()}}


def class_names_for(dataset, num_classes: int) -> List[str]:
    """The dataset's class names when it has them, VOC's when there are 21 classes,
    else the class ids."""
    names = getattr(dataset, "class_names", None)
    if names is not None and len(names) == num_classes:
        return list(names)
    from .data.palette import VOC_CLASSES
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [str(i) for i in range(num_classes)]


def evaluate_dataset(dataset, deconvnet: Optional[torch.nn.Module],
                     fcn: Optional[torch.nn.Module] = None,
                     config: Optional[InferenceConfig] = None, use_crf: bool = True,
                     limit: Optional[int] = None, images_per_step: int = 4,
                     keep_examples: int = 0, progress: bool = True,
                     on_prediction: Optional[Callable[[object, Dict[str, np.ndarray]], None]]
                     = None) -> EvalResult:
    """Run ``predict_variants`` over ``dataset`` (a VOCSegmentation: samples with .image
    uint8 (H,W,3) and .label uint8 (H,W), 255 ignored) and accumulate a confusion matrix
    per variant. ``images_per_step`` images share one batched forward; ``limit`` caps the
    number of images; the first ``keep_examples`` (image, label, predictions) are kept;
    ``on_prediction(sample, {variant: uint8 (H,W) class ids})`` is called per image."""
    from tqdm import tqdm

    if deconvnet is None and fcn is None:
        raise ValueError("evaluate_dataset needs deconvnet or fcn (both are None)")
    config = config or InferenceConfig()
    num_classes = (deconvnet or fcn).num_classes
    total = len(dataset) if limit is None else min(limit, len(dataset))
    result = EvalResult(class_names=class_names_for(dataset, num_classes), confusion={})
    start = time.perf_counter()
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for first in range(0, total, images_per_step):
        samples = [dataset[i] for i in range(first, min(first + images_per_step, total))]
        outputs = predict_variants([s.image for s in samples], deconvnet, fcn, config, use_crf)
        for sample, probs in zip(samples, outputs):
            predictions = {}
            for variant in VARIANTS:
                if variant not in probs:
                    continue
                prediction = probs[variant].argmax(axis=0).astype(np.uint8)
                result.confusion.setdefault(variant, ConfusionMatrix(num_classes)).update(
                    sample.label, prediction)
                predictions[variant] = prediction
            if on_prediction is not None:
                on_prediction(sample, predictions)
            if len(result.examples) < keep_examples:
                result.examples.append((sample.image, sample.label, predictions))
            result.names.append(sample.name)
        bar.update(len(samples))
    bar.close()
    result.num_images = total
    result.seconds = time.perf_counter() - start
    return result


def markdown_table(result: EvalResult, paper: Optional[Dict[str, float]] = None) -> str:
    """Markdown: a summary (one row per variant: mean IU, pixel accuracy, and the
    ``paper``'s mean IU when given), then per-class IoU (one row per class, one column
    per variant). Percent, one decimal; "-" where a class is absent from both ground
    truth and prediction (excluded from the mean)."""
    variants = list(result.confusion)
    head = ["method", "mean IU"] + (["paper (VOC 2012 test)"] if paper else []) + ["pixel acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in variants:
        cm = result.confusion[variant]
        cells = [variant, f"{100 * cm.mean_iou():.1f}"]
        if paper:
            cells.append(f"{paper[variant]:.1f}" if variant in paper else "-")
        cells.append(f"{100 * cm.pixel_accuracy():.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| class | " + " | ".join(variants) + " |",
              "|" + "---|" * (len(variants) + 1)]
    ious = [result.confusion[v].per_class_iou() for v in variants]
    for c, name in enumerate(result.class_names):
        cells = ["-" if np.isnan(iou[c]) else f"{100 * iou[c]:.1f}" for iou in ious]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out_dir: Path, result: EvalResult, extra: Optional[dict] = None,
                  paper: Optional[Dict[str, float]] = None, stem: str = "results") -> None:
    """Write <stem>.md (the table) and <stem>.json (everything, plus ``extra``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.as_json()
    if extra:
        data.update(extra)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_table(result, paper) + "\n")


# ----------------------------------------------------------------------------- CLI

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from .infer import add_inference_arguments
    parser.add_argument("--data", required=True,
                        help="VOC2012-layout directory (JPEGImages, SegmentationClass, "
                             "SegmentationObject, ImageSets/Segmentation)")
    parser.add_argument("--split", default="val", help="image list to evaluate (default val)")
    parser.add_argument("--checkpoint", help="DeconvNet checkpoint from `deconvnet train`")
    parser.add_argument("--fcn-checkpoint", help="FCN-8s checkpoint (adds the FCN-8s and "
                                                 "EDeconvNet rows)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument("--no-crf", action="store_true", help="skip the +CRF rows")
    parser.add_argument("--out", default=None,
                        help="directory for results.md / results.json (default: print only)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_inference_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    from .data.voc import VOCSegmentation
    from .errors import UserError
    from .infer import inference_config_from_args, load_models

    if not args.checkpoint and not args.fcn_checkpoint:
        raise UserError("give --checkpoint (DeconvNet) and/or --fcn-checkpoint (FCN-8s)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    config = inference_config_from_args(args)
    dataset = VOCSegmentation(args.data, args.split)
    device = torch.device(args.device) if args.device else None
    deconvnet, fcn = load_models(args.checkpoint, args.fcn_checkpoint, device)
    result = evaluate_dataset(dataset, deconvnet, fcn, config, use_crf=not args.no_crf,
                              limit=args.limit, progress=not args.quiet)
    print(f"{result.num_images} images of {args.data} ({args.split}), "
          f"{result.seconds:.1f} s")
    print(markdown_table(result))
    if args.out:
        write_results(Path(args.out), result, extra={"config": _config_json(config)})
        print(f"wrote {Path(args.out) / 'results.md'} and results.json")
    return 0


def _config_json(config: InferenceConfig) -> dict:
    from dataclasses import asdict
    return asdict(config)
