"""The demo's diagnostics: oracle boxes, proposal recall by size, crop mean IU."""
import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.data.crops import InstanceCrops
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation, instance_boxes
from deconvnet_ext.diagnostics import (SIZE_BUCKETS, crop_confusion, diagnostics_markdown,
                                       oracle_confusion, proposal_recall, run_diagnostics)
from deconvnet_ext.infer import InferenceConfig, predict_variants
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
    diag = run_diagnostics(val, net, InferenceConfig(max_proposals=10), limit=2)
    assert 0 <= diag["oracle_boxes_mean_iu"] <= 100 and 0 <= diag["crop_mean_iu"] <= 100
    text = diagnostics_markdown(diag, {"deconvnet_stage1": {"steps": 3, "seconds": 1.0,
                                                            "loss_first": 3.0,
                                                            "loss_last": 2.5}}, 12.34)
    assert "| DeconvNet (proposals), mean IU | 12.3 |" in text
    assert "oracle" in text and "recall" in text and "| deconvnet_stage1 | 3 | 1 |" in text
