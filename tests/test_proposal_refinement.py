"""Self-consistent proposal selection (proposal_refinement) and its use in the
pipeline's aggregation (infer.aggregate_crop_maps with refine_rounds)."""
import dataclasses

import numpy as np
import pytest
import torch

from deconvnet_ext.infer import InferenceConfig, aggregate_crop_maps
from deconvnet_ext.proposal_refinement import consistent_proposals, region_boxes
from deconvnet_ext.proposals import box_iou
from deconvnet_ext.topk_aggregation import aggregate_topk_mean


def test_region_boxes_are_the_8_connected_object_regions():
    labels = np.zeros((10, 12), np.int64)
    labels[1:4, 1:3] = 3          # one region of two classes, joined diagonally
    labels[4, 3] = 5
    labels[6:9, 8:12] = 2         # a second region touching the right edge
    labels[0, 11] = 7             # a single-pixel speck: under the minimum area
    got = region_boxes(labels)
    assert sorted(got.tolist()) == [[1, 1, 4, 5], [8, 6, 12, 9]]
    assert region_boxes(labels, min_area=1).shape == (3, 4)
    assert region_boxes(torch.from_numpy(labels)).tolist() == got.tolist()
    assert region_boxes(np.zeros((5, 5), np.int64)).shape == (0, 4)
    with pytest.raises(ValueError, match="labels must be"):
        region_boxes(np.zeros((2, 5, 5)))


def _scores_with_objects(height, width, objects):
    """(C,H,W) scores whose argmax is background except class c on each (box, c)."""
    scores = torch.zeros(4, height, width)
    scores[0] = 1.0
    for (x0, y0, x1, y1), c in objects:
        scores[c, y0:y1, x0:x1] = 2.0
    return scores


def test_consistent_proposals_keeps_exactly_the_boxes_matching_a_region():
    scores = _scores_with_objects(40, 50, [((5, 5, 15, 20), 1), ((30, 10, 45, 30), 2)])
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 30, (200, 2))
    wh = rng.integers(2, 20, (200, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [50, 40])], 1)
    regions = np.array([[5, 5, 15, 20], [30, 10, 45, 30]])
    for iou in (0.2, 0.3, 0.5, 1.0):
        keep = consistent_proposals(scores, torch.from_numpy(boxes), iou)
        expected = box_iou(boxes, regions).max(1) >= iou
        assert keep.dtype == torch.bool and keep.tolist() == expected.tolist()
    assert 0 < int(expected.sum()) < len(boxes) or iou == 1.0
    exact = consistent_proposals(scores, torch.tensor([[5, 5, 15, 20], [0, 0, 50, 40]]), 1.0)
    assert exact.tolist() == [True, False]


def test_consistent_proposals_keeps_none_without_regions_and_checks_arguments():
    background = _scores_with_objects(20, 20, [])
    assert consistent_proposals(background, torch.tensor([[0, 0, 5, 5]]), 0.3).tolist() == [False]
    assert consistent_proposals(background, torch.zeros(0, 4, dtype=torch.int64), 0.3).shape == (0,)
    with pytest.raises(ValueError, match="iou"):
        consistent_proposals(background, torch.tensor([[0, 0, 5, 5]]), 0.0)
    with pytest.raises(ValueError, match="scores must be"):
        consistent_proposals(background[0], torch.tensor([[0, 0, 5, 5]]), 0.3)


def test_refinement_drops_the_crops_that_paint_a_stray_object():
    """Five crops agree on an object; five big crops also paint a stray object in one
    corner. Top-5 alone paints both; one round keeps only the crops that match a region
    the first pass found at the object, so the stray object goes."""
    H, W, C, S = 40, 40, 3, 8
    obj, stray = (10, 10, 20, 20), (30, 30, 40, 40)
    boxes, maps = [], []
    for d in range(5):  # tight crops around the object, each paints it
        box = (obj[0] - d % 2, obj[1] - d // 3, obj[2] + d % 3, obj[3] + 1)
        boxes.append(box)
        m = torch.zeros(C, S, S)
        m[0] = 1.0
        m[1, 1:7, 1:7] = 3.0
        maps.append(m)
    for d in range(5):  # big crops over the lower right quarter, painting a corner
        boxes.append((20 - d, 20, 40, 40))
        m = torch.zeros(C, S, S)
        m[0] = 1.0
        m[2, 4:, 4:] = 3.0
        maps.append(m)
    maps, boxes = torch.stack(maps), torch.tensor(boxes)
    config = InferenceConfig(aggregation="topk", topk=5)
    plain = aggregate_crop_maps(maps, boxes, (H, W), config).argmax(0)
    assert (plain[32:, 32:] == 2).all() and (plain[13:17, 13:17] == 1).all()
    refined = aggregate_crop_maps(maps, boxes, (H, W),
                                  dataclasses.replace(config, refine_rounds=1)).argmax(0)
    assert (refined[32:, 32:] == 0).all() and (refined[13:17, 13:17] == 1).all()


def test_refinement_rounds_equal_aggregating_the_kept_proposals():
    rng = torch.Generator().manual_seed(0)
    H, W = 30, 40
    xy = torch.randint(0, 25, (60, 2), generator=rng)
    boxes = torch.cat([xy, xy + torch.randint(3, 15, (60, 2), generator=rng)], 1)
    maps = torch.randn(60, 4, 6, 6, generator=rng)
    maps[:, 0] += 0.8  # mostly background, a few object regions
    config = InferenceConfig(aggregation="topk", topk=3)
    scores = aggregate_topk_mean(maps, boxes, (H, W), 3)
    for rounds in (1, 2):
        keep = consistent_proposals(scores, boxes, 0.3)
        assert 0 < int(keep.sum()) < 60
        scores = aggregate_topk_mean(maps[keep], boxes[keep], (H, W), 3)
        got = aggregate_crop_maps(maps, boxes, (H, W),
                                  dataclasses.replace(config, refine_rounds=rounds))
        torch.testing.assert_close(got, scores, rtol=0, atol=0)


def test_refinement_keeping_nothing_gives_zero_scores():
    maps = torch.zeros(2, 3, 4, 4)
    maps[:, 0] = 1.0  # every crop answers background: no region, nothing kept
    got = aggregate_crop_maps(maps, torch.tensor([[0, 0, 8, 8], [4, 4, 12, 12]]), (12, 12),
                              InferenceConfig(aggregation="max", refine_rounds=1))
    assert got.shape == (3, 12, 12) and not got.any()


@pytest.mark.parametrize("field,value", [("refine_rounds", -1), ("refine_rounds", 1.5),
                                         ("refine_rounds", True), ("refine_iou", 0.0),
                                         ("refine_iou", 1.5)])
def test_bad_refine_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        InferenceConfig(**{field: value})
