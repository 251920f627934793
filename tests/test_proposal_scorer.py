"""The proposal scorer (proposal_scorer): its features, its fit, its place in the
DeconvNet checkpoint, and the pipeline's aggregation of the crops it trusts
(infer.aggregate_crop_maps with min_objectness)."""
import dataclasses

import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import load_model, save_checkpoint
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation
from deconvnet_ext.diagnostics import oracle_confusion
from deconvnet_ext.errors import UserError
from deconvnet_ext.infer import (InferenceConfig, aggregate_crop_maps, check_proposal_scorer,
                                 deconvnet_scores, proposal_boxes)
from deconvnet_ext.proposal_scorer import (ProposalScorer, crop_features, feature_count,
                                           fit_proposal_scorer, fit_scorer_to, training_crops)
from deconvnet_ext.topk_aggregation import aggregate_topk_mean


def _maps_with_object(num_classes=4, size=8, box=(2, 1, 6, 5), cls=2):
    """(1,C,S,S) logits: background everywhere but class ``cls`` on box [x0,y0,x1,y1)."""
    maps = torch.zeros(1, num_classes, size, size)
    maps[0, 0] = 5.0
    x0, y0, x1, y1 = box
    maps[0, 0, y0:y1, x0:x1] = 0.0
    maps[0, cls, y0:y1, x0:x1] = 5.0
    return maps


def test_crop_features_read_the_object_off_the_map():
    empty = torch.zeros(1, 4, 8, 8)
    empty[:, 0] = 5.0
    maps = torch.cat([_maps_with_object(), empty])
    boxes = torch.tensor([[0, 0, 20, 10], [0, 0, 40, 40]])
    f = crop_features(maps, boxes, (40, 80))
    assert f.shape == (2, feature_count(4)) == (2, 10 + 2 + 3)
    fraction, confidence, border, background, entropy, dominant, x0, x1, y0, y1 = f[0, :10]
    assert fraction == pytest.approx(16 / 64)
    p = torch.softmax(torch.tensor([0.0, 0.0, 5.0, 0.0]), 0)
    assert confidence == pytest.approx(float(p[2]), rel=1e-5)
    assert border == 0                                 # the object does not reach the edge
    assert dominant == 1.0
    assert (x0, x1, y0, y1) == (pytest.approx(2 / 8), pytest.approx(6 / 8),
                                pytest.approx(1 / 8), pytest.approx(5 / 8))
    assert f[0, 10] == pytest.approx(np.log(20 * 10 / (40 * 80) + 1e-4), rel=1e-5)
    assert f[0, 11] == pytest.approx(np.log((20 / 80) / (10 / 40)), abs=1e-6)
    assert f[0, 12:].tolist() == [0.0, 1.0, 0.0]       # the object histogram: class 2
    # no object pixel: zero fraction and histogram, the extent parked at the centre
    assert f[1, 0] == 0 and f[1, 2] == 0 and f[1, 12:].sum() == 0
    assert f[1, 6:10].tolist() == [0.5] * 4
    with pytest.raises(ValueError, match="2 maps but 1 boxes"):
        crop_features(maps, boxes[:1], (40, 80))


def test_fit_separates_a_separable_problem_deterministically():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, feature_count(3), generator=g)
    targets = features[:, 0] + 0.5 * features[:, 3] > 0.2
    a, b = ProposalScorer(3), ProposalScorer(3)
    fit_scorer_to(a, features, targets, seed=1)
    fit_scorer_to(b, features, targets, seed=1)
    with torch.no_grad():
        pa, pb = a(features), b(features)
    assert torch.equal(pa, pb)
    assert ((pa >= 0.5) == targets).float().mean() > 0.95
    # weights count: a heavily weighted class pulls the probabilities its way
    w = torch.where(targets, 1.0, 10.0)
    fit_scorer_to(b, features, targets, w, seed=1)
    with torch.no_grad():
        assert b(features).mean() < pa.mean()


def test_aggregation_keeps_only_the_trusted_crops():
    torch.manual_seed(0)
    maps = torch.randn(6, 4, 8, 8)
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 20, 20], [2, 3, 9, 19], [0, 0, 20, 20],
                          [10, 0, 20, 8], [4, 4, 6, 6]])
    scorer = ProposalScorer(4).eval()
    p = scorer.score(maps, boxes, (20, 20))
    config = InferenceConfig(aggregation="topk", topk=2, min_objectness=float(p.median()))
    keep = p >= config.min_objectness
    assert 0 < keep.sum() < len(keep)
    got = aggregate_crop_maps(maps, boxes, (20, 20), config, scorer)
    torch.testing.assert_close(got, aggregate_topk_mean(maps[keep], boxes[keep], (20, 20), 2))
    # nothing passes: the best-scored crop alone
    high = dataclasses.replace(config, min_objectness=0.999)
    with torch.no_grad():
        for net in scorer.nets:
            net[-1].bias.fill_(-20.0)
    p = scorer.score(maps, boxes, (20, 20))
    best = int(p.argmax())
    got = aggregate_crop_maps(maps, boxes, (20, 20), high, scorer)
    torch.testing.assert_close(got, aggregate_topk_mean(maps[best:best + 1], boxes[best:best + 1],
                                                        (20, 20), 2))
    # off (0): the scorer is not consulted, every crop counts
    off = dataclasses.replace(config, min_objectness=0.0)
    torch.testing.assert_close(aggregate_crop_maps(maps, boxes, (20, 20), off, scorer),
                               aggregate_crop_maps(maps, boxes, (20, 20), off))
    with pytest.raises(ValueError, match="needs a proposal scorer"):
        aggregate_crop_maps(maps, boxes, (20, 20), config)


def test_min_objectness_is_checked():
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="min_objectness"):
            InferenceConfig(min_objectness=bad)
    model = dx.DeconvNet(num_classes=21, arch="tiny")
    with pytest.raises(UserError, match="has none"):
        check_proposal_scorer(model, InferenceConfig(min_objectness=0.4), "dn.pt")
    check_proposal_scorer(model, InferenceConfig(), "dn.pt")
    model.proposal_scorer = ProposalScorer(21)
    check_proposal_scorer(model, InferenceConfig(min_objectness=0.4), "dn.pt")


def test_checkpoint_keeps_the_scorer_and_old_checkpoints_still_load(tmp_path):
    torch.manual_seed(0)
    plain = dx.DeconvNet(num_classes=21, arch="tiny")
    assert "proposal_scorer" not in plain.meta()
    save_checkpoint(tmp_path / "plain.pt", plain)
    loaded, meta = load_model(tmp_path / "plain.pt")
    assert loaded.proposal_scorer is None and "proposal_scorer" not in meta

    scorer = ProposalScorer(21)
    fit_scorer_to(scorer, torch.randn(50, feature_count(21)), torch.rand(50) > 0.5)
    plain.proposal_scorer = scorer
    save_checkpoint(tmp_path / "scored.pt", plain)
    loaded, meta = load_model(tmp_path / "scored.pt")
    assert meta["proposal_scorer"] == {"hidden": scorer.hidden, "members": 5}
    for key, value in scorer.state_dict().items():
        torch.testing.assert_close(loaded.proposal_scorer.state_dict()[key], value, rtol=0, atol=0)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return generate_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=3, num_val=2, seed=5)


def test_fit_proposal_scorer_on_training_crops(voc):
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=21, arch="tiny").eval()
    train = VOCSegmentation(voc, "train")
    config = InferenceConfig(min_size=0, max_proposals=40)
    features, ious, weights = training_crops(model, train, config, 2, negative_fraction=1.0,
                                             progress=False)
    proposals = sum(len(proposal_boxes(train[i].image, config)) for i in range(2))
    assert features.shape == (proposals, feature_count(21))
    assert ((ious >= 0) & (ious <= 1)).all() and (ious >= 0.5).any()
    assert torch.equal(weights, torch.ones(proposals))
    # subsampled negatives: every positive stays, the kept negatives weigh 1 / fraction
    f2, i2, w2 = training_crops(model, train, config, 2, negative_fraction=0.25, progress=False)
    assert (i2 >= 0.5).sum() == (ious >= 0.5).sum() and len(i2) < proposals
    assert torch.equal(w2, torch.where(i2 >= 0.5, 1.0, 4.0))

    scorer, info = fit_proposal_scorer(model, train, config, num_images=2, progress=False)
    assert info["images"] == 2 and info["positives"] == int((ious >= 0.5).sum())
    assert not scorer.training and not model.training
    # the pipeline aggregates with it once the model carries it
    model.proposal_scorer = scorer
    image = VOCSegmentation(voc, "val")[0].image
    boxes = proposal_boxes(image, config)
    scored = dataclasses.replace(config, min_objectness=0.5)
    got = deconvnet_scores(model, [image], [boxes], scored)[0]
    assert got.shape == (21, *image.shape[:2]) and torch.isfinite(got).all()


def test_the_oracle_ignores_the_scorer(voc):
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=21, arch="tiny").eval()
    model.proposal_scorer = ProposalScorer(21).eval()
    with torch.no_grad():
        for net in model.proposal_scorer.nets:  # it would keep one box per image
            net[-1].bias.fill_(-20.0)
    val = VOCSegmentation(voc, "val")
    got = oracle_confusion(val, model, InferenceConfig(min_objectness=0.5))
    want = oracle_confusion(val, model, InferenceConfig())
    np.testing.assert_array_equal(got.matrix, want.matrix)


def test_fit_scorer_command_saves_the_fitted_scorer(voc, tmp_path, capsys):
    """``deconvnet fit-scorer`` fits exactly what fit_proposal_scorer fits on the same
    images and options, and stores it with the trainer's meta kept."""
    from deconvnet_ext.cli import main

    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=21, arch="tiny").eval()
    path = tmp_path / "dn.pt"
    save_checkpoint(path, model, {**model.meta(), "trained_steps": {"stage1": 7}})
    args = ["--checkpoint", str(path), "--data", str(voc), "--images", "2",
            "--negative-fraction", "0.5", "--seed", "3", "--min-size", "0",
            "--max-proposals", "40", "--device", "cpu", "--quiet"]
    assert main(["fit-scorer", *args, "--out", str(tmp_path / "scored.pt")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_model(path)[0].proposal_scorer is None  # --out: the input is untouched
    loaded, meta = load_model(tmp_path / "scored.pt")
    assert meta["trained_steps"] == {"stage1": 7} and meta["proposal_scorer"]["members"] == 5
    for key, value in model.state_dict().items():  # the network itself is unchanged
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    want, _ = fit_proposal_scorer(model, VOCSegmentation(voc, "train"),
                                  InferenceConfig(min_size=0, max_proposals=40), num_images=2,
                                  negative_fraction=0.5, seed=3, progress=False)
    features = torch.randn(30, feature_count(21), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.proposal_scorer(features), want(features))
    # without --out it writes into the checkpoint itself
    assert main(["fit-scorer", *args]) == 0
    assert load_model(path)[0].proposal_scorer is not None


@pytest.mark.parametrize("extra,message", [(["--images", "0"], "--images"),
                                           (["--negative-fraction", "0"], "--negative-fraction"),
                                           (["--split", "nope"], "nope")])
def test_fit_scorer_command_refuses_bad_input(voc, tmp_path, capsys, extra, message):
    from deconvnet_ext.cli import main

    path = tmp_path / "dn.pt"
    save_checkpoint(path, dx.DeconvNet(num_classes=21, arch="tiny"))
    assert main(["fit-scorer", "--checkpoint", str(path), "--data", str(voc), *extra]) == 2
    assert message in capsys.readouterr().err


def test_the_demo_the_command_and_the_library_fit_on_every_negative_crop():
    import argparse
    import inspect
    from deconvnet_ext import demo, proposal_scorer
    parser = argparse.ArgumentParser()
    proposal_scorer.add_cli_arguments(parser)
    cli = parser.parse_args(["--checkpoint", "x.pt", "--data", "d"]).negative_fraction
    library = inspect.signature(proposal_scorer.fit_proposal_scorer).parameters
    assert demo.DEMO_SCORER_NEGATIVES == 1.0 == cli
    assert library["negative_fraction"].default == 1.0
    used = inspect.signature(demo.demo_proposal_scorer).parameters["negative_fraction"]
    assert used.default == demo.DEMO_SCORER_NEGATIVES
