"""The demo's diagnostics: oracle boxes, proposal ceilings, proposal recall by size, crop
mean IU."""
import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.data.crops import InstanceCrops
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation, instance_boxes
from deconvnet_ext.diagnostics import (SIZE_BUCKETS, ceiling_confusions, ceiling_picks,
                                       crop_confusion, diagnostics_markdown,
                                       oracle_confusion, proposal_recall, run_diagnostics)
from deconvnet_ext.infer import InferenceConfig, predict_variants, proposal_boxes
from deconvnet_ext.metrics import ConfusionMatrix
from deconvnet_ext.proposals import add_context


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    root = generate_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=1, num_val=4, seed=3)
    return VOCSegmentation(root, "val")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=21, arch="tiny").eval()
    with torch.no_grad():  # distinct scores per pixel (the score layer starts near zero)
        model.score.weight.mul_(300.0)
        model.score.bias.mul_(300.0)
    return model


def test_oracle_is_the_pipeline_fed_ground_truth_boxes(val, net):
    config = InferenceConfig(context=1.3)
    expected = ConfusionMatrix(21)
    for i in range(len(val)):
        sample = val[i]
        gt = np.asarray([box for box, _ in instance_boxes(sample)], np.int64).reshape(-1, 4)
        boxes = torch.as_tensor(add_context(gt, sample.label.shape, 1.3))
        probs = predict_variants([sample.image], net, None, config, use_crf=False,
                                 boxes=[boxes], variants=["DeconvNet"])[0]["DeconvNet"]
        expected.update(sample.label, probs.argmax(axis=0).astype(np.uint8))
    got = oracle_confusion(val, net, config, images_per_step=3)
    np.testing.assert_array_equal(got.matrix, expected.matrix)


def _iou(a, b):
    """IoU of two boxes [x0, y0, x1, y1), written out: the test's own reference."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_ceiling_picks_by_hand():
    objects = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 52, 52]])
    proposals = np.array([[0, 0, 10, 12],     # object 0 at 10/12: its best
                          [0, 0, 14, 14],     # object 0 at 100/196 = 0.51
                          [20, 20, 30, 30],   # object 1 exactly
                          [21, 21, 30, 30],   # object 1 at 0.81
                          [0, 0, 40, 40],     # holds both, IoU < 0.5 with each
                          [49, 49, 53, 53]])  # object 2 at 4/16: not found
    picks = ceiling_picks(proposals, objects)
    np.testing.assert_array_equal(picks["perfect_scorer"], [0, 1, 2, 3])
    np.testing.assert_array_equal(picks["best_proposal"], [0, 2])
    # a proposal best for two objects is kept once; ties go to the first
    picks = ceiling_picks(np.array([[0, 0, 30, 30], [0, 0, 30, 30]]),
                          np.array([[0, 0, 30, 25], [0, 0, 25, 30]]))
    np.testing.assert_array_equal(picks["best_proposal"], [0])
    for empty in (ceiling_picks(proposals, np.zeros((0, 4))),
                  ceiling_picks(np.zeros((0, 4)), objects)):
        assert all(len(v) == 0 and v.dtype == np.int64 for v in empty.values())


def test_ceilings_are_the_pipeline_fed_the_picked_proposals(val, net):
    """Each ceiling equals predict_variants given, per image, the proposals a by-hand
    IoU >= 0.5 rule keeps (with context), every crop aggregated; an image with none
    kept counts as all background."""
    config = InferenceConfig(max_proposals=40, min_size=0, context=1.3, aggregation="topk",
                             uncovered_background=0.3)
    raw_config = InferenceConfig(max_proposals=40, min_size=0, context=1.0)
    expected = {"perfect_scorer": ConfusionMatrix(21), "best_proposal": ConfusionMatrix(21)}
    kept_any = {key: 0 for key in expected}
    for i in range(len(val)):
        sample = val[i]
        raw = proposal_boxes(sample.image, raw_config).numpy()
        gt = [box for box, _ in instance_boxes(sample)]
        iou = np.array([[_iou(g, p) for p in raw] for g in gt]).reshape(len(gt), len(raw))
        hand = {"perfect_scorer": [k for k in range(len(raw))
                                   if len(gt) and iou[:, k].max() >= 0.5],
                "best_proposal": sorted({int(iou[n].argmax()) for n in range(len(gt))
                                         if iou[n].max() >= 0.5})}
        for key, picked in hand.items():
            if not picked:
                prediction = np.zeros(sample.label.shape, np.uint8)
            else:
                kept_any[key] += 1
                boxes = torch.as_tensor(add_context(raw[picked], sample.label.shape, 1.3))
                probs = predict_variants([sample.image], net, None, config, use_crf=False,
                                         boxes=[boxes], variants=["DeconvNet"])[0]
                prediction = probs["DeconvNet"].argmax(axis=0).astype(np.uint8)
            expected[key].update(sample.label, prediction)
    assert all(kept_any.values())  # the check is not all-background
    got = ceiling_confusions(val, net, config)
    for key in expected:
        np.testing.assert_array_equal(got[key].matrix, expected[key].matrix)


def test_recall_counts_every_instance_once_and_tightens_with_iou(val):
    recall = proposal_recall(val, InferenceConfig(max_proposals=30))
    instances = sum(len(instance_boxes(val[i])) for i in range(len(val)))
    assert recall["instances"] == instances > 0
    assert sum(row["instances"] for row in recall["by_size"].values()) == instances
    assert list(recall["by_size"]) == [name for name, _, _ in SIZE_BUCKETS]
    assert 0.0 <= recall["overall"]["0.7"] <= recall["overall"]["0.5"] <= 1.0
    assert 0 < recall["proposals_per_image"] <= 30
    # more proposals can only find more
    more = proposal_recall(val, InferenceConfig(max_proposals=300, min_size=0))
    assert more["overall"]["0.5"] >= recall["overall"]["0.5"]


def test_crop_confusion_scores_every_labelled_crop_pixel(val, net):
    crops = InstanceCrops(val, net.input_size, stage=1, mirror=False, seed=0, progress=False)
    labelled = sum(int((crops[i][1] != 255).sum()) for i in range(len(crops)))
    cm = crop_confusion(val, net, batch_size=3)
    assert cm.matrix.sum() == labelled > 0


def test_run_diagnostics_and_its_table(val, net):
    config = InferenceConfig(max_proposals=10)
    diag = run_diagnostics(val, net, config, limit=2)
    # the proposals it computes once serve recall and the ceilings as their own would
    assert diag["recall"] == proposal_recall(val, config, limit=2)
    for key, cm in ceiling_confusions(val, net, config, limit=2).items():
        assert diag[f"{key}_mean_iu"] == 100 * cm.mean_iou()
    assert 0 <= diag["oracle_boxes_mean_iu"] <= 100 and 0 <= diag["crop_mean_iu"] <= 100
    assert 0 <= diag["perfect_scorer_mean_iu"] <= 100 and 0 <= diag["best_proposal_mean_iu"] <= 100
    text = diagnostics_markdown(diag, {"deconvnet_stage1": {"steps": 3, "seconds": 1.0,
                                                            "loss_first": 3.0,
                                                            "loss_last": 2.5}}, 12.34)
    assert "| DeconvNet (proposals), mean IU | 12.3 |" in text
    assert "oracle" in text and "recall" in text and "| deconvnet_stage1 | 3 | 1 |" in text
    assert ("| DeconvNet, each object's best proposal only (read off the ground truth), "
            f"mean IU | {diag['best_proposal_mean_iu']:.1f} |") in text
    # a results.json written before the ceiling rows still renders
    old = {k: v for k, v in diag.items() if not k.endswith(("scorer_mean_iu", "proposal_mean_iu"))}
    assert "best proposal" not in diagnostics_markdown(old)
