import math

import numpy as np
import pytest
import torch

from deconvnet_ext.metrics import (ConfusionMatrix, confusion_matrix, mean_iou,
                                   per_class_iou, pixel_accuracy)


def test_hand_built_confusion_matrix_iou():
    # rows = ground truth, columns = prediction
    cm = np.array([[5, 1, 0],
                   [2, 3, 1],
                   [0, 0, 4]])
    # class 0: TP 5, FP 2, FN 1 -> 5/8; class 1: TP 3, FP 1, FN 3 -> 3/7; class 2: 4/5
    expected = np.array([5 / 8, 3 / 7, 4 / 5])
    np.testing.assert_allclose(per_class_iou(cm), expected)
    assert mean_iou(cm) == pytest.approx(expected.mean())
    assert pixel_accuracy(cm) == pytest.approx(12 / 16)


def test_absent_class_is_excluded_from_the_mean():
    # class 2 is neither in the ground truth nor in the prediction
    cm = np.array([[3, 1, 0],
                   [0, 2, 0],
                   [0, 0, 0]])
    iou = per_class_iou(cm)
    assert iou[0] == pytest.approx(3 / 4) and iou[1] == pytest.approx(2 / 3)
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_class_only_predicted_counts_as_zero():
    # class 2 never in ground truth but predicted once: IoU 0, kept in the mean
    cm = np.array([[3, 0, 1],
                   [0, 2, 0],
                   [0, 0, 0]])
    iou = per_class_iou(cm)
    assert iou[2] == 0.0
    assert mean_iou(cm) == pytest.approx((3 / 4 + 1 + 0) / 3)


def test_confusion_matrix_from_labels_ignores_255_and_matches_a_loop():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(17, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 4, size=(17, 23)).astype(np.uint8)
    expected = np.zeros((4, 4), dtype=np.int64)
    for g, p in zip(label.ravel(), pred.ravel()):
        if g != 255:
            expected[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(label, pred, 4), expected)
    # torch tensors are accepted too
    np.testing.assert_array_equal(
        confusion_matrix(torch.from_numpy(label), torch.from_numpy(pred), 4), expected)


def test_accumulator_sums_images_and_summary_names_classes():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1], [2, 255]]), np.array([[0, 1], [1, 2]]))
    cm.update(np.array([[2, 2]]), np.array([[2, 2]]))
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 1, 0], [0, 1, 2]])
    summary = cm.summary(["bg", "a", "b"])
    assert summary["per_class_iou"] == {"bg": 1.0, "a": pytest.approx(0.5),
                                        "b": pytest.approx(2 / 3)}
    assert summary["pixel_accuracy"] == pytest.approx(4 / 5)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match="prediction holds class id 7"):
        confusion_matrix(np.zeros((2, 2), np.int64), np.full((2, 2), 7), 3)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
