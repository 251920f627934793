"""The DeconvNet training step shared by test_train_step.py (timing) and
test_memory.py (peak memory): one SGD step (the paper's lr 0.01, momentum 0.9,
weight decay 0.0005) on a random batch, with the pools and unpools either
deconvnet_ext's ops (pool_impl="ext") or torch's (pool_impl="torch")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import harness

POOL_IMPL_OF = {"ours": "ext", "torch": "torch"}


@dataclass(frozen=True)
class TrainCase:
    device: str
    arch: str
    batch: int

    @property
    def id(self) -> str:
        return f"{self.device}-{self.arch}-b{self.batch}"


def train_cases() -> list:
    """tiny on CPU; the paper's vgg16 (224x224 crops, batch 16) on CUDA."""
    params = [pytest.param(TrainCase("cpu", "tiny", 8), id="cpu-tiny-b8")]
    case = TrainCase("cuda", "vgg16", 16)
    params.append(pytest.param(case, id=case.id, marks=[
        pytest.mark.cuda, pytest.mark.skipif(not harness.HAS_CUDA, reason="needs a CUDA device")]))
    return params


def build_model(case: TrainCase, pool_impl: str) -> torch.nn.Module:
    """A DeconvNet with seed-0 weights (the same for either pool_impl). On the meta
    device it is built there directly (shapes only, no weights to initialise)."""
    import deconvnet_ext as dx
    torch.manual_seed(0)
    try:
        if case.device == "meta":
            with torch.device("meta"):
                return dx.DeconvNet(num_classes=21, arch=case.arch, pool_impl=pool_impl).train()
        model = dx.DeconvNet(num_classes=21, arch=case.arch, pool_impl=pool_impl)
    except NotImplementedError as exc:
        pytest.skip(f"dx.DeconvNet is not on main yet ({exc})")
    return model.to(case.device).train()


def batch(case: TrainCase, input_size: int):
    """(images (N,3,S,S) float32, labels (N,S,S) int64 with some 255 = ignore)."""
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(case.batch, 3, input_size, input_size, generator=gen)
    labels = torch.randint(0, 21, (case.batch, input_size, input_size), generator=gen)
    labels[:, :4] = 255
    return images.to(case.device), labels.to(case.device)


def train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable:
    """A closure running one training step; returns the step's loss (detached)."""
    from deconvnet_ext.train import segmentation_loss
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = segmentation_loss(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step
