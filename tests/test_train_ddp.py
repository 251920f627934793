"""Two CPU processes (gloo) under DistributedDataParallel: both keep identical weights
after every step; with SyncBatchNorm the pair trains like one process on the combined
batch; the CPU SyncBatchNorm matches BatchNorm2d on the whole batch."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import deconvnet_ext as dx
from deconvnet_ext.distributed import CPUSyncBatchNorm2d, cleanup_distributed, setup_distributed
from deconvnet_ext.train import TrainConfig, fit
from test_train_support import NUM_CLASSES, Squares, one_thread  # noqa: F401 (fixture)

STEPS = 3


def _config(batch_size, sync_bn):
    return TrainConfig(steps=STEPS, batch_size=batch_size, accumulate=2, seed=1,
                       checkpoint_every=0, sync_bn=sync_bn, progress=False, device="cpu")


def _model():
    torch.manual_seed(0)
    return dx.DeconvNet(num_classes=NUM_CLASSES, arch="tiny")


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank, tmp, port):
    torch.set_num_threads(1)
    # torchrun's environment: setup_distributed creates the group from it, and the
    # later fit() calls in this process reuse that group
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    ctx = setup_distributed("cpu")
    assert ctx.owns_group and ctx.world_size == 2 and dist.get_backend() == "gloo"
    try:
        # 1. the CPU SyncBatchNorm: each process holds half of one batch
        torch.manual_seed(7)
        x = torch.randn(4, 3, 5, 5)
        bn = CPUSyncBatchNorm2d(3).train()
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        part = x[2 * rank:2 * rank + 2].clone().requires_grad_(True)
        y = bn(part)
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        torch.save({"y": y.detach(), "grad": part.grad, "running_mean": bn.running_mean,
                    "running_var": bn.running_var, "weight_grad": bn.weight.grad},
                   f"{tmp}/bn{rank}.pt")
        # 2. DDP training, plain BN then SyncBatchNorm
        for sync_bn in (False, True):
            snaps = []
            fit(_model(), Squares(12), _config(2, sync_bn), f"{tmp}/run{int(sync_bn)}",
                on_step=lambda stage, step, model, loss: snaps.append(_snapshot(model)))
            torch.save(snaps, f"{tmp}/snaps{int(sync_bn)}_{rank}.pt")
        assert dist.is_initialized()
    finally:
        cleanup_distributed(ctx)
    assert not dist.is_initialized()


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path):
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(str(tmp_path), port), nprocs=2, join=True)

    # SyncBatchNorm == BatchNorm2d over the combined batch
    torch.manual_seed(7)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    bn = torch.nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    y = bn(x)
    (y * torch.cat([torch.arange(y[:2].numel()).view_as(y[:2])] * 2)).sum().backward()
    parts = [torch.load(tmp_path / f"bn{r}.pt") for r in (0, 1)]
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts[0]["weight_grad"] + parts[1]["weight_grad"], bn.weight.grad,
                               rtol=1e-4, atol=1e-4)
    for p in parts:
        torch.testing.assert_close(p["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)

    for sync_bn in (0, 1):
        r0 = torch.load(tmp_path / f"snaps{sync_bn}_0.pt")
        r1 = torch.load(tmp_path / f"snaps{sync_bn}_1.pt")
        assert len(r0) == len(r1) == STEPS
        params = {name for name, _ in _model().named_parameters()}
        for step, (a, b) in enumerate(zip(r0, r1), 1):
            for name in a:
                # parameters always agree; BN running stats too once they are synchronised
                if name in params or sync_bn:
                    assert torch.equal(a[name], b[name]), (sync_bn, step, name)
        assert (tmp_path / f"run{sync_bn}" / "model.pt").exists()

    # with SyncBatchNorm, 2 processes x 2 samples train like 1 process x 4 samples: the
    # same step, up to float rounding (compared after step 1: fc7's BN normalises 4
    # values per channel, so later steps amplify rounding differences chaotically)
    single = []
    fit(_model(), Squares(12), _config(4, False), tmp_path / "single",
        on_step=lambda stage, step, model, loss: single.append(_snapshot(model)))
    r0 = torch.load(tmp_path / "snaps1_0.pt")
    initial = _model().state_dict()
    for name, value in single[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(r0[0][name], value, rtol=1e-4, atol=1e-4, msg=name)
            assert not torch.equal(value, initial[name]) or name.endswith("bias")
