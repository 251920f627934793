"""Reader for the Semantic Boundaries Dataset (SBD, Hariharan et al. 2011), the extra
VOC training annotations the paper trains with.

    benchmark_RELEASE/dataset/      (pass this folder, or benchmark_RELEASE)
      img/<id>.jpg
      cls/<id>.mat     GTcls.Segmentation: uint8 (H, W) class ids, 0 = background
      inst/<id>.mat    GTinst.Segmentation: uint8 (H, W) instance ids, 0 = background
      train.txt, val.txt

SBD has no 255 band. Same interface as VOCSegmentation (names, len, [i] -> Sample,
load_annotation), so InstanceCrops and the trainer take either.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .voc import Sample, check_annotation, checked_index, read_rgb_image, read_split_names


def read_sbd_mat(path: str | Path, struct: str) -> np.ndarray:
    """`struct`.Segmentation of an SBD .mat file (GTcls or GTinst) -> uint8 (H, W)."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as exc:  # scipy raises several types for corrupt files
        raise UserError(f"{path}: cannot read .mat file ({exc})") from exc
    try:
        seg = np.asarray(getattr(mat[struct], "Segmentation"))
    except (KeyError, AttributeError):
        raise UserError(f"{path}: no {struct}.Segmentation in this .mat file "
                        "(not an SBD annotation)") from None
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise UserError(f"{path}: {struct}.Segmentation must be a 2-D map of ids 0..255, "
                        f"got shape {seg.shape}")
    return seg.astype(np.uint8)


class SBDSegmentation:
    """SBD split `split` ("train" or "val") under `root`; `[i]` -> Sample."""

    def __init__(self, root: str | Path, split: str, num_classes: int = 21) -> None:
        root = Path(root)
        if not (root / "cls").is_dir() and (root / "dataset" / "cls").is_dir():
            root = root / "dataset"
        for sub in ("img", "cls", "inst"):
            if not (root / sub).is_dir():
                raise UserError(f"dataset root {str(root)!r} is not in the SBD layout: "
                                f"{root / sub} is missing")
        self.root, self.split, self.num_classes = root, split, int(num_classes)
        self.names: list[str] = read_split_names(root / f"{split}.txt", split, self._paths)

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        return (self.root / "img" / f"{name}.jpg", self.root / "cls" / f"{name}.mat",
                self.root / "inst" / f"{name}.mat")

    def __len__(self) -> int:
        return len(self.names)

    def load_annotation(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(label, instances), both uint8 (H, W)."""
        name = self.names[checked_index(index, len(self))]
        _, cls_path, inst_path = self._paths(name)
        label = read_sbd_mat(cls_path, "GTcls")
        instances = read_sbd_mat(inst_path, "GTinst")
        check_annotation(label, instances, cls_path, inst_path, self.num_classes)
        return label, instances

    def __getitem__(self, index: int) -> Sample:
        index = checked_index(index, len(self))
        name = self.names[index]
        image_path, cls_path, _ = self._paths(name)
        label, instances = self.load_annotation(index)
        image = read_rgb_image(image_path)
        if image.shape[:2] != label.shape:
            raise UserError(f"{image_path}: size {image.shape[1]}x{image.shape[0]} differs "
                            f"from its label {cls_path} ({label.shape[1]}x{label.shape[0]})")
        return Sample(name, image, label, instances)
