"""Inference streamed over a whole split, the CPU-bound stages in worker processes.

Per image: decode + proposals (a worker) -> crops through the network, aggregation,
softmax, ensemble (the main process, on the GPU when there is one) -> dense CRF (a
worker). With ``workers`` >= 2 the three overlap: while the main process runs the
network on image i, workers decode and propose for the next images and refine earlier
ones. At most ``workers + 1`` images wait for or sit in each worker stage, so memory
stays bounded whatever the split's size, and results come out in the order of
``indices``.

The numbers do not depend on how the work is spread: every stage is a deterministic
function of its own image (``infer.network_rows`` runs each image's crops in their own
batches), so ``workers`` = 1 (everything in this process, one image after another) and
any other count give the same bits, and so does any sharding of the split across
``torchrun`` ranks (``RankGather`` brings each rank's per-image records to rank 0).
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .infer import CRF_INPUT, InferenceConfig, StageTimer, network_rows, proposal_boxes, crf_rows


@dataclass
class ImageSource:
    """What the workers read, by index: a dataset whose ``[i]`` is a ``data.voc.Sample``
    (a VOC split, for ``deconvnet eval``) or image files (``deconvnet predict``: samples
    named by the file's stem, with no label). Must pickle (workers may be spawned)."""
    dataset: Any = None
    paths: Optional[Sequence[str]] = None

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else len(self.paths or ())

    def load(self, index: int):
        from .data.voc import Sample, read_rgb_image
        if self.dataset is not None:
            return self.dataset[index]
        path = Path(self.paths[index])  # type: ignore[index]
        return Sample(path.stem, read_rgb_image(path), None, None)


@dataclass
class _Job:
    """What every worker task needs (given to the workers once)."""
    source: ImageSource
    config: InferenceConfig
    wanted: Tuple[str, ...]
    need_boxes: bool


def argmax_mask(probs: np.ndarray) -> np.ndarray:
    """Class ids uint8 (H,W) of probabilities (C,H,W) (the first maximum on ties)."""
    return probs.argmax(axis=0).astype(np.uint8)


def _prepare(job: _Job, index: int):
    """Worker stage A: decode image ``index`` and compute its proposals."""
    start = time.perf_counter()
    sample = job.source.load(index)
    decoded = time.perf_counter()
    boxes = proposal_boxes(sample.image, job.config).numpy() if job.need_boxes else None
    return sample, boxes, {"decode": decoded - start,
                           "proposals": time.perf_counter() - decoded}


def _refine(job: _Job, image: np.ndarray, rows: Dict[str, np.ndarray]):
    """Worker stage B: the "+CRF" rows of one image, as class-id masks."""
    start = time.perf_counter()
    refined = crf_rows(rows, image, job.config, job.wanted)
    masks = {variant: argmax_mask(probs) for variant, probs in refined.items()}
    return masks, {"crf": time.perf_counter() - start}


class StreamedPredictions:
    """Iterate ``(index, sample, {variant: uint8 (H,W) class ids})`` over ``indices`` of
    ``source``, in that order, for the ``wanted`` rows (``infer.wanted_variants``).

    workers <= 1: every stage in this process. workers >= 2: that many worker processes
    for decoding, proposals and the CRF (``parallel.WorkerPool``), the network in this
    process, at ``network_threads`` torch CPU threads (None: as set; the bits of
    torch's CPU convolutions depend on the thread count, on nothing else here).
    ``timer.seconds`` holds the wall seconds of each stage summed over images (worker
    stages as timed inside the workers)."""

    def __init__(self, source: ImageSource, indices: Sequence[int],
                 deconvnet: Optional[torch.nn.Module], fcn: Optional[torch.nn.Module],
                 config: InferenceConfig, wanted: Sequence[str], workers: int = 1,
                 network_threads: Optional[int] = None) -> None:
        self.indices = list(indices)
        self.deconvnet, self.fcn, self.config = deconvnet, fcn, config
        self.wanted = tuple(wanted)
        self.workers = int(workers)
        self.network_threads = network_threads
        need_boxes = any(v != "FCN-8s" for v in self.wanted)
        self.job = _Job(source, config, self.wanted, need_boxes)
        self.crf_wanted = [v for v in self.wanted if v in CRF_INPUT]
        self.timer = StageTimer()
        self.worker_pids: List[int] = []

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Tuple[int, Any, Dict[str, np.ndarray]]]:
        if self.workers <= 1 or not self.indices:
            return self._with_threads(self._in_process())
        return self._with_threads(self._with_workers())

    def _with_threads(self, stages):
        """Run ``stages`` with torch at ``network_threads`` CPU threads, restored after."""
        previous = torch.get_num_threads()
        if self.network_threads:
            torch.set_num_threads(int(self.network_threads))
        try:
            yield from stages
        finally:
            stages.close()  # stops the workers when the consumer stops early
            torch.set_num_threads(previous)

    # ------------------------------------------------------------------ the stages
    def _network(self, sample, boxes) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """(masks of the rows without CRF, the CRF rows' input probabilities)."""
        rows = network_rows(sample.image, self.deconvnet, self.fcn, self.config, self.wanted,
                            None if boxes is None else torch.from_numpy(boxes), self.timer)
        masks = {v: argmax_mask(rows[v]) for v in self.wanted if v not in CRF_INPUT}
        crf_inputs = {CRF_INPUT[v]: rows[CRF_INPUT[v]] for v in self.crf_wanted}
        return masks, crf_inputs

    def _ordered(self, masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return {v: masks[v] for v in self.wanted}

    def _in_process(self):
        for index in self.indices:
            sample, boxes, seconds = _prepare(self.job, index)
            self.timer.add(seconds)
            masks, crf_inputs = self._network(sample, boxes)
            if self.crf_wanted:
                refined, seconds = _refine(self.job, sample.image, crf_inputs)
                self.timer.add(seconds)
                masks.update(refined)
            yield index, sample, self._ordered(masks)

    def _with_workers(self):
        from .parallel import WorkerPool

        limit = self.workers + 1  # images waiting for / inside each worker stage
        with WorkerPool(self.workers, self.job) as pool:
            self.worker_pids = pool.pids
            preparing: deque = deque()  # (index, task id), in order
            refining: deque = deque()   # [index, sample, masks, task id or None], in order
            finished: Dict[int, Any] = {}
            position = 0
            while position < len(self.indices) or preparing or refining:
                while position < len(self.indices) and len(preparing) < limit:
                    index = self.indices[position]
                    preparing.append((index, pool.submit(_prepare, index)))
                    position += 1
                if refining and (refining[0][3] is None or refining[0][3] in finished):
                    index, sample, masks, task = refining.popleft()
                    if task is not None:
                        refined, seconds = finished.pop(task)
                        self.timer.add(seconds)
                        masks.update(refined)
                    yield index, sample, self._ordered(masks)
                elif preparing and preparing[0][1] in finished and len(refining) < limit:
                    index, task = preparing.popleft()
                    sample, boxes, seconds = finished.pop(task)
                    self.timer.add(seconds)
                    masks, crf_inputs = self._network(sample, boxes)
                    task = (pool.submit(_refine, sample.image, crf_inputs)
                            if self.crf_wanted else None)
                    refining.append([index, sample, masks, task])
                else:
                    task, value = pool.next_result()
                    finished[task] = value


# ----------------------------------------------------------------------------- ranks

def shard(total: int, rank: int, world_size: int) -> range:
    """The indices rank ``rank`` of ``world_size`` handles: every world_size-th from
    ``rank`` (shards differ in length by at most one)."""
    return range(rank, total, world_size)


class RankGather:
    """Per-image records of every rank, handed to ``consume`` on rank 0.

    Each rank ``add``s one record per image it computed; rank 0 consumes its own at
    once and the other ranks' in rounds: after every ``every`` local images each rank
    joins a ``gather_object`` (bounded memory: at most ``every`` records per rank wait),
    and ``finish`` runs the rounds left so every rank makes the same number of calls.
    Without a process group, ``add`` is ``consume``."""

    def __init__(self, total: int, consume: Callable[[Any], None], every: int = 8) -> None:
        import torch.distributed as dist
        self.consume = consume
        self.every = max(1, int(every))
        self.distributed = dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        longest = math.ceil(total / self.world_size)
        self.rounds = math.ceil(longest / self.every) if self.distributed else 0
        self.done_rounds = 0
        self.count = 0
        self.outbox: List[Any] = []

    def add(self, record: Any) -> None:
        if self.rank == 0:
            self.consume(record)
        else:
            self.outbox.append(record)
        if not self.distributed:
            return
        self.count += 1
        if self.count % self.every == 0:
            self._round()

    def _round(self) -> None:
        import torch.distributed as dist
        gathered: Optional[List[Any]] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(self.outbox, gathered, dst=0)
        self.outbox = []
        self.done_rounds += 1
        if self.rank == 0:
            for records in gathered[1:]:  # type: ignore[index]
                for record in records:
                    self.consume(record)

    def finish(self) -> None:
        while self.done_rounds < self.rounds:
            self._round()


def all_reduce_sum(array: np.ndarray) -> np.ndarray:
    """The elementwise sum of ``array`` over all ranks (itself without a process
    group); integer arrays stay exact (int64)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return array
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    dist.all_reduce(tensor)
    return tensor.cpu().numpy()
