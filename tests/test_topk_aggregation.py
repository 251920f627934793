"""aggregate_topk_mean against a brute-force reference: every pasted map stacked (K,C,H,W),
torch.topk over K, the mean of the finite ones, floored at 0."""
import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext.infer import InferenceConfig, aggregate_crop_maps
from deconvnet_ext.topk_aggregation import aggregate_topk_mean


def _brute_force(maps, boxes, size, k):
    height, width = size
    stack = torch.full((maps.shape[0], maps.shape[1], height, width), float("-inf"),
                       dtype=maps.dtype)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        resized = F.interpolate(maps[i:i + 1], size=(y1 - y0, x1 - x0), mode="bilinear",
                                align_corners=False)[0]
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if cx1 > cx0 and cy1 > cy0:
            stack[i, :, cy0:cy1, cx0:cx1] = resized[:, cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    top = stack.topk(min(k, stack.shape[0]), dim=0).values
    finite = torch.isfinite(top)
    mean = torch.where(finite, top, 0).sum(0) / finite.sum(0).clamp_min(1)
    return mean.clamp_min(0)


def _random_case(seed, count=25, channels=4, size=(23, 31)):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(count, channels, 7, 9, generator=g, dtype=torch.float64)
    corner = torch.randint(-6, 30, (count, 2), generator=g)
    extent = torch.randint(1, 18, (count, 2), generator=g)
    boxes = torch.cat([corner, corner + extent], 1)  # some past the edges, some outside
    return maps, boxes, size


@pytest.mark.parametrize("k", [1, 2, 3, 5, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_mean_equals_brute_force(k, seed):
    maps, boxes, size = _random_case(seed)
    got = aggregate_topk_mean(maps, boxes, size, k)
    torch.testing.assert_close(got, _brute_force(maps, boxes, size, k), rtol=1e-12, atol=1e-12)
    assert got.shape == (maps.shape[1],) + size and got.dtype == maps.dtype


def test_k1_is_the_ops_max():
    maps, boxes, size = _random_case(3)
    maps = maps.float()
    got = aggregate_topk_mean(maps, boxes, size, 1)
    expected = dx.aggregate_proposals(maps, boxes, image_size=size, mode="max")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # op's bilinear rounding


def test_a_single_outlier_no_longer_decides_a_pixel():
    # three crops say class 1 mildly over the whole image, one says class 2 strongly
    maps = torch.zeros(4, 3, 2, 2)
    maps[:3, 1] = 2.0
    maps[3, 2] = 5.0
    boxes = torch.tensor([[0, 0, 4, 4]] * 4)
    assert dx.aggregate_proposals(maps, boxes, image_size=(4, 4), mode="max").argmax(0).eq(2).all()
    assert aggregate_topk_mean(maps, boxes, (4, 4), 3).argmax(0).eq(1).all()


def test_uncovered_pixels_and_empty_input_are_zero():
    maps = torch.full((1, 2, 3, 3), 4.0)
    got = aggregate_topk_mean(maps, torch.tensor([[0, 0, 2, 2]]), (5, 5), 3)
    assert got[:, :2, :2].eq(4.0).all() and got[:, 2:, :].eq(0).all() and got[:, :, 2:].eq(0).all()
    empty = aggregate_topk_mean(torch.zeros(0, 2, 3, 3), torch.zeros(0, 4, dtype=torch.int64),
                                (4, 6), 5)
    assert empty.shape == (2, 4, 6) and empty.eq(0).all()


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_bad_k_is_refused(k):
    with pytest.raises(ValueError, match="k must be"):
        aggregate_topk_mean(torch.zeros(1, 2, 3, 3), torch.tensor([[0, 0, 2, 2]]), (4, 4), k)
    with pytest.raises(ValueError, match="topk must be"):
        InferenceConfig(aggregation="topk", topk=k)


def test_nan_propagates_like_the_ops_max():
    maps = torch.ones(3, 2, 2, 2)
    maps[1, 0, 0, 0] = float("nan")
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2], [2, 2, 4, 4]])
    got = aggregate_topk_mean(maps, boxes, (4, 4), 2)
    op = dx.aggregate_proposals(maps, boxes, image_size=(4, 4), mode="max")
    assert torch.equal(got.isnan(), op.isnan()) and bool(got.isnan().any())
    assert torch.equal(got[~got.isnan()], op[~op.isnan()])


def test_bad_maps_and_boxes_are_refused():
    with pytest.raises(ValueError, match="maps"):
        aggregate_topk_mean(torch.zeros(2, 3, 3), torch.tensor([[0, 0, 2, 2]]), (4, 4), 2)
    with pytest.raises(ValueError, match="boxes"):
        aggregate_topk_mean(torch.zeros(2, 2, 3, 3), torch.tensor([[0, 0, 2, 2]]), (4, 4), 2)
    with pytest.raises(ValueError, match="empty"):
        aggregate_topk_mean(torch.zeros(1, 2, 3, 3), torch.tensor([[2, 0, 2, 2]]), (4, 4), 2)


def test_pipeline_uses_it_for_topk():
    maps, boxes, size = _random_case(4)
    maps = maps.float()
    got = aggregate_crop_maps(maps, boxes, size, InferenceConfig(aggregation="topk", topk=4))
    torch.testing.assert_close(got, aggregate_topk_mean(maps, boxes, size, 4))
