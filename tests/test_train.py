"""The trainer on one process: loss falls, exact resume, logs, checkpoints, the
two-stage DeconvNet path and FCN-8s."""
import json

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import CheckpointError, load_checkpoint, load_model
from deconvnet_ext.train import (SampleStream, TrainConfig, fit, segmentation_loss,
                                 train_deconvnet, train_fcn)
from test_train_support import NUM_CLASSES, Squares, one_thread  # noqa: F401 (fixture)


def _config(**kw):
    base = dict(steps=6, batch_size=2, accumulate=2, lr=0.01, seed=3, checkpoint_every=2,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _model(kind="deconvnet", seed=0):
    torch.manual_seed(seed)
    if kind == "deconvnet":
        return dx.DeconvNet(num_classes=NUM_CLASSES, arch="tiny")
    return dx.FCN8s(num_classes=NUM_CLASSES, arch="tiny")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_loss_falls_in_a_few_dozen_steps(tmp_path, kind):
    result = fit(_model(kind), Squares(24), _config(steps=30, batch_size=4, accumulate=1,
                                                    checkpoint_every=0), tmp_path)
    first, last = result.losses[0], sum(result.losses[-5:]) / 5
    assert abs(first - torch.log(torch.tensor(float(NUM_CLASSES))).item()) < 0.3  # ~uniform at init
    assert last < 0.6 * first, result.losses
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert all({"stage", "step", "loss", "lr", "time"} <= r.keys() for r in records)
    assert records[0]["lr"] == 0.01 and records[-1]["lr"] == pytest.approx(0.001)  # decay at 3/4
    model, meta = load_model(tmp_path / "model.pt")
    assert meta["kind"] == kind
    for a, b in zip(model.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


class _Interrupt(Exception):
    pass


def _crash_at(step_to_crash):
    def on_step(stage, step, model, loss):
        if step == step_to_crash:
            raise _Interrupt
    return on_step


# The resumed run's DataLoader workers start after torch has run: a fork then can hang
# the child, and Python 3.12 warned here ("multi-threaded, use of fork()") in full-suite
# runs until the trainer started them with parallel.worker_context; now that is an error.
@pytest.mark.filterwarnings("error:.*use of fork:DeprecationWarning")
def test_resume_is_exact(tmp_path):
    data = Squares(10)  # 10 samples, 4 per step: epochs end mid-step
    full = fit(_model(), data, _config(), tmp_path / "full")
    with pytest.raises(_Interrupt):
        fit(_model(), data, _config(), tmp_path / "cut", on_step=_crash_at(5))
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    # the resumed run loads its data with worker processes: same samples, same weights
    resumed = fit(_model(seed=99), data, _config(num_workers=2), tmp_path / "cut", resume=True)
    assert resumed.start_step == 4 and len(resumed.losses) == 2
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.losses == full.losses[4:]
    full_opt = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["optimizer"]["state"]
    cut_opt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["optimizer"]["state"]
    for k in full_opt:
        assert torch.equal(full_opt[k]["momentum_buffer"], cut_opt[k]["momentum_buffer"])
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the lost step 5 is logged once


def test_resume_refuses_other_settings_and_bad_files(tmp_path):
    fit(_model(), Squares(4), _config(steps=2), tmp_path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*cannot resume"):
        fit(_model(), Squares(4), _config(steps=4, lr=0.02), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*different network"):
        fit(_model("fcn8s"), Squares(4), _config(steps=2), tmp_path, resume=True)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[:100])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        fit(_model(), Squares(4), _config(steps=4), tmp_path, resume=True)


def test_sample_stream_order_is_a_seeded_permutation_per_epoch():
    stream = SampleStream(list(range(7)), seed=5)
    first = [stream.index(p) for p in range(7)]
    second = [stream.index(p) for p in range(7, 14)]
    assert sorted(first) == sorted(second) == list(range(7)) and first != second
    assert [SampleStream(list(range(7)), seed=5).index(p) for p in range(7)] == first
    with pytest.raises(ValueError, match="empty"):
        SampleStream([], seed=0)


def test_segmentation_loss_ignores_255():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, :2] = 255
    keep = labels != 255
    expected = torch.nn.functional.cross_entropy(
        logits.permute(0, 2, 3, 1)[keep], labels[keep])
    torch.testing.assert_close(segmentation_loss(logits, labels), expected)
    empty = segmentation_loss(logits, torch.full((2, 4, 4), 255))
    assert empty.item() == 0.0
    empty.backward()  # no NaN, still differentiable
    assert torch.isfinite(logits.grad).all()


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        fit(_model(), Squares(4), _config(batch_size=0), tmp_path)
    with pytest.raises(ValueError, match="amp"):
        fit(_model(), Squares(4), _config(amp=True), tmp_path)
    with pytest.raises(ValueError, match="image"):
        fit(_model(), [(torch.zeros(3, 64, 64), torch.zeros(32, 32, dtype=torch.long))],
            _config(steps=1, batch_size=1, accumulate=1), tmp_path)


def test_two_stages_chain_and_fcn(tmp_path):
    cfg = _config(steps=1, accumulate=1)
    summary = train_deconvnet((Squares(6, seed=1), Squares(6, seed=2)), tmp_path / "d",
                              num_classes=NUM_CLASSES, stage1_steps=2, stage2_steps=2, config=cfg)
    assert [r.steps for r in summary.stages] == [2, 2]
    model, meta = load_model(summary.path)
    assert meta["kind"] == "deconvnet" and meta["trained_steps"] == {"stage1": 2, "stage2": 2}
    # stage 2 started from stage 1's final weights: replaying it from stage1/model.pt
    # with the same settings gives the same result
    stage1, _ = load_model(tmp_path / "d" / "stage1" / "model.pt")
    replay = fit(stage1.train(), Squares(6, seed=2), TrainConfig(**{**cfg.__dict__, "steps": 2}),
                 tmp_path / "replay", stage="stage2")
    for a, b in zip(replay.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    fcn = train_fcn(Squares(6), tmp_path / "f", num_classes=NUM_CLASSES, steps=2, config=cfg)
    fmodel, fmeta = load_model(fcn.path)
    assert fmeta["kind"] == "fcn8s" and fmodel(torch.randn(1, 3, 40, 52)).shape == (1, NUM_CLASSES, 40, 52)


def test_stage2_lr_applies_to_stage_2_only(tmp_path):
    cfg = _config(steps=1, accumulate=1, lr=0.05, lr_step=0)
    summary = train_deconvnet((Squares(6, seed=1), Squares(6, seed=2)), tmp_path / "d",
                              num_classes=NUM_CLASSES, stage1_steps=2, stage2_steps=2,
                              config=cfg, stage2_lr=0.01)
    rates = {}
    for stage in ("stage1", "stage2"):
        lines = (tmp_path / "d" / stage / "log.jsonl").read_text().splitlines()
        rates[stage] = {json.loads(line)["lr"] for line in lines if '"lr"' in line}
    assert rates == {"stage1": {0.05}, "stage2": {0.01}}
    # the same as fine-tuning stage 1's weights at 0.01 by hand
    model, _ = load_model(summary.path)
    stage1, _ = load_model(tmp_path / "d" / "stage1" / "model.pt")
    replay = fit(stage1.train(), Squares(6, seed=2),
                 TrainConfig(**{**cfg.__dict__, "steps": 2, "lr": 0.01}),
                 tmp_path / "replay", stage="stage2")
    for a, b in zip(replay.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stage2_lr"):
        train_deconvnet((Squares(2, seed=1), Squares(2, seed=2)), tmp_path / "e",
                        num_classes=NUM_CLASSES, stage1_steps=1, stage2_steps=1,
                        config=cfg, stage2_lr=0.0)


def test_stage1_lr_step_applies_to_stage_1_only(tmp_path):
    cfg = _config(steps=1, accumulate=1, lr=0.05, lr_step=0)
    train_deconvnet((Squares(6, seed=1), Squares(6, seed=2)), tmp_path / "d",
                    num_classes=NUM_CLASSES, stage1_steps=4, stage2_steps=2,
                    config=cfg, stage1_lr_step=2)
    rates = {}
    for stage in ("stage1", "stage2"):
        lines = (tmp_path / "d" / stage / "log.jsonl").read_text().splitlines()
        rates[stage] = [json.loads(line)["lr"] for line in lines if '"lr"' in line]
    # stage 1 decays x0.1 after 2 of its 4 steps; stage 2 keeps config's constant rate
    assert rates["stage1"] == pytest.approx([0.05, 0.05, 0.005, 0.005])
    assert rates["stage2"] == pytest.approx([0.05, 0.05])
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="stage1_lr_step"):
            train_deconvnet((Squares(2, seed=1), Squares(2, seed=2)), tmp_path / "e",
                            num_classes=NUM_CLASSES, stage1_steps=1, stage2_steps=1,
                            config=cfg, stage1_lr_step=bad)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_training_on_cuda(tmp_path):
    result = fit(_model(), Squares(8), _config(steps=4, device="cuda", amp=True), tmp_path)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert next(result.model.parameters()).is_cuda
    payload = load_checkpoint(tmp_path / "checkpoint.pt")
    assert payload["scaler"] and payload["step"] == 4
    model, _ = load_model(tmp_path / "model.pt")  # loads onto the CPU
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, NUM_CLASSES, 64, 64)


@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_channels_last_training_runs_channels_last_and_saves_plain_weights(tmp_path, kind):
    data = Squares(12)
    runs = [fit(_model(kind), data, _config(steps=2, channels_last=cl, checkpoint_every=0),
                tmp_path / str(cl)) for cl in (False, True)]
    # Two steps only: float32 gradients of this tiny fresh net are 1-4% off float64's
    # in either layout (measured), so longer runs drift apart (0.4% in loss after 6
    # steps). That the layouts compute the same maths is checked in float64 below.
    assert runs[0].losses == pytest.approx(runs[1].losses, rel=1e-4)
    conv = next(m for m in runs[1].model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # the saved model loads into an ordinary NCHW model with the same values
    model, _ = load_model(tmp_path / "True" / "model.pt")
    for a, b in zip(model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_channels_last_gradients_equal_nchw_in_float64(kind):
    """The switch pool / unpool ops, convolutions and BN give the same loss and gradients
    in either layout: float64 leaves only rounding (no pooling near-ties on noise)."""
    models = [_model(kind).double() for _ in range(2)]
    models[1].to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=generator)
    y = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=generator)
    losses = []
    for model, images in zip(models, (x, x.contiguous(memory_format=torch.channels_last))):
        loss = segmentation_loss(model(images), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-12)
    # a bias before BN has gradient 0 up to rounding: tolerances scale with the largest
    scale = max(p.grad.abs().max().item() for p in models[0].parameters())
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
