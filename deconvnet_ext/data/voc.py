"""Reader for the PASCAL VOC2012 segmentation layout.

    VOC2012/
      JPEGImages/<id>.jpg               RGB image
      SegmentationClass/<id>.png        palette PNG, class ids 0..20, 255 = ignore
      SegmentationObject/<id>.png       palette PNG, instance ids 1..n, 0 = background,
                                        255 = ignore
      ImageSets/Segmentation/<split>.txt   one id per line

Every listed id must have all three files with the same height and width; anything
missing, unreadable or inconsistent raises UserError naming the file. Nothing is
silently skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
from PIL import Image

from ..errors import UserError
from .palette import IGNORE_INDEX, read_index_png


class Sample(NamedTuple):
    """One annotated image.

    name: the VOC id; image: uint8 (H, W, 3) RGB; label: uint8 (H, W) class ids with
    255 = ignore; instances: uint8 (H, W) instance ids, 0 = background, 255 = ignore."""

    name: str
    image: np.ndarray
    label: np.ndarray
    instances: np.ndarray


def read_rgb_image(path: str | Path) -> np.ndarray:
    """Read an image file -> uint8 (H, W, 3) RGB; UserError naming the file on failure."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise UserError(f"{path}: cannot read image ({exc})") from exc


def check_annotation(label: np.ndarray, instances: np.ndarray, label_path: str | Path,
                     inst_path: str | Path, num_classes: int) -> None:
    """Refuse a class map and instance map that disagree in size, or a class id
    outside 0..num_classes-1 and 255, naming the offending file."""
    if label.shape != instances.shape:
        raise UserError(f"{inst_path}: size {instances.shape[1]}x{instances.shape[0]} "
                        f"differs from {label_path} ({label.shape[1]}x{label.shape[0]})")
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        raise UserError(f"{label_path}: class id {int(label[bad][0])} is not in "
                        f"0..{num_classes - 1} or {IGNORE_INDEX}")


def read_split_names(list_file: Path, split: str,
                     paths_of: Callable[[str], Iterable[Path]]) -> list[str]:
    """The ids of a split list file, refusing an unreadable or empty list, a repeated
    id, or an id whose files (``paths_of(id)``) are missing, with the file named.
    Every file is checked up front: a missing one should fail now, not mid-training."""
    if not list_file.is_file():
        raise UserError(f"split {split!r}: list file {list_file} not found")
    try:
        names = list_file.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{list_file}: cannot read split list ({exc})") from exc
    if not names:
        raise UserError(f"{list_file}: split list is empty")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{list_file}: id {dup!r} is listed more than once")
    for name in names:
        for path in paths_of(name):
            if not path.is_file():
                raise UserError(f"{path}: file not found (id {name!r} is listed in "
                                f"{list_file})")
    return names


def checked_index(index: int, length: int) -> int:
    """``index`` in 0..length-1 (negative counts from the end), or IndexError."""
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {length} samples")
    return index % length


def resolve_voc_root(root: str | Path) -> Path:
    """Accept either .../VOC2012 or the VOCdevkit folder that contains it."""
    root = Path(root)
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012" / "JPEGImages").is_dir():
        root = root / "VOC2012"
    if not root.is_dir():
        raise UserError(f"dataset root {str(root)!r} is not a directory")
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject",
                "ImageSets/Segmentation"):
        if not (root / sub).is_dir():
            raise UserError(f"dataset root {str(root)!r} is not in the VOC2012 layout: "
                            f"{root / sub} is missing")
    return root


# Enough for the demo's splits many times over (200 images of 160x120: 7.7 MB); a
# real VOC train split (1464 images of ~500x375) is ~1.1 GB decoded, so most of it is
# decoded on each access as before.
DEFAULT_CACHE_BYTES = 256 * 2 ** 20


class VOCSegmentation:
    """The VOC2012 segmentation split `split` ("train", "val", "trainval", ...) under
    `root`. `len()` ids; `[i]` -> Sample with read-only arrays.

    num_classes: class ids must be < num_classes or 255, else UserError (a label that
    is really a colour or grey rendering would otherwise train silently on garbage).
    cache_bytes: decoded samples are kept in memory until their arrays total this many
    bytes (later ones are decoded on each access; 0: no cache). Training reads every
    image hundreds of times, and decoding one JPEG and two PNGs was ~6% of a demo
    training step. The arrays are read-only, cached or not, so no caller can change a
    cached sample (or come to rely on writing to one)."""

    def __init__(self, root: str | Path, split: str, num_classes: int = 21,
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative int, got {cache_bytes!r}")
        self.root = resolve_voc_root(root)
        self.split = split
        self.num_classes = int(num_classes)
        list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.names: list[str] = read_split_names(list_file, split, self._paths)
        self._cache: dict[int, Sample] = {}
        self._cache_left = cache_bytes

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        return (self.root / "JPEGImages" / f"{name}.jpg",
                self.root / "SegmentationClass" / f"{name}.png",
                self.root / "SegmentationObject" / f"{name}.png")

    def __len__(self) -> int:
        return len(self.names)

    def _index(self, index: int) -> int:
        return checked_index(index, len(self))

    def load_annotation(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(label, instances), both uint8 (H, W), without decoding the image."""
        name = self.names[self._index(index)]
        _, label_path, inst_path = self._paths(name)
        label = read_index_png(label_path)
        instances = read_index_png(inst_path)
        check_annotation(label, instances, label_path, inst_path, self.num_classes)
        return label, instances

    def __getitem__(self, index: int) -> Sample:
        index = self._index(index)
        sample = self._cache.get(index)
        if sample is None:
            sample = self._read(index)
            for array in sample[1:]:
                array.setflags(write=False)
            size = sum(array.nbytes for array in sample[1:])
            if size <= self._cache_left:
                self._cache[index] = sample
                self._cache_left -= size
        return sample

    def _read(self, index: int) -> Sample:
        name = self.names[index]
        image_path, label_path, _ = self._paths(name)
        label, instances = self.load_annotation(index)
        image = read_rgb_image(image_path)
        if image.shape[:2] != label.shape:
            raise UserError(f"{image_path}: size {image.shape[1]}x{image.shape[0]} differs "
                            f"from its label {label_path} ({label.shape[1]}x{label.shape[0]})")
        return Sample(name, image, label, instances)


def instance_records(label: np.ndarray, instances: np.ndarray,
                     name: str = "?") -> list[tuple[int, list[int], int]]:
    """[(instance_id, box [x0, y0, x1, y1) ints, class_id)] for each instance id in
    `instances`, ascending (0 and 255 are not instances). The class is the majority
    label over the instance's pixels (ignoring 255 and 0); an instance whose pixels carry
    no object class is an inconsistent annotation -> UserError naming the sample."""
    result = []
    ids = np.unique(instances)
    for inst_id in ids[(ids != 0) & (ids != IGNORE_INDEX)]:
        mask = instances == inst_id
        ys, xs = np.nonzero(mask)
        classes = label[mask]
        classes = classes[(classes != IGNORE_INDEX) & (classes != 0)]
        if classes.size == 0:
            raise UserError(f"sample {name!r}: instance {int(inst_id)} covers no object "
                            "class in its SegmentationClass label")
        class_id = int(np.bincount(classes).argmax())
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        result.append((int(inst_id), box, class_id))
    return result


def instance_boxes(sample: Sample) -> list[tuple[list[int], int]]:
    """[(box [x0, y0, x1, y1) ints, class_id)] for each instance of `sample`, in
    ascending instance id order."""
    return [(box, cls) for _, box, cls in
            instance_records(sample.label, sample.instances, sample.name)]
