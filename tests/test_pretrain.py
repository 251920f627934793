"""Encoder pre-training (deconvnet_ext.pretrain): the encoder both networks load, its
reproducibility, and the shipped file."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from deconvnet_ext.errors import UserError
from deconvnet_ext.model import DeconvNet, FCN8s
from deconvnet_ext.pretrain import (DEFAULTS, PRETRAIN_DATA_SEED, SHIPPED_ENCODER,
                                    ClassificationCrops, EncoderClassifier, encoder_digest,
                                    load_encoder, pretrain_encoder, read_encoder_file,
                                    resolve_encoder)


@pytest.fixture(scope="module")
def tiny_voc(tmp_path_factory):
    from deconvnet_ext.data.synthetic import generate_synthetic_voc
    return generate_synthetic_voc(tmp_path_factory.mktemp("pretrain") / "voc", 8, 0, (72, 96),
                                  seed=3, progress=False)


def _encoder_keys(model):
    return {k for k in model.state_dict() if k.startswith(("features.", "fc6.", "fc7."))}


def test_encoder_state_fits_both_networks():
    torch.manual_seed(1)
    clf = EncoderClassifier("tiny")
    state = clf.encoder_state()
    for cls in (DeconvNet, FCN8s):
        model = cls(arch="tiny")
        assert set(state) == _encoder_keys(model)
        load_encoder(model, state)
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in state.items())


def test_classifier_runs_the_deconvnet_encoder():
    """The classifier's features equal DeconvNet's encoder on the same weights."""
    torch.manual_seed(2)
    clf = EncoderClassifier("tiny").eval()
    net = DeconvNet(arch="tiny").eval()
    load_encoder(net, clf.encoder_state())
    x = torch.randn(2, 3, 64, 64)
    pooled, _ = net.encode(x)
    want = net.fc7(net.fc6(pooled)).mean(dim=(2, 3))
    got = clf.fc7(clf.fc6(DeconvNet.encode(clf, x)[0])).mean(dim=(2, 3))
    assert torch.equal(got, want)
    assert clf(x).shape == (2, 21)


def test_classifier_initialisation_ignores_the_decoder_widths(monkeypatch):
    """The shipped encoder was pre-trained when the tiny decoder was the mirror: the
    classifier must draw the same initial weights (and leave the generator in the same
    state) whatever decoder the arch has now, or `--compare` could not reproduce it."""
    import dataclasses
    from deconvnet_ext import vgg
    from deconvnet_ext.pretrain import EncoderClassifier
    states = []
    for decoder_widths in (vgg.ARCHS["tiny"].decoder_widths, None):
        monkeypatch.setitem(vgg.ARCHS, "tiny", dataclasses.replace(
            vgg.ARCHS["tiny"], decoder_widths=decoder_widths))
        torch.manual_seed(0)
        states.append((EncoderClassifier("tiny").state_dict(), torch.rand(4)))
    assert vgg.ARCHS["tiny"].decoder_widths is None  # the mirror, last
    (first, after_first), (second, after_second) = states
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert torch.equal(after_first, after_second)


def test_wrong_encoder_is_a_clear_error():
    state = EncoderClassifier("tiny").encoder_state()
    with pytest.raises(UserError, match="does not fit"):
        load_encoder(DeconvNet(arch="vgg16"), state)
    with pytest.raises(UserError, match="does not exist"):
        resolve_encoder("/nonexistent/encoder.pt")
    assert resolve_encoder("none") is None and resolve_encoder(None) is None


def test_background_crops_avoid_instances(tiny_voc):
    from deconvnet_ext.data.voc import VOCSegmentation
    from deconvnet_ext.proposals import box_iou
    crops = ClassificationCrops(VOCSegmentation(tiny_voc, "train"), 64, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        image, box, cls = crops._background(rng)
        index = next(i for i, im in enumerate(crops.images) if im is image)
        gt = crops.boxes[index]
        assert cls == 0
        if len(gt):
            assert box_iou(np.asarray([box]), gt).max() < 0.3
    images, labels = crops.batch(0, 16)
    assert images.shape == (16, 3, 64, 64) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < 21)).all()
    again = crops.batch(0, 16)
    assert torch.equal(images, again[0]) and torch.equal(labels, again[1])


def test_pretraining_is_reproducible(tmp_path):
    kw = dict(num_images=4, steps=3, batch_size=4, progress=False)
    a = pretrain_encoder(tmp_path / "a.pt", **kw)
    b = pretrain_encoder(tmp_path / "b.pt", **kw)
    assert a["sha256"] == b["sha256"]
    assert a["data_seed"] == PRETRAIN_DATA_SEED
    payload = read_encoder_file(tmp_path / "a.pt")
    assert encoder_digest(payload["encoder"]) == a["sha256"]
    c = pretrain_encoder(tmp_path / "c.pt", seed=1, **kw)
    assert c["sha256"] != a["sha256"]
    # the CLI's --compare says whether a rerun reproduced a file
    cmd = [sys.executable, "-m", "deconvnet_ext", "pretrain", "--num-images", "4", "--steps",
           "3", "--batch-size", "4", "--no-progress", "--out", str(tmp_path / "d.pt")]
    same = subprocess.run(cmd + ["--compare", str(tmp_path / "a.pt")], capture_output=True,
                          text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "identical" in same.stdout
    other = subprocess.run(cmd + ["--compare", str(tmp_path / "c.pt")], capture_output=True,
                           text=True)
    assert other.returncode == 1 and "DIFFERENT" in other.stdout


def test_shipped_encoder_loads_and_says_how_it_was_made():
    assert SHIPPED_ENCODER.is_file(), "the package's weights/tiny_encoder.pt is missing"
    payload = read_encoder_file(SHIPPED_ENCODER)
    meta = payload["meta"]
    assert encoder_digest(payload["encoder"]) == meta["sha256"]
    # `deconvnet pretrain` with its defaults is the command that made it
    for key in ("num_images", "steps", "batch_size", "lr", "seed"):
        assert meta[key] == DEFAULTS[key], key
    assert meta["data_seed"] == PRETRAIN_DATA_SEED
    for cls in (DeconvNet, FCN8s):
        load_encoder(cls(arch="tiny"), SHIPPED_ENCODER)
