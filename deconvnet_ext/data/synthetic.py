"""A synthetic dataset in exactly the VOC2012 segmentation layout (`deconvnet synth`).

Scenes: sky over grass, road or water, or an indoor wall over a wooden floor, all
textured, with unlabelled clutter (rocks, bushes, frames) and shadows. 1-5 objects of
the 20 VOC classes (cartoon shapes, see synthetic_shapes.py) stand on the ground or fly
in the sky, at very different scales (down to ~8 px), cut by the image border and
occluding each other (drawn far to near). Labels carry VOC's 255 band: the pixels
within `band` px outside each object are "ignore" in both SegmentationClass and
SegmentationObject; fragments of an occluded object smaller than 12 px become ignore.

Reproducible: image i of a split depends only on (seed, split, i), and the files are
byte-identical for the same arguments (PIL's JPEG/PNG encoders are deterministic).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..errors import UserError
from .palette import IGNORE_INDEX, VOC_CLASSES, write_palette_png
from .synthetic_shapes import CLASS_SPECS, NUM_CLASSES, draw_object

DEFAULT_IMAGE_SIZE = (120, 160)  # (height, width)
DEFAULT_NUM_TRAIN = 200
DEFAULT_NUM_VAL = 50
DEFAULT_SEED = 0
META_FILE = "synthetic_voc.json"
FORMAT_VERSION = 1
MIN_FRAGMENT_PIXELS = 12
_SPLIT_CODES = {"train": 0, "val": 1}


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], float32 (H, W)."""
    grid = rng.random((cells, max(2, cells * width // height))).astype(np.float32)
    return np.clip(cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)


def _ground_texture(rng, scene: str, height: int, width: int) -> np.ndarray:
    """float32 (height, width, 3) texture of the scene's ground (or indoor floor)."""
    yy = np.arange(height, dtype=np.float32)[:, None, None]
    fine = rng.normal(0, 1, (height, width, 1)).astype(np.float32)
    blobs = _smooth_noise(rng, height, width, 4)[..., None]
    if scene == "grass":
        base = np.array([65, 135, 50], np.float32) + rng.integers(-15, 16, 3)
        tex = base * (0.8 + 0.4 * blobs) + 14 * fine
        blades = rng.random((height, width)) < 0.06  # short vertical streaks
        blades = cv2.dilate(blades.astype(np.uint8), np.ones((3, 1), np.uint8)) > 0
        tex[blades] *= 0.7
    elif scene == "road":
        base = np.array([112, 112, 118], np.float32) + rng.integers(-15, 16)
        tex = base * (0.9 + 0.2 * blobs) + 10 * fine
        lane_y = int(rng.uniform(0.3, 0.8) * height)
        dash = (np.arange(width) // max(4, width // 12)) % 2 == 0
        tex[lane_y:lane_y + max(1, height // 40), dash] = (235, 235, 225)
    elif scene == "water":
        base = np.array([40, 90, 160], np.float32) + rng.integers(-15, 16, 3)
        freq = rng.uniform(0.5, 1.2)
        waves = np.sin(yy * freq + 6 * blobs)
        tex = base * (0.9 + 0.2 * blobs) + 18 * waves + 6 * fine
    else:  # indoor floor: planks
        base = np.array([150, 105, 65], np.float32) + rng.integers(-20, 21, 3)
        tex = base * (0.85 + 0.3 * blobs) + 8 * fine
        plank = max(3, height // int(rng.integers(4, 8)))
        tex[(np.arange(height) % plank) == 0] *= 0.6
    return tex


def _upper_texture(rng, scene: str, height: int, width: int) -> np.ndarray:
    """float32 (height, width, 3): sky for outdoor scenes, wallpaper indoors."""
    t = np.linspace(0, 1, max(height, 1), dtype=np.float32)[:, None, None]
    fine = rng.normal(0, 1, (height, width, 1)).astype(np.float32)
    if scene == "indoor":
        base = rng.integers(150, 236, 3).astype(np.float32)
        period = int(rng.integers(4, 12))
        stripes = ((np.arange(width) // period) % 2)[None, :, None].astype(np.float32)
        return base * (1.0 - 0.08 * stripes) + 5 * fine
    top = np.array([80, 130, 215], np.float32) + rng.integers(-15, 16, 3)
    bottom = np.array([185, 210, 240], np.float32)
    sky = top * (1 - t) + bottom * t + 3 * fine
    clouds = _smooth_noise(rng, height, width, 3)[..., None]
    clouds = np.clip((clouds - 0.55) * 3, 0, 1)
    return sky * (1 - clouds) + 245 * clouds


def _draw_clutter(rng, image: np.ndarray, scene: str, horizon: int) -> None:
    """Unlabelled distractors (rocks, bushes, picture frames, clouds) on the background."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(0, 4))):
        size = int(rng.uniform(0.04, 0.2) * height) + 2
        x = int(rng.integers(0, width))
        if scene == "indoor" and rng.random() < 0.5:  # a frame on the wall
            y = int(rng.integers(0, max(1, horizon - size)))
            colour = rng.integers(40, 220, 3).tolist()
            cv2.rectangle(image, (x, y), (x + size, y + int(size * 0.8)), colour, -1)
            cv2.rectangle(image, (x, y), (x + size, y + int(size * 0.8)),
                          rng.integers(0, 120, 3).tolist(), max(1, size // 8))
        else:  # a rock or bush on the ground
            y = int(rng.integers(horizon, height))
            colour = ([60, 100, 40] if scene == "grass" and rng.random() < 0.5
                      else (rng.integers(70, 150) * np.ones(3)).tolist())
            colour = (np.asarray(colour) + rng.integers(-15, 16, 3)).tolist()
            cv2.ellipse(image, (x, y), (size, max(1, size // 2)), 0, 180, 360, colour, -1)


def _choose_scene(rng, lead: int | None) -> tuple[str, int, bool]:
    """(scene, lead class, lead flies). The lead object's class comes first (given, or
    drawn about uniformly over the 20 classes), then a scene it belongs in."""
    if lead is None:
        weights = np.array([CLASS_SPECS[c].weight for c in range(1, NUM_CLASSES)])
        lead = int(rng.choice(np.arange(1, NUM_CLASSES), p=weights / weights.sum()))
    spec = CLASS_SPECS[lead]
    flies = spec.in_sky and (not spec.scenes or rng.random() < 0.5)
    if flies:
        scene = ("grass", "road", "water")[int(rng.integers(3))]
    else:
        scene = spec.scenes[int(rng.integers(len(spec.scenes)))]
    return scene, lead, flies


def _object_height(rng, min_h: float, max_h: float) -> float:
    """Log-uniform heights: 30% small (min_h .. 25% of max), the rest larger."""
    split = max(min_h + 1, 0.25 * max_h)
    lo, hi = (min_h, split) if rng.random() < 0.3 else (split, max(split + 1, max_h))
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_objects(rng, scene: str, lead: int, lead_flies: bool, height: int,
                   width: int, horizon: int):
    """[(class_id, x0, y0, h, w)], in drawing order (far to near)."""
    ground = [c for c in range(1, NUM_CLASSES) if scene in CLASS_SPECS[c].scenes]
    weights = np.array([CLASS_SPECS[c].weight for c in ground])
    sky = [c for c in range(1, NUM_CLASSES) if CLASS_SPECS[c].in_sky]
    count = int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    min_h = max(6.0, 0.06 * height)
    placed = []
    for k in range(count):
        if k == 0:
            cls, flying = lead, lead_flies
        else:
            flying = scene != "indoor" and rng.random() < 0.15
            cls = int(rng.choice(sky) if flying
                      else rng.choice(ground, p=weights / weights.sum()))
        spec = CLASS_SPECS[cls]
        max_h = spec.max_height * height
        if flying:
            max_h = min(max_h, 0.9 * horizon)
        h = _object_height(rng, min_h, max_h)
        w = h * spec.aspect * rng.uniform(0.85, 1.15)
        if w > 0.95 * width:  # keep very wide classes inside the frame width
            h, w = h * 0.95 * width / w, 0.95 * width
        h, w = max(4, int(round(h))), max(4, int(round(w)))
        x0 = int(rng.integers(-w // 8, max(-w // 8 + 1, width - w + w // 8)))
        if flying:
            y0 = int(rng.integers(0, max(1, horizon - h)))
            depth = -1.0
        elif cls == 20 and rng.random() < 0.5:  # a tv monitor hanging on the wall
            y0 = int(rng.integers(0, max(1, horizon - h)))
            depth = -0.5
        else:  # stands on the ground, its feet below the horizon
            bottom = int(rng.integers(min(horizon + 2, height), height + 1))
            y0 = bottom - h
            depth = float(bottom)
        placed.append((depth, k, cls, x0, y0, h, w))
    placed.sort()
    return [p[2:] for p in placed]


def _paste(canvas: np.ndarray, patch: np.ndarray, mask: np.ndarray, x0: int, y0: int):
    """Paste patch where mask, clipped to the canvas; returns the canvas-space mask."""
    height, width = canvas.shape[:2]
    h, w = mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    full = np.zeros((height, width), bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return full
    sub = mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    full[cy0:cy1, cx0:cx1] = sub
    canvas[cy0:cy1, cx0:cx1][sub] = patch[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0][sub]
    return full


def render_scene(rng: np.random.Generator, height: int, width: int, band: int,
                 lead: int | None = None):
    """One synthetic image: (image uint8 (H,W,3), label uint8 (H,W), instances uint8).
    lead: class id of the first object (None: drawn at random)."""
    scene, lead, lead_flies = _choose_scene(rng, lead)
    horizon = int(rng.uniform(0.55, 0.72) * height if scene == "indoor"
                  else rng.uniform(0.3, 0.55) * height)
    image = np.empty((height, width, 3), np.float32)
    image[:horizon] = _upper_texture(rng, scene, horizon, width)
    image[horizon:] = _ground_texture(rng, scene, height - horizon, width)
    image = np.clip(image, 0, 255).astype(np.uint8)
    _draw_clutter(rng, image, scene, horizon)

    label = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.int32)  # drawing index + 1 of the visible object
    classes = []
    objects = _place_objects(rng, scene, lead, lead_flies, height, width, horizon)
    for k, (cls, x0, y0, h, w) in enumerate(objects):
        if y0 + h > horizon and y0 + h <= height:  # a soft shadow at the object's feet
            shadow = np.zeros((height, width), np.uint8)
            cv2.ellipse(shadow, (x0 + w // 2, y0 + h - 1), (max(1, w // 2), max(1, h // 10)),
                        0, 0, 360, 1, -1)
            image[shadow > 0] = (image[shadow > 0] * 0.65).astype(np.uint8)
        rgb, mask = draw_object(cls, h, w, rng)
        full = _paste(image, rgb, mask, x0, y0)
        owner[full] = k + 1
        classes.append(cls)

    # Global lighting and sensor noise, then the labels.
    gain, offset = rng.uniform(0.8, 1.15), rng.uniform(-15, 15)
    noise = rng.normal(0, 4, image.shape)
    image = np.clip(image * gain + offset + noise, 0, 255).astype(np.uint8)

    instances = np.zeros((height, width), np.uint8)
    ignore = np.zeros((height, width), bool)
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    next_id = 1
    for k, cls in enumerate(classes):
        mask = owner == k + 1
        if not mask.any():
            continue
        if band > 0:
            ignore |= (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask
        if mask.sum() < MIN_FRAGMENT_PIXELS:
            ignore |= mask
            continue
        instances[mask] = next_id
        label[mask] = cls
        next_id += 1
    label[ignore] = IGNORE_INDEX
    instances[ignore] = IGNORE_INDEX
    # An instance the band ate completely leaves no pixels: renumber to keep ids dense.
    ids = [i for i in np.unique(instances) if 0 < i < IGNORE_INDEX]
    remap = np.arange(256, dtype=np.uint8)
    remap[ids] = np.arange(1, len(ids) + 1)
    return image, label, remap[instances]


def _parse_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    if height < 32 or width < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size!r}")
    return height, width


def generate_synthetic_voc(out_dir: str | Path, num_train: int = DEFAULT_NUM_TRAIN,
                           num_val: int = DEFAULT_NUM_VAL,
                           image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
                           seed: int = DEFAULT_SEED, band: int | None = None,
                           progress: bool = True) -> Path:
    """Write a synthetic dataset in the VOC2012 layout under `out_dir`; returns the
    dataset root (`out_dir` itself, the folder holding JPEGImages etc.).

    image_size: (height, width) or an int for square images. band: width in px of the
    255 ignore band outside each object (default: ~1/80 of the shorter side, at least
    1; VOC's is ~5 px at ~500 px). Splits "train", "val" and "trainval" are written.
    The same arguments give byte-identical files."""
    height, width = _parse_size(image_size)
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if num_train + num_val == 0:
        raise ValueError("num_train + num_val must be > 0, got 0 and 0")
    band = max(1, round(min(height, width) / 80)) if band is None else int(band)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise UserError(f"--out {str(out)!r} is not empty and not a synthetic dataset; "
                        "refusing to write into it")
    dirs = {d: out / d for d in ("JPEGImages", "SegmentationClass", "SegmentationObject",
                                 "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    if (out / META_FILE).is_file():  # regenerating: drop the previous set's files
        for key in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
            for old in dirs[key].glob("synth_*"):
                old.unlink()

    from ..progress import progress_bar as tqdm  # plain lines off a terminal

    jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
    names: dict[str, list[str]] = {"train": [], "val": []}
    for split, i in tqdm(jobs, desc="synth", unit="img", disable=not progress):
        rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], i])
        # lead classes cycle through 1..20: every class is in every split of >= 20
        image, label, instances = render_scene(rng, height, width, band,
                                               lead=1 + i % (NUM_CLASSES - 1))
        name = f"synth_{split}_{i:06d}"
        Image.fromarray(image).save(dirs["JPEGImages"] / f"{name}.jpg", quality=92,
                                     subsampling=0)  # 4:4:4 keeps thin colour edges
        write_palette_png(dirs["SegmentationClass"] / f"{name}.png", label)
        write_palette_png(dirs["SegmentationObject"] / f"{name}.png", instances)
        names[split].append(name)
    lists = {"train": names["train"], "val": names["val"],
             "trainval": names["train"] + names["val"]}
    for split, ids in lists.items():
        (dirs["ImageSets/Segmentation"] / f"{split}.txt").write_text(
            "".join(f"{n}\n" for n in ids))
    meta = {"format_version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
            "image_size": [height, width], "seed": int(seed), "band": band,
            "classes": list(VOC_CLASSES)}
    (out / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out


def _size_arg(text: str) -> tuple[int, int]:
    try:
        if "x" in text:
            height, width = text.lower().split("x")
            return int(height), int(width)
        return int(text), int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HEIGHTxWIDTH or N, got {text!r}")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `deconvnet synth`."""
    parser.add_argument("--out", required=True, help="folder to write the dataset to "
                        "(becomes the VOC2012-style root: JPEGImages, Segmentation*, ...)")
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN,
                        help="training images (default %(default)s)")
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL,
                        help="validation images (default %(default)s)")
    parser.add_argument("--size", type=_size_arg, default=DEFAULT_IMAGE_SIZE,
                        help="image size HEIGHTxWIDTH, or N for square "
                        "(default %dx%d)" % DEFAULT_IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help="random seed; the same seed writes the same bytes "
                        "(default %(default)s)")


def run_cli(args: argparse.Namespace) -> int:
    """`deconvnet synth`: write the dataset, print where it went."""
    try:
        root = generate_synthetic_voc(args.out, args.num_train, args.num_val, args.size,
                                      args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {args.num_train} train + {args.num_val} val images to {root}")
    return 0
