"""InferenceConfig.uncovered_background: the background probability that
infer.aggregate_crop_maps gives the pixels no aggregated crop covers."""
import argparse
import dataclasses

import pytest
import torch

from deconvnet_ext.errors import UserError
from deconvnet_ext.infer import (InferenceConfig, add_inference_arguments, aggregate_crop_maps,
                                 inference_config_from_args)
from deconvnet_ext.proposal_refinement import consistent_proposals
from deconvnet_ext.proposal_scorer import ProposalScorer
from deconvnet_ext.topk_aggregation import aggregate_topk_mean


def _covered(boxes, height, width):
    """Reference coverage mask: a plain loop over the boxes, clipped to the image."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.tolist():
        mask[max(y0, 0):max(min(y1, height), 0), max(x0, 0):max(min(x1, width), 0)] = True
    return mask


def _random_crops(count=12, classes=4, height=30, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(-4, 30, (count, 2), generator=g)
    boxes = torch.cat([xy, xy + torch.randint(2, 12, (count, 2), generator=g)], 1)
    return torch.randn(count, classes, 6, 6, generator=g), boxes


@pytest.mark.parametrize("aggregation", ["max", "mean", "topk"])
@pytest.mark.parametrize("probability", [0.05, 0.3, 0.9])
def test_uncovered_pixels_get_exactly_that_background_probability(aggregation, probability):
    maps, boxes = _random_crops()
    H, W, C = 30, 40, maps.shape[1]
    config = InferenceConfig(aggregation=aggregation, topk=3)
    plain = aggregate_crop_maps(maps, boxes, (H, W), config)
    got = aggregate_crop_maps(maps, boxes, (H, W),
                              dataclasses.replace(config, uncovered_background=probability))
    covered = _covered(boxes, H, W)
    assert 0 < int(covered.sum()) < H * W  # the case has both kinds of pixel
    # covered pixels: the aggregation's scores, untouched, bit for bit
    assert torch.equal(got[:, covered], plain[:, covered])
    # uncovered: background has the probability asked for, the rest share what is left
    p = torch.softmax(got, 0)[:, ~covered]
    torch.testing.assert_close(p[0], torch.full_like(p[0], probability))
    torch.testing.assert_close(p[1:], torch.full_like(p[1:], (1 - probability) / (C - 1)))
    # the argmax (the DeconvNet row) is the same as long as background is at least as
    # likely as the uniform 1/C it had there (ties: the first class, background)
    if probability >= 1 / C:
        assert torch.equal(got.argmax(0), plain.argmax(0))
    else:
        assert (got.argmax(0)[~covered] != 0).all()


def test_coverage_follows_the_crops_the_scorer_keeps():
    maps, boxes = _random_crops(seed=1)
    H, W = 30, 40
    scorer = ProposalScorer(4).eval()
    p = scorer.score(maps, boxes, (H, W))
    config = InferenceConfig(aggregation="topk", topk=2, min_objectness=float(p.median()),
                             uncovered_background=0.5)
    keep = p >= config.min_objectness
    got = aggregate_crop_maps(maps, boxes, (H, W), config, scorer)
    covered = _covered(boxes[keep], H, W)
    assert (covered != _covered(boxes, H, W)).any()  # a dropped crop covered more
    expected = aggregate_topk_mean(maps[keep], boxes[keep], (H, W), 2)
    expected[0][~covered] = torch.log(torch.tensor(0.5 * 3 / 0.5))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_coverage_follows_the_proposals_the_refinement_keeps():
    maps, boxes = _random_crops(count=60, seed=2)
    maps[:, 0] += 0.8  # mostly background, a few object regions
    H, W = 30, 40
    config = InferenceConfig(aggregation="topk", topk=3, refine_rounds=1,
                             uncovered_background=0.25)
    keep = consistent_proposals(aggregate_topk_mean(maps, boxes, (H, W), 3), boxes, 0.3)
    assert 0 < int(keep.sum()) < len(keep)
    got = aggregate_crop_maps(maps, boxes, (H, W), config)
    covered = _covered(boxes[keep], H, W)
    assert torch.equal(got[:, covered],
                       aggregate_topk_mean(maps[keep], boxes[keep], (H, W), 3)[:, covered])
    torch.testing.assert_close(torch.softmax(got, 0)[0, ~covered],
                               torch.full((int((~covered).sum()),), 0.25))


def test_no_crop_at_all_makes_the_whole_image_that_background():
    got = aggregate_crop_maps(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, dtype=torch.int64),
                              (5, 7), InferenceConfig(aggregation="max", uncovered_background=0.6))
    torch.testing.assert_close(torch.softmax(got, 0)[0], torch.full((5, 7), 0.6))


def test_a_background_only_model_is_left_as_is():
    maps = torch.full((1, 1, 4, 4), 2.0)
    got = aggregate_crop_maps(maps, torch.tensor([[0, 0, 3, 3]]), (6, 6),
                              InferenceConfig(aggregation="max", uncovered_background=0.6))
    assert torch.equal(got, aggregate_crop_maps(maps, torch.tensor([[0, 0, 3, 3]]), (6, 6),
                                                InferenceConfig(aggregation="max")))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0, float("nan")])
def test_bad_probabilities_are_refused(bad):
    with pytest.raises(ValueError, match="uncovered_background"):
        InferenceConfig(uncovered_background=bad)
    parser = argparse.ArgumentParser()
    add_inference_arguments(parser)
    with pytest.raises(UserError, match="uncovered_background"):
        inference_config_from_args(parser.parse_args(["--uncovered-background", str(bad)]))


def test_the_option_reaches_the_config():
    parser = argparse.ArgumentParser()
    add_inference_arguments(parser)
    assert inference_config_from_args(parser.parse_args([])).uncovered_background == 0.0
    config = inference_config_from_args(parser.parse_args(["--uncovered-background", "0.3"]))
    assert config.uncovered_background == 0.3
