"""Encoder pre-training: the tiny networks' stand-in for the paper's ImageNet VGG16.

The paper's DeconvNet and FCN-8s both start from an encoder trained on ImageNet
classification. The synthetic demo has no ImageNet, so ``deconvnet pretrain`` trains the
same encoder (``features``, ``fc6``, ``fc7``) to classify object crops (20 classes) and
background crops (class 0) of a *separate* synthetic set: its own seed
(``PRETRAIN_DATA_SEED``, never one of the demo's), its own images, never the demo's
train or val images. DeconvNet and FCN-8s then load the same encoder
(``load_encoder``), as both load VGG16 in the paper.

Crops: an instance's box enlarged by a random factor in [1.1, 2.5] (so the crop carries
context and background, as proposals do), shifted by up to 10% of its size, mirrored at
random; background crops are random windows that overlap no instance by IoU >= 0.3.
One crop in five is background. The images stay in memory (decoded once).

Reproducible: the same arguments, torch version and thread count give the same
weights bit for bit (the crop stream is seeded per step, the optimiser is plain SGD).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

PRETRAIN_DATA_SEED = 1_000_003   # the pre-training set's seed: no demo uses it
ENCODER_PREFIXES = ("features.", "fc6.", "fc7.")
BACKGROUND_FRACTION = 0.2
ENLARGE_RANGE = (1.1, 2.5)
DEFAULTS = dict(num_images=2000, steps=4000, batch_size=64, lr=0.1, seed=0)
# the shipped encoder (``deconvnet pretrain`` with DEFAULTS reproduces it)
SHIPPED_ENCODER = Path(__file__).resolve().parent / "weights" / "tiny_encoder.pt"


class EncoderClassifier(nn.Module):
    """A DeconvNet's encoder (convs, fc6, fc7) + global average pooling + a linear
    classifier. ``encoder_state()`` returns the encoder's state dict in the keys both
    DeconvNet and FCN8s use."""

    def __init__(self, arch: str = "tiny", num_classes: int = 21) -> None:
        super().__init__()
        from .model import DeconvNet
        from .vgg import get_arch
        # Built with the mirror decoder (thrown away below): the initialisation then draws
        # the same random numbers as when the shipped encoder was made, whatever decoder
        # widths the arch has now, so `--compare` still reproduces it bit for bit.
        net = DeconvNet(num_classes=num_classes,
                        arch=dataclasses.replace(get_arch(arch), decoder_widths=None))
        self.input_size = net.input_size
        self.features, self.fc6, self.fc7 = net.features, net.fc6, net.fc7
        self.classifier = nn.Linear(net.config.fc_width, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .model import DeconvNet
        x, _ = DeconvNet.encode(self, x)  # the same layers DeconvNet runs
        x = self.fc7(self.fc6(x))
        return self.classifier(x.mean(dim=(2, 3)))

    def encoder_state(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if k.startswith(ENCODER_PREFIXES)}


def load_encoder(model: nn.Module, source: Union[str, Path, Dict[str, torch.Tensor]]) -> None:
    """Copy a pre-trained encoder (a ``deconvnet pretrain`` file or its state dict)
    into ``model`` (DeconvNet or FCN8s): every ``features.``/``fc6.``/``fc7.`` tensor,
    shapes checked; the decoder / score layers keep their initialisation."""
    state = source if isinstance(source, dict) else read_encoder_file(source)["encoder"]
    own = model.state_dict()
    missing = [k for k in own if k.startswith(ENCODER_PREFIXES) and k not in state]
    wrong = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if missing or wrong:
        raise UserError(f"the pre-trained encoder does not fit this "
                        f"{type(model).__name__}: missing {missing[:3]}, "
                        f"unexpected or mis-shaped {wrong[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def resolve_encoder(name: Optional[Union[str, Path]]) -> Optional[Path]:
    """None / "none" -> None; "shipped" -> the package's pre-trained tiny encoder; else
    the path (checked to exist)."""
    if name is None or str(name).lower() == "none":
        return None
    path = SHIPPED_ENCODER if str(name) == "shipped" else Path(name)
    if not path.is_file():
        raise UserError(f"encoder file {str(path)!r} does not exist"
                        + (" (the package was installed without its weights/ folder)"
                           if str(name) == "shipped" else ""))
    return path


def read_encoder_file(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"encoder file {str(path)!r} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "encoder" not in payload:
        raise UserError(f"{str(path)!r} is not a `deconvnet pretrain` encoder file")
    return payload


def encoder_digest(state: Dict[str, torch.Tensor]) -> str:
    """sha256 over the encoder's tensors (names, dtypes, shapes, bytes), in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].contiguous().cpu()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}:".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    return h.hexdigest()


# ----------------------------------------------------------------------- crops

class ClassificationCrops:
    """Object and background crops of a VOC-style dataset, held in memory.

    ``batch(step, size)`` -> (images float32 (size,3,S,S), labels int64 (size,)):
    a pure function of (seed, step), so training is reproducible and resumable."""

    def __init__(self, dataset, input_size: int, seed: int = 0) -> None:
        from .data.voc import instance_records
        self.input_size, self.seed = int(input_size), int(seed)
        self.images, self.boxes = [], []
        items = []
        for i in range(len(dataset)):
            sample = dataset[i]
            self.images.append(sample.image)
            recs = instance_records(sample.label, sample.instances, sample.name)
            self.boxes.append(np.asarray([b for _, b, _ in recs], np.float64).reshape(-1, 4))
            items += [(i, j, cls) for j, (_, _, cls) in enumerate(recs)]
        if not items:
            raise ValueError("the pre-training set has no instances")
        self.items = np.asarray(items, np.int64)

    def _object(self, rng, row) -> Tuple[np.ndarray, list, int]:
        i, j, cls = (int(v) for v in row)
        x0, y0, x1, y1 = self.boxes[i][j]
        f = rng.uniform(*ENLARGE_RANGE)
        side_w, side_h = (x1 - x0) * f, (y1 - y0) * f
        cx = (x0 + x1) / 2 + rng.uniform(-0.1, 0.1) * (x1 - x0)
        cy = (y0 + y1) / 2 + rng.uniform(-0.1, 0.1) * (y1 - y0)
        return self.images[i], [cx - side_w / 2, cy - side_h / 2, cx + side_w / 2,
                                cy + side_h / 2], cls

    def _background(self, rng) -> Tuple[np.ndarray, list, int]:
        from .proposals import box_iou
        for _ in range(20):
            i = int(rng.integers(len(self.images)))
            height, width = self.images[i].shape[:2]
            w = rng.uniform(0.15, 0.7) * width
            h = float(np.clip(w * rng.uniform(0.6, 1.6), 4, height))
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, max(0.0, height - h))
            box = np.asarray([[x0, y0, x0 + w, y0 + h]])
            gt = self.boxes[i]
            if len(gt) == 0 or box_iou(box, gt).max() < 0.3:
                return self.images[i], box[0].tolist(), 0
        return self.images[i], box[0].tolist(), 0  # crowded image: rare, still mostly bg

    def batch(self, step: int, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from .data.transforms import crop_image, image_to_tensor
        rng = np.random.default_rng([self.seed, 7, int(step)])
        images, labels = [], []
        for _ in range(size):
            if rng.random() < BACKGROUND_FRACTION:
                image, box, cls = self._background(rng)
            else:
                image, box, cls = self._object(rng, self.items[rng.integers(len(self.items))])
            images.append(image_to_tensor(crop_image(image, box, self.input_size,
                                                     bool(rng.random() < 0.5))))
            labels.append(cls)
        return torch.stack(images), torch.as_tensor(labels, dtype=torch.int64)


# ----------------------------------------------------------------------- training

def pretrain_encoder(out: Union[str, Path], *, arch: str = "tiny",
                     num_images: int = DEFAULTS["num_images"], steps: int = DEFAULTS["steps"],
                     batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                     seed: int = DEFAULTS["seed"], data_dir: Optional[Union[str, Path]] = None,
                     progress: bool = True) -> dict:
    """Generate the pre-training set (``num_images`` synthetic images of seed
    PRETRAIN_DATA_SEED, under ``data_dir`` or a temporary folder), train
    EncoderClassifier for ``steps`` SGD steps (momentum 0.9, wd 5e-4, cosine decay from
    ``lr``), write ``out`` ({"encoder", "meta"}) and return the meta."""
    from .data.synthetic import generate_synthetic_voc
    from .data.voc import VOCSegmentation

    for name, value in (("num_images", num_images), ("steps", steps), ("batch_size", batch_size)):
        if int(value) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deconvnet_pretrain_") as tmp:
        root = Path(data_dir) if data_dir else Path(tmp) / "data"
        generate_synthetic_voc(root, num_train=num_images, num_val=0, seed=PRETRAIN_DATA_SEED,
                               progress=progress)
        torch.manual_seed(seed)
        model = EncoderClassifier(arch)
        crops = ClassificationCrops(VOCSegmentation(root, "train"), model.input_size, seed)
    data_seconds = time.perf_counter() - began
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    losses, correct, seen = [], 0, 0
    from .progress import progress_bar
    bar = progress_bar(range(steps), desc="pretrain", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        images, labels = crops.batch(step, batch_size)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if step >= steps - max(1, steps // 10):  # accuracy over the last 10% of steps
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    state = model.encoder_state()
    k = max(1, min(100, steps // 10))
    meta = {"arch": arch, "num_images": int(num_images), "data_seed": PRETRAIN_DATA_SEED,
            "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
            "seed": int(seed), "crops": len(crops.items),
            "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k,
            "train_accuracy_last_10pct": correct / max(1, seen),
            "data_seconds": round(data_seconds, 1),
            "seconds": round(time.perf_counter() - began, 1),
            "torch": str(torch.__version__), "threads": torch.get_num_threads(),
            "sha256": encoder_digest(state)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    torch.save({"encoder": state, "meta": meta}, tmp_out)
    tmp_out.replace(out)
    return meta


# ----------------------------------------------------------------------- CLI

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``deconvnet pretrain``."""
    parser.add_argument("--out", default="tiny_encoder.pt",
                        help="where to write the encoder (default %(default)s)")
    parser.add_argument("--num-images", type=int, default=DEFAULTS["num_images"],
                        help="synthetic pre-training images (default %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"],
                        help="SGD steps (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="crops per step (default %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"],
                        help="initial learning rate, cosine decay (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                        help="initialisation and crop-stream seed (default %(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="keep the generated pre-training set here (default: a "
                             "temporary folder)")
    parser.add_argument("--compare", default=None, metavar="FILE",
                        help="after training, check that the result equals FILE's encoder "
                             "bit for bit (e.g. the shipped one); exit 1 if not")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_cli(args: argparse.Namespace) -> int:
    meta = pretrain_encoder(args.out, num_images=args.num_images, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            data_dir=args.data_dir, progress=not args.no_progress)
    print(f"wrote {args.out}: {meta['steps']} steps in {meta['seconds']:.0f} s, loss "
          f"{meta['loss_first']:.3f} -> {meta['loss_last']:.3f}, train accuracy "
          f"{100 * meta['train_accuracy_last_10pct']:.1f}% (last 10% of steps), "
          f"sha256 {meta['sha256'][:16]}")
    if args.compare:
        other = read_encoder_file(args.compare)
        theirs = other["meta"].get("sha256") or encoder_digest(other["encoder"])
        if theirs != meta["sha256"]:
            print(f"DIFFERENT from {args.compare} (sha256 {theirs[:16]}); threads "
                  f"{meta['threads']} vs {other['meta'].get('threads')}, torch "
                  f"{meta['torch']} vs {other['meta'].get('torch')}")
            return 1
        print(f"identical to {args.compare}")
    return 0
