"""``deconvnet predict IMAGE... --checkpoint CK``: segment images, write mask PNGs."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from .infer import add_inference_arguments
    from .parallel import add_parallel_arguments
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG)")
    parser.add_argument("--checkpoint", required=True,
                        help="DeconvNet checkpoint from `deconvnet train`")
    parser.add_argument("--fcn-checkpoint", default=None,
                        help="FCN-8s checkpoint: predict with the EDeconvNet ensemble")
    parser.add_argument("--crf", action="store_true", help="refine with the dense CRF")
    parser.add_argument("--out", default="predictions",
                        help="output directory (default ./predictions): <name>.png holds "
                             "the class ids as a VOC palette PNG")
    parser.add_argument("--overlay", action="store_true",
                        help="also write <name>_overlay.png, the mask over the image")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    add_parallel_arguments(parser)
    add_inference_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    """``deconvnet predict``: the images stream through ``pipeline.StreamedPredictions``
    (decoding, proposals and the CRF in ``--workers`` processes); under ``torchrun`` each
    rank segments a shard and rank 0 writes every mask."""
    from .distributed import cleanup_distributed, setup_distributed
    from .errors import UserError
    from .infer import check_proposal_scorer, inference_config_from_args, load_models, wanted_variants
    from .parallel import parallel_options, prestart
    from .pipeline import ImageSource, RankGather, StreamedPredictions, shard
    from .progress import progress_bar
    from .visualize import overlay, save_mask_png

    paths = [Path(p) for p in args.images]
    for path in paths:  # check every path before the (slow) model load
        if not path.is_file():
            raise UserError(f"{path}: image file not found")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError("two images share a file name; their masks would overwrite each "
                        "other in --out")
    parallel = parallel_options(args)
    if parallel["workers"] > 1:
        prestart()  # the fork server loads while the data and models do
    config = inference_config_from_args(args)
    ctx = setup_distributed(args.device)
    try:
        deconvnet, fcn = load_models(args.checkpoint, args.fcn_checkpoint, ctx.device)
        check_proposal_scorer(deconvnet, config, args.checkpoint)
        variant = ("EDeconvNet" if fcn is not None else "DeconvNet") + ("+CRF" if args.crf else "")
        wanted = wanted_variants(deconvnet, fcn, args.crf, [variant])
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)

        def write(record) -> None:  # rank 0: one image's files, computed on any rank
            name, mask, overlaid = record
            save_mask_png(out / f"{name}.png", mask)
            if overlaid is not None:
                from PIL import Image
                Image.fromarray(overlaid).save(out / f"{name}_overlay.png")

        gather = RankGather(len(paths), write)
        indices = shard(len(paths), ctx.rank, ctx.world_size)
        stream = StreamedPredictions(ImageSource(paths=[str(p) for p in paths]), indices,
                                     deconvnet, fcn, config, wanted, **parallel)
        bar = progress_bar(total=len(indices), desc="predict", unit="img",
                           disable=args.quiet or not ctx.is_main)
        with contextlib.closing(iter(stream)) as predictions_of:
            for _, sample, predictions in predictions_of:
                mask = predictions[variant]
                gather.add((sample.name, mask,
                            overlay(sample.image, mask) if args.overlay else None))
                bar.update(1)
        gather.finish()
        bar.close()
        if ctx.is_main:
            print(f"wrote {len(paths)} {variant} mask(s) to {out}/")
        return 0
    finally:
        cleanup_distributed(ctx)
