"""Evaluation over a VOC-format split: the paper's table (FCN-8s, DeconvNet,
DeconvNet+CRF, EDeconvNet, EDeconvNet+CRF; mean IU and per-class IoU), and
``deconvnet eval``."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .data.voc import Sample
from .infer import STAGES, InferenceConfig
from .metrics import ConfusionMatrix

# (image, label, {variant: prediction}) for the overlay grid
Example = Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]


@dataclass
class EvalResult:
    """Confusion matrices per variant over one split, plus a few examples to draw.

    ``stage_seconds``: wall seconds inside each stage (decode, proposals, network,
    aggregation, crf), summed over images, processes and ranks; decode, proposals and
    the CRF run in worker processes when ``workers`` > 1, so the stages overlap and
    their sum exceeds ``seconds`` (the run's wall time)."""
    class_names: List[str]
    confusion: Dict[str, ConfusionMatrix]
    num_images: int = 0
    seconds: float = 0.0
    examples: List[Example] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    stage_seconds: Dict[str, float] = field(default_factory=dict)
    workers: int = 1
    world_size: int = 1

    def throughput(self) -> dict:
        """images/s over the run's wall time, and the summed seconds per stage."""
        return {"images_per_s": round(self.num_images / self.seconds, 3) if self.seconds else None,
                "wall_s": round(self.seconds, 2), "workers": self.workers,
                "ranks": self.world_size,
                "stage_seconds_summed": {k: round(v, 2) for k, v in self.stage_seconds.items()},
                "stage_seconds_are": "wall seconds inside each stage, summed over images, "
                                     "worker processes and ranks (stages overlap when "
                                     "workers > 1)"}

    def as_json(self) -> dict:
        return {"num_images": self.num_images, "seconds": round(self.seconds, 2),
                "class_names": self.class_names,
                "variants": {v: cm.summary(self.class_names) for v, cm in self.confusion.items()},
                "throughput": self.throughput()}


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
                     limit: Optional[int] = None, keep_examples: int = 0,
                     progress: bool = True,
                     on_prediction: Optional[Callable[[object, Dict[str, np.ndarray]], None]]
                     = None, workers: int = 1,
                     network_threads: Optional[int] = None) -> EvalResult:
    """Run the pipeline of ``predict_variants`` over ``dataset`` (a VOCSegmentation:
    samples with .name, .image uint8 (H,W,3) and .label uint8 (H,W), 255 ignored) and
    accumulate a confusion matrix per variant. ``limit`` caps the number of images; the
    first ``keep_examples`` (image, label, predictions) are kept;
    ``on_prediction(sample, {variant: uint8 (H,W) class ids})`` is called per image.

    ``workers``: worker processes for decoding, proposals and the CRF (1: all in this
    process; ``parallel.default_workers()`` is the CLI's default). ``network_threads``:
    torch's CPU threads during the network's forward (None: leave them as they are).
    In a torch.distributed
    process group (``torchrun``) every rank evaluates its shard of the split, the
    confusion matrices are summed over ranks (every rank returns the totals), and rank 0
    alone gets every image's ``on_prediction`` (its ``sample`` carries only the name,
    plus image and label for the kept examples, for images of other ranks), the names
    and the examples. The numbers are bit-identical for any workers, ranks and order
    (at a given ``network_threads``: torch's CPU convolutions round differently with a
    different thread count)."""
    from .infer import wanted_variants
    from .pipeline import ImageSource, RankGather, StreamedPredictions, all_reduce_sum, shard
    from .progress import progress_bar

    if deconvnet is None and fcn is None:
        raise ValueError("evaluate_dataset needs deconvnet or fcn (both are None)")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    config = config or InferenceConfig()
    num_classes = (deconvnet or fcn).num_classes
    total = len(dataset) if limit is None else min(limit, len(dataset))
    wanted = wanted_variants(deconvnet, fcn, use_crf)
    result = EvalResult(class_names=class_names_for(dataset, num_classes),
                        confusion={v: ConfusionMatrix(num_classes) for v in wanted},
                        workers=workers)
    start = time.perf_counter()
    order: Dict[str, int] = {}               # name -> index, of every image (rank 0)
    examples: List[Tuple[int, Example]] = []

    def consume(record) -> None:  # rank 0: one image's predictions, its own or not
        index, sample, predictions = record
        if on_prediction is not None:
            on_prediction(sample, predictions)
        if index < keep_examples:
            examples.append((index, (sample.image, sample.label, predictions)))
        order[sample.name] = index

    gather = RankGather(total, consume)
    result.world_size = gather.world_size
    indices = shard(total, gather.rank, gather.world_size)
    stream = StreamedPredictions(ImageSource(dataset), indices, deconvnet, fcn, config,
                                 wanted, workers, network_threads)
    desc = "evaluate" + (f" (rank 0 of {gather.world_size})" if gather.distributed else "")
    bar = progress_bar(total=len(indices), desc=desc, unit="img",
                       disable=not (progress and gather.rank == 0))
    with contextlib.closing(iter(stream)) as predictions_of:  # stops the workers on error
        for index, sample, predictions in predictions_of:
            for variant, prediction in predictions.items():
                result.confusion[variant].update(sample.label, prediction)
            keep = index < keep_examples
            gather.add((index, sample if gather.rank == 0 or keep else
                        Sample(sample.name, None, None, None), predictions))
            bar.update(1)
    gather.finish()
    bar.close()
    if gather.distributed:
        totals = all_reduce_sum(np.stack([result.confusion[v].matrix for v in wanted]))
        for variant, matrix in zip(wanted, totals):
            result.confusion[variant].matrix = matrix.astype(np.int64)
        seconds = all_reduce_sum(np.array([stream.timer.seconds[k] for k in STAGES]))
        stream.timer.seconds = dict(zip(STAGES, map(float, seconds)))
    result.names = [name for name, _ in sorted(order.items(), key=lambda item: item[1])]
    result.examples = [example for _, example in sorted(examples, key=lambda e: e[0])]
    result.num_images = total
    result.seconds = time.perf_counter() - start
    result.stage_seconds = dict(stream.timer.seconds)
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


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a
    run stopped midway) sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_results(out_dir: Path, result: EvalResult, extra: Optional[dict] = None,
                  paper: Optional[Dict[str, float]] = None, stem: str = "results") -> None:
    """Write <stem>.md (the table) and <stem>.json (everything, plus ``extra``), each
    atomically (a failed run leaves no partial results file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = result.as_json()
    if extra:
        data.update(extra)
    write_text_atomically(out_dir / f"{stem}.md", markdown_table(result, paper) + "\n")
    write_text_atomically(out_dir / f"{stem}.json", json.dumps(data, indent=2) + "\n")


# ----------------------------------------------------------------------------- CLI

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from .infer import add_inference_arguments
    from .parallel import add_parallel_arguments
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
    parser.add_argument("--masks", action="store_true",
                        help="also write every variant's masks as OUT/masks/<variant>/<id>.png "
                             "(VOC palette PNGs; needs --out)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_parallel_arguments(parser)
    add_inference_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """``deconvnet eval``; under ``torchrun`` every rank evaluates a shard and rank 0
    prints and writes everything."""
    from .data.voc import VOCSegmentation
    from .distributed import cleanup_distributed, setup_distributed
    from .errors import UserError
    from .infer import check_proposal_scorer, inference_config_from_args, load_models
    from .parallel import parallel_options, prestart
    from .visualize import save_mask_png

    if not args.checkpoint and not args.fcn_checkpoint:
        raise UserError("give --checkpoint (DeconvNet) and/or --fcn-checkpoint (FCN-8s)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.masks and not args.out:
        raise UserError("--masks needs --out DIR (the masks go to DIR/masks/)")
    parallel = parallel_options(args)
    if parallel["workers"] > 1:
        prestart()  # the fork server loads while the data and models do
    config = inference_config_from_args(args)
    dataset = VOCSegmentation(args.data, args.split)
    ctx = setup_distributed(args.device)
    try:
        deconvnet, fcn = load_models(args.checkpoint, args.fcn_checkpoint, ctx.device)
        check_proposal_scorer(deconvnet, config, args.checkpoint)
        on_prediction = None
        if args.masks:
            mask_root = Path(args.out) / "masks"

            def on_prediction(sample, predictions) -> None:
                for variant, mask in predictions.items():
                    (mask_root / variant).mkdir(parents=True, exist_ok=True)
                    save_mask_png(mask_root / variant / f"{sample.name}.png", mask)

        result = evaluate_dataset(dataset, deconvnet, fcn, config, use_crf=not args.no_crf,
                                  limit=args.limit, progress=not args.quiet,
                                  on_prediction=on_prediction, **parallel)
        if not ctx.is_main:
            return 0
        ranks = f" on {ctx.world_size} ranks" if ctx.distributed else ""
        print(f"{result.num_images} images of {args.data} ({args.split}), "
              f"{result.seconds:.1f} s ({result.num_images / max(result.seconds, 1e-9):.2f} "
              f"images/s, {parallel['workers']} worker process(es){ranks})")
        print(markdown_table(result))
        print("seconds per stage, summed over images: " + ", ".join(
            f"{k} {v:.1f}" for k, v in result.stage_seconds.items()))
        if args.out:
            write_results(Path(args.out), result, extra={"config": _config_json(config)})
            print(f"wrote {Path(args.out) / 'results.md'} and results.json"
                  + (f", {Path(args.out) / 'masks'}/<variant>/*.png" if args.masks else ""))
        return 0
    finally:
        cleanup_distributed(ctx)


def _config_json(config: InferenceConfig) -> dict:
    from dataclasses import asdict
    return asdict(config)
