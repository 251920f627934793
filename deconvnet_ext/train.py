"""The trainer: DeconvNet in two stages (instance crops, then proposal crops, the
second starting from the first's weights) and FCN-8s on whole images, both by ``fit``.

``fit`` trains any model mapping (N,3,S,S) float images to (N,C,S,S) scores on any
dataset of (image float32 (3,S,S), label int64 (S,S)) pairs, label 255 ignored:
SGD (lr 0.01, momentum 0.9, weight decay 0.0005) with a step schedule, gradient
accumulation, seeded, tqdm progress, a JSON-lines log, atomic checkpoints, exact
``resume``, DDP under ``torchrun`` and optional SyncBatchNorm / AMP.

Exact resume: the data order is a function of the seed alone (epoch e visits the
dataset in the order of ``randperm`` seeded by (seed, e)), and every sample is produced
with torch / numpy / ``random`` seeded by (seed, its position in that stream), so its
random crop or mirror depends on nothing but its position. A checkpoint then only needs
the model, optimizer, scheduler, grad scaler, step and RNG states: resuming at step k
replays exactly what an uninterrupted run does from step k, with any number of data
workers. The same positions are sharded over DDP processes, so the stream is the same
for any world size.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .distributed import (DistContext, all_reduce_mean, cleanup_distributed,
                          convert_sync_batchnorm, setup_distributed)
from .errors import UserError
from .model import DeconvNet, FCN8s
from .parallel import worker_context
from .pretrain import load_encoder, resolve_encoder
from .progress import progress_bar

IGNORE_INDEX = 255
OnStep = Callable[[str, int, nn.Module, float], None]


@dataclass
class TrainConfig:
    """Settings of one training run (one stage).

    steps: optimizer steps; batch_size: samples per micro-batch per process;
    accumulate: micro-batches per optimizer step (the original: 8 x 8);
    lr_step: optimizer steps between decays by lr_gamma (None: one decay at 3/4 of
    ``steps``; 0: constant); checkpoint_every: steps between checkpoints (0: only at the
    end); amp: float16 autocast + grad scaling (CUDA only); sync_bn: synchronise BN
    statistics over processes; device: None picks CUDA when available; channels_last:
    model and inputs in channels_last memory format (the same maths, rounded
    differently: oneDNN's CPU convolutions of the tiny DeconvNet ran a training step
    1.03-1.15x faster so, FCN-8s's 0.87-0.94x; the demo's recipe, tuned NCHW, trained
    worse nets so on three seeds: see demo.DECONVNET_CHANNELS_LAST)."""
    steps: int = 300
    batch_size: int = 16
    accumulate: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0005
    lr_step: Optional[int] = None
    lr_gamma: float = 0.1
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 1
    num_workers: int = 0
    amp: bool = False
    sync_bn: bool = False
    device: Optional[str] = None
    progress: bool = True
    channels_last: bool = False

    def validate(self) -> "TrainConfig":
        for name in ("steps", "batch_size", "accumulate", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("checkpoint_every", "num_workers", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.lr_step is not None and (not isinstance(self.lr_step, int) or self.lr_step < 0):
            raise ValueError(f"lr_step must be None or a non-negative int, got {self.lr_step!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        return self

    @property
    def resolved_lr_step(self) -> int:
        """Steps between decays; a never-reached step size means a constant rate."""
        if self.lr_step is None:
            return max(1, (3 * self.steps) // 4)
        return self.lr_step if self.lr_step > 0 else 2 ** 62

    def fingerprint(self, world_size: int) -> Dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keys = ("batch_size", "accumulate", "lr", "momentum", "weight_decay", "lr_gamma",
                "seed", "amp", "sync_bn")
        out = {k: getattr(self, k) for k in keys}
        out.update(lr_step=self.resolved_lr_step, world_size=world_size)
        return out


@dataclass
class TrainResult:
    """What ``fit`` did: the trained (unwrapped) model, the step it started from and
    ended at, this run's per-step losses, wall time, and its output files."""
    model: nn.Module
    start_step: int
    steps: int
    losses: List[float]
    seconds: float
    checkpoint: Path
    final: Path

    @property
    def steps_per_second(self) -> float:
        done = self.steps - self.start_step
        return done / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------- data order

def _mix_seed(*values: int) -> int:
    """A 32-bit seed from several ints (numpy's SeedSequence: well mixed, stable)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0])


@contextlib.contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Run a block with torch (CPU), numpy and ``random`` seeded by ``seed``, restoring
    the caller's generator states afterwards."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class SampleStream(Dataset):
    """Position p -> the sample the seeded, endless data order puts at p.

    Epoch p // N visits ``dataset`` (N samples) in the order of a randperm seeded by
    (seed, epoch); the sample is produced under RNGs seeded by (seed, p)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self.size = len(dataset)
        if self.size == 0:
            raise ValueError("dataset is empty: nothing to train on")
        self._epoch, self._order = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.size)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, 0))
            self._epoch, self._order = epoch, torch.randperm(self.size, generator=g)
        return int(self._order[offset])

    def __getitem__(self, position: int):
        index = self.index(position)
        with _seeded_rngs(_mix_seed(self.seed, position, 1)):
            return self.dataset[index]


class MicroBatchPositions(Sampler):
    """Stream positions of this process's share of micro-batches [start, end): global
    micro-batch m holds positions [m*B*W, (m+1)*B*W), rank r takes the r-th B of them."""

    def __init__(self, start: int, end: int, batch_size: int, rank: int, world_size: int) -> None:
        self.start, self.end, self.batch_size = start, end, batch_size
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[List[int]]:
        for m in range(self.start, self.end):
            base = (m * self.world_size + self.rank) * self.batch_size
            yield list(range(base, base + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def collate_pairs(batch: Sequence[Tuple[Any, Any]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """[(image (3,S,S) float, label (S,S) int)] -> images (B,3,S,S) float32, labels
    (B,S,S) int64; a sample of another form is an error that says what it was."""
    images, labels = [], []
    for i, item in enumerate(batch):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"dataset items must be (image, label) pairs, item {i} is "
                            f"{type(item).__name__}")
        image, label = (torch.as_tensor(t) for t in item)
        if image.dim() != 3 or image.shape[0] != 3 or label.shape != image.shape[1:]:
            raise ValueError(f"dataset item {i}: expected image (3,S,S) and label (S,S), got "
                             f"{tuple(image.shape)} and {tuple(label.shape)}")
        images.append(image.float())
        labels.append(label.long())
    return torch.stack(images), torch.stack(labels)


# ----------------------------------------------------------------------- loss, state

def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Pixel-wise cross-entropy averaged over labelled pixels (255 ignored).
    logits (N,C,H,W) float, labels (N,H,W) int64. A batch with no labelled pixel gives
    0 (still connected to the graph) rather than NaN."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp_min(1)


def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU, CUDA), numpy and ``random`` generator states as weights-only data."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached_gaussian": float(np_state[4])},
             "random": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of ``capture_rng_state``."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log records past ``last_step`` (work lost to an interruption)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= last_step]
    path.write_text("".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------- the loop

def fit(model: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: Union[str, Path],
        *, resume: bool = False, stage: str = "train", on_step: Optional[OnStep] = None,
        meta: Optional[Dict[str, Any]] = None) -> TrainResult:
    """Train ``model`` on ``dataset`` for ``config.steps`` optimizer steps.

    Writes ``out_dir``/checkpoint.pt (every ``checkpoint_every`` steps and at the end;
    training state included), ``out_dir``/model.pt (final weights, loadable by
    ``checkpoint.load_model``) and ``out_dir``/log.jsonl (one JSON object per step:
    stage, step, loss, lr, time). With ``resume`` it continues from checkpoint.pt when
    there is one (refusing one written with different settings). ``on_step(stage, step,
    model, loss)`` runs after every step on every process. Under ``torchrun`` it trains
    with DistributedDataParallel."""
    config = config.validate()
    ctx = setup_distributed(config.device)
    return _fit(model, dataset, config, Path(out_dir), resume, stage, on_step, meta, ctx)


def _fit(model: nn.Module, dataset: Dataset, config: TrainConfig, out_dir: Path, resume: bool,
         stage: str, on_step: Optional[OnStep], meta: Optional[Dict[str, Any]],
         ctx: DistContext) -> TrainResult:
    device = ctx.device
    if config.amp and device.type != "cuda":
        raise ValueError(f"amp=True needs a CUDA device, got device {str(device)!r}")
    checkpoint_path, final_path, log_path = (out_dir / "checkpoint.pt", out_dir / "model.pt",
                                             out_dir / "log.jsonl")
    fingerprint = config.fingerprint(ctx.world_size)
    meta = dict(meta if meta is not None else model.meta())
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    payload, start = None, 0
    if resume and checkpoint_path.exists():
        payload = load_checkpoint(checkpoint_path)
        saved = {k: payload["meta"].get(k) for k in ("kind", "arch", "num_classes")}
        if saved != {k: meta.get(k) for k in saved}:
            raise CheckpointError(f"{checkpoint_path}: holds a different network {saved!r}, "
                                  f"cannot resume a {type(model).__name__} {meta!r}")
        if payload.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{checkpoint_path}: written with settings {payload.get('fingerprint')!r}, "
                f"cannot resume with {fingerprint!r}")
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{checkpoint_path}: its weights do not fit this "
                                  f"{type(model).__name__} ({payload['meta']!r})") from exc
        start = int(payload["step"])
    if config.sync_bn and ctx.distributed:
        model = convert_sync_batchnorm(model, device)
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.resolved_lr_step,
                                                config.lr_gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
    elapsed_before = 0.0
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng_state(payload["rng"])
        elapsed_before = float(payload.get("elapsed", 0.0))
    else:
        torch.manual_seed(config.seed)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if start == 0:
            log_path.write_text("")
        else:
            _trim_log(log_path, start)

    acc = config.accumulate
    loader = DataLoader(SampleStream(dataset, config.seed),
                        batch_sampler=MicroBatchPositions(start * acc, config.steps * acc,
                                                          config.batch_size, ctx.rank,
                                                          ctx.world_size),
                        num_workers=config.num_workers, collate_fn=collate_pairs,
                        # not fork: the model's set-up has started torch's thread pools
                        multiprocessing_context=(worker_context() if config.num_workers
                                                 else None),
                        pin_memory=device.type == "cuda")
    batches = iter(loader)
    bar = progress_bar(total=config.steps, initial=start, desc=stage, unit="step",
                       disable=not (config.progress and ctx.is_main))
    losses: List[float] = []
    began = time.perf_counter()

    def save(path: Path, with_state: bool, step: int) -> None:
        if not ctx.is_main:
            return
        extra: Dict[str, Any] = {"step": step, "stage": stage}
        if with_state:
            extra.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         scaler=scaler.state_dict(), rng=capture_rng_state(),
                         fingerprint=fingerprint,
                         elapsed=elapsed_before + time.perf_counter() - began)
        save_checkpoint(path, model, meta, **extra)

    for step in range(start, config.steps):
        net.train()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for a in range(acc):
            images, labels = next(batches)
            images = images.to(device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            sync = net.no_sync() if ctx.distributed and a < acc - 1 else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=torch.float16, enabled=config.amp):
                    logits = net(images)
                loss = segmentation_loss(logits.float(), labels)
                scaler.scale(loss / acc).backward()
            step_loss += loss.detach()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        done = step + 1
        mean_loss = float(all_reduce_mean(step_loss / acc, ctx))
        losses.append(mean_loss)
        if ctx.is_main and (done % config.log_every == 0 or done == config.steps):
            record = {"stage": stage, "step": done, "loss": mean_loss, "lr": lr,
                      "time": round(elapsed_before + time.perf_counter() - began, 3)}
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2g}")
        if done == config.steps or (config.checkpoint_every and done % config.checkpoint_every == 0):
            save(checkpoint_path, True, done)
            if ctx.distributed:
                torch.distributed.barrier()
        if on_step is not None:
            on_step(stage, done, model, mean_loss)
    bar.close()
    save(final_path, False, config.steps)
    if ctx.distributed:
        torch.distributed.barrier()
    return TrainResult(model, start, config.steps, losses, time.perf_counter() - began,
                       checkpoint_path, final_path)


# ----------------------------------------------------------------------- whole images

class WholeImages(Dataset):
    """VOC-style samples (``.image`` uint8 (H,W,3), ``.label`` uint8 (H,W)) as fixed-size
    pairs for FCN-8s: scaled (bilinear; labels nearest) so the longer side is ``size``,
    padded to size x size (image with zeros = the mean colour after normalisation, label
    with 255), mirrored with probability 1/2 when ``mirror``.
    Items: (image float32 (3,size,size), label int64 (size,size))."""

    def __init__(self, dataset: Dataset, size: int, mirror: bool = True) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        self.dataset, self.size, self.mirror = dataset, size, mirror

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from .data.transforms import image_to_tensor

        sample = self.dataset[index]
        image = image_to_tensor(sample.image)
        label = torch.from_numpy(np.asarray(sample.label, dtype=np.int64))
        H, W = label.shape
        scale = self.size / max(H, W)
        h, w = max(1, min(self.size, round(H * scale))), max(1, min(self.size, round(W * scale)))
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
        out_image = image.new_zeros(3, self.size, self.size)
        out_label = torch.full((self.size, self.size), IGNORE_INDEX, dtype=torch.int64)
        out_image[:, :h, :w] = image
        out_label[:h, :w] = label
        if self.mirror and bool(torch.rand(()) < 0.5):
            out_image, out_label = out_image.flip(-1), out_label.flip(-1)
        return out_image, out_label


# ----------------------------------------------------------------------- entry points

DataArg = Union[str, Path, Dataset, Tuple[Dataset, Dataset]]


@dataclass
class TrainSummary:
    """A finished training: the model file (``checkpoint.load_model`` reads it), the
    trained model, and each stage's TrainResult."""
    path: Path
    model: nn.Module
    stages: List[TrainResult] = field(default_factory=list)


def _voc(data: Union[str, Path, Dataset], split: str) -> Dataset:
    if isinstance(data, (str, Path)):
        from .data.voc import VOCSegmentation
        return VOCSegmentation(data, split)
    return data


def _final_file(out_dir: Path, name: str, model: nn.Module, stages: List[TrainResult],
                ctx: DistContext) -> Path:
    path = out_dir / name
    if ctx.is_main:
        meta = dict(model.meta())
        meta["trained_steps"] = {r.final.parent.name: r.steps for r in stages}
        save_checkpoint(path, model, meta)
    if ctx.distributed:
        torch.distributed.barrier()  # every process may read it once this returns
    return path


def train_deconvnet(data: DataArg, out_dir: Union[str, Path], *, arch: str = "tiny",
                    num_classes: int = 21, pool_impl: str = "ext", stage1_steps: int = 300,
                    stage2_steps: int = 300, config: Optional[TrainConfig] = None,
                    split: str = "train", vgg_weights: Optional[Union[str, Path]] = None,
                    crop_options: Optional[Dict[str, Any]] = None, resume: bool = False,
                    on_step: Optional[OnStep] = None,
                    encoder: Optional[Union[str, Path]] = None,
                    stage2_lr: Optional[float] = None,
                    stage1_lr_step: Optional[int] = None) -> TrainSummary:
    """DeconvNet's two-stage training.

    data: a VOC root (read with data.voc.VOCSegmentation(root, split)), a VOC-style
    dataset (wrapped in data.crops.InstanceCrops stage 1 then 2), or a pair of ready
    (stage-1, stage-2) datasets of (image (3,S,S), label (S,S)) pairs. Stage 1 trains
    from scratch (or the encoder from ``vgg_weights``); stage 2 starts from stage 1's
    weights with a fresh optimizer. Shared settings come from ``config`` (its ``steps``
    is replaced by stage1_steps / stage2_steps). ``crop_options`` go to InstanceCrops
    (default cache_dir: out_dir/proposal_cache). Writes out_dir/stage1/, out_dir/stage2/
    and the final out_dir/deconvnet.pt. ``encoder``: a ``deconvnet pretrain`` file whose
    encoder (convs, fc6, fc7) initialises the network (after ``vgg_weights``).
    ``stage2_lr``: stage 2's base learning rate (None: ``config.lr``, as stage 1) -- stage
    2 fine-tunes stage 1's network, and a rate that suits training it may undo it.
    ``stage1_lr_step``: stage 1's steps between lr decays (None: ``config.lr_step``; 0:
    constant), for a stage 1 that wants its decay earlier than stage 2 does."""
    config = config or TrainConfig()
    # checked before the crops and stage 1 are built, not after
    if stage2_lr is not None and not stage2_lr > 0:
        raise ValueError(f"stage2_lr must be > 0, got {stage2_lr}")
    if stage1_lr_step is not None and (not isinstance(stage1_lr_step, int)
                                       or stage1_lr_step < 0):
        raise ValueError(f"stage1_lr_step must be None or a non-negative int, "
                         f"got {stage1_lr_step!r}")
    out_dir = Path(out_dir)
    ctx = setup_distributed(config.device)
    torch.manual_seed(config.seed)
    model = DeconvNet(num_classes=num_classes, arch=arch, pool_impl=pool_impl)
    if vgg_weights is not None:
        model.load_vgg16(vgg_weights)
    if encoder is not None:
        load_encoder(model, encoder)
    if isinstance(data, (tuple, list)):
        stage_data = list(data)
    else:
        from .data.crops import InstanceCrops
        voc = _voc(data, split)
        options = dict(crop_options or {})
        # stage 2's proposals are computed once and reused (by --resume too)
        options.setdefault("cache_dir", str(out_dir / "proposal_cache"))
        options.setdefault("progress", config.progress and ctx.is_main)
        stage_data = [InstanceCrops(voc, model.input_size, stage=s, **options) for s in (1, 2)]
    if ctx.is_main:
        print(f"DeconvNet ({arch}): {model.num_parameters:,} parameters; "
              f"stage 1 on {len(stage_data[0])} crops, stage 2 on {len(stage_data[1])}")
    rates = (config.lr, config.lr if stage2_lr is None else float(stage2_lr))
    decays = (config.lr_step if stage1_lr_step is None else stage1_lr_step, config.lr_step)
    results = []
    for number, (dataset, steps, lr, lr_step) in enumerate(
            zip(stage_data, (stage1_steps, stage2_steps), rates, decays), 1):
        result = fit(model, dataset,
                     dataclasses.replace(config, steps=steps, lr=lr, lr_step=lr_step),
                     out_dir / f"stage{number}", resume=resume, stage=f"stage{number}",
                     on_step=on_step)
        results.append(result)
        model = result.model
    return TrainSummary(_final_file(out_dir, "deconvnet.pt", model, results, ctx), model, results)


def train_fcn(data: Union[str, Path, Dataset], out_dir: Union[str, Path], *, arch: str = "tiny",
              num_classes: int = 21, steps: int = 300, image_size: Optional[int] = None,
              config: Optional[TrainConfig] = None, split: str = "train",
              vgg_weights: Optional[Union[str, Path]] = None, resume: bool = False,
              on_step: Optional[OnStep] = None,
              encoder: Optional[Union[str, Path]] = None) -> TrainSummary:
    """FCN-8s on whole images: a VOC root or VOC-style dataset (wrapped in WholeImages of
    ``image_size``, default twice the arch's crop size), or a ready dataset of
    (image, label) pairs (used as is). Writes out_dir/fcn/ and the final
    out_dir/fcn8s.pt. ``encoder``: as for train_deconvnet (the same file gives both
    networks the same encoder)."""
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    ctx = setup_distributed(config.device)
    torch.manual_seed(config.seed)
    model = FCN8s(num_classes=num_classes, arch=arch)
    if vgg_weights is not None:
        model.load_vgg16(vgg_weights)
    if encoder is not None:
        load_encoder(model, encoder)
    dataset = _voc(data, split)
    if len(dataset) and hasattr(dataset[0], "image"):  # VOC samples, not ready pairs
        dataset = WholeImages(dataset, image_size or 2 * model.input_size)
    if ctx.is_main:
        print(f"FCN-8s ({arch}): {model.num_parameters:,} parameters; {len(dataset)} images")
    result = fit(model, dataset, dataclasses.replace(config, steps=steps), out_dir / "fcn",
                 resume=resume, stage="fcn8s", on_step=on_step)
    return TrainSummary(_final_file(out_dir, "fcn8s.pt", result.model, [result], ctx),
                        result.model, [result])


# ----------------------------------------------------------------------- CLI

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``deconvnet train``."""
    parser.add_argument("--data", required=True, help="VOC2012-layout root (e.g. from `deconvnet synth`)")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, logs, models)")
    parser.add_argument("--model", choices=("deconvnet", "fcn8s", "both"), default="deconvnet")
    parser.add_argument("--arch", choices=("tiny", "vgg16"), default="tiny")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--split", default="train")
    parser.add_argument("--stage1-steps", type=int, default=300, help="DeconvNet stage 1 steps")
    parser.add_argument("--stage2-steps", type=int, default=300, help="DeconvNet stage 2 steps")
    parser.add_argument("--fcn-steps", type=int, default=300, help="FCN-8s steps")
    parser.add_argument("--fcn-image-size", type=int, default=None,
                        help="FCN-8s whole-image training size (default: 2x the crop size)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per micro-batch per process")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step (original: 8)")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--stage2-lr", type=float, default=None,
                        help="DeconvNet stage 2's learning rate (default: --lr)")
    parser.add_argument("--stage1-lr-step", type=int, default=None,
                        help="DeconvNet stage 1's steps between x0.1 decays (default: "
                             "--lr-step)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=0.0005)
    parser.add_argument("--lr-step", type=int, default=None,
                        help="steps between x0.1 decays (default: one at 3/4; 0: constant)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--proposals", choices=("selective_search", "jitter"),
                        default="selective_search",
                        help="stage-2 crop boxes: selective search (cached under --out) or "
                             "jittered ground-truth boxes (fast)")
    parser.add_argument("--vgg-weights", default=None,
                        help="local torchvision vgg16 / vgg16_bn state-dict file for the encoder")
    parser.add_argument("--encoder", default=None,
                        help="a `deconvnet pretrain` encoder file to initialise the encoder "
                             "('shipped': the package's pre-trained tiny encoder)")
    parser.add_argument("--pool-impl", choices=("ext", "torch"), default="ext")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA if available)")
    parser.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    parser.add_argument("--sync-bn", action="store_true", help="synchronise BN across processes")
    parser.add_argument("--channels-last", action="store_true",
                        help="train in channels_last memory format (faster for DeconvNet "
                             "on CPU; see TrainConfig)")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    """``deconvnet train``: train DeconvNet (two stages) and/or FCN-8s; prints where the
    models went. Bad settings raise UserError."""
    config = TrainConfig(batch_size=args.batch_size, accumulate=args.accumulate, lr=args.lr,
                         momentum=args.momentum, weight_decay=args.weight_decay,
                         lr_step=args.lr_step, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
                         amp=args.amp, sync_bn=args.sync_bn, device=args.device,
                         progress=not args.no_progress, channels_last=args.channels_last)
    ctx = None
    encoder = resolve_encoder(args.encoder)
    try:
        config.validate()
        ctx = setup_distributed(config.device)  # one process group for the whole command
        summaries = []
        if args.model in ("deconvnet", "both"):
            summaries.append(train_deconvnet(
                args.data, args.out, arch=args.arch, num_classes=args.num_classes,
                pool_impl=args.pool_impl, stage1_steps=args.stage1_steps,
                stage2_steps=args.stage2_steps, config=config, split=args.split,
                vgg_weights=args.vgg_weights, resume=args.resume,
                crop_options={"proposals": args.proposals}, encoder=encoder,
                stage2_lr=args.stage2_lr, stage1_lr_step=args.stage1_lr_step))
        if args.model in ("fcn8s", "both"):
            summaries.append(train_fcn(
                args.data, args.out, arch=args.arch, num_classes=args.num_classes,
                steps=args.fcn_steps, image_size=args.fcn_image_size, config=config,
                split=args.split, vgg_weights=args.vgg_weights, resume=args.resume,
                encoder=encoder))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    finally:
        if ctx is not None:
            cleanup_distributed(ctx)
    if not ctx.is_main:
        return 0
    for summary in summaries:
        for result in summary.stages:
            first = f"{result.losses[0]:.4f}" if result.losses else "-"
            last = f"{result.losses[-1]:.4f}" if result.losses else "-"
            print(f"{result.final.parent.name}: steps {result.start_step}->{result.steps}, "
                  f"loss {first} -> {last}, {result.steps_per_second:.2f} steps/s")
        print(f"wrote {summary.path}")
    return 0
