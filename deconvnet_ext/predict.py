"""``deconvnet predict IMAGE... --checkpoint CK``: segment images, write mask PNGs."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from .infer import add_inference_arguments
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
    add_inference_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.voc import read_rgb_image
    from .errors import UserError
    from .infer import inference_config_from_args, load_models, predict_variants
    from .visualize import overlay, save_mask_png

    paths = [Path(p) for p in args.images]
    for path in paths:  # check every path before the (slow) model load
        if not path.is_file():
            raise UserError(f"{path}: image file not found")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise UserError("two images share a file name; their masks would overwrite each "
                        "other in --out")
    config = inference_config_from_args(args)
    device = torch.device(args.device) if args.device else None
    deconvnet, fcn = load_models(args.checkpoint, args.fcn_checkpoint, device)
    variant = ("EDeconvNet" if fcn is not None else "DeconvNet") + ("+CRF" if args.crf else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(paths, desc="predict", unit="img", file=sys.stderr, dynamic_ncols=True):
        image = read_rgb_image(path)
        probs = predict_variants([image], deconvnet, fcn, config, use_crf=args.crf,
                                 variants=[variant])[0]
        mask = probs[variant].argmax(axis=0).astype(np.uint8)
        save_mask_png(out / f"{path.stem}.png", mask)
        if args.overlay:
            from PIL import Image
            Image.fromarray(overlay(image, mask)).save(out / f"{path.stem}_overlay.png")
    print(f"wrote {len(paths)} {variant} mask(s) to {out}/")
    return 0
