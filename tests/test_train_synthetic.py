"""`deconvnet train` end to end on a generated synthetic VOC set: both DeconvNet stages
and FCN-8s, files written, loss falling, resume of a finished run is a no-op; and the
whole-image dataset FCN-8s trains on."""
import argparse
import json

import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import load_model
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation
from deconvnet_ext.train import WholeImages, add_cli_arguments, run_cli
from test_train_support import one_thread  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return generate_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=10, num_val=2,
                                  seed=0, progress=False)


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_cli_trains_both_models_on_synthetic_voc(tmp_path, voc_root, capsys):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    argv = ["--data", str(voc_root), "--out", str(tmp_path), "--model", "both",
            "--stage1-steps", "20", "--stage2-steps", "3", "--fcn-steps", "3",
            "--batch-size", "8", "--proposals", "jitter", "--checkpoint-every", "10",
            "--no-progress"]
    assert run_cli(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "1,018,397 parameters" in out and "wrote" in out
    stage1 = _log(tmp_path / "stage1" / "log.jsonl")
    assert [r["step"] for r in stage1] == list(range(1, 21))
    losses = [r["loss"] for r in stage1]
    assert np.mean(losses[-5:]) < losses[0] - 0.1, losses  # 21 classes: starts near ln 21
    assert len(_log(tmp_path / "stage2" / "log.jsonl")) == 3
    assert len(_log(tmp_path / "fcn" / "log.jsonl")) == 3
    deconvnet, meta = load_model(tmp_path / "deconvnet.pt")
    assert isinstance(deconvnet, dx.DeconvNet) and meta["trained_steps"] == {"stage1": 20, "stage2": 3}
    fcn, meta = load_model(tmp_path / "fcn8s.pt")
    assert isinstance(fcn, dx.FCN8s) and meta["num_classes"] == 21
    # resuming a finished run trains nothing more and keeps the weights
    before = (tmp_path / "deconvnet.pt").read_bytes()
    assert run_cli(parser.parse_args(argv + ["--resume"])) == 0
    assert "steps 20->20" in capsys.readouterr().out
    again, _ = load_model(tmp_path / "deconvnet.pt")
    for a, b in zip(again.state_dict().values(), deconvnet.state_dict().values()):
        assert torch.equal(a, b)
    assert len(_log(tmp_path / "stage1" / "log.jsonl")) == 20
    assert before  # the file was rewritten atomically, still loadable above


def test_whole_images_scale_pad_and_mirror(voc_root):
    voc = VOCSegmentation(voc_root, "train")
    sample = voc[0]
    H, W = sample.label.shape
    ds = WholeImages(voc, 64, mirror=False)
    image, label = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.shape == (64, 64) and label.dtype == torch.int64
    h, w = round(H * 64 / max(H, W)), round(W * 64 / max(H, W))
    assert (label[h:, :] == 255).all() and (label[:, w:] == 255).all()   # padding ignored
    assert (image[:, h:, :] == 0).all()
    present = set(np.unique(sample.label).tolist())
    assert set(label[:h, :w].unique().tolist()) <= present
    torch.manual_seed(0)
    mirrored = {bool(torch.equal(WholeImages(voc, 64)[0][1], label.flip(-1))) for _ in range(16)}
    assert mirrored == {True, False}  # flipped about half the time
    with pytest.raises(ValueError, match="size"):
        WholeImages(voc, 0)
