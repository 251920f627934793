"""InferenceConfig.region_crops: infer.deconvnet_image_scores crops each object region
the first aggregation found and aggregates again with those crops added."""
import argparse
import dataclasses

import numpy as np
import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.infer import (InferenceConfig, add_inference_arguments, aggregate_crop_maps,
                                 deconvnet_crop_maps, deconvnet_image_scores, deconvnet_scores,
                                 inference_config_from_args, kept_crops, predict_variants)
from deconvnet_ext.proposal_refinement import region_boxes
from deconvnet_ext.proposal_scorer import ProposalScorer
from deconvnet_ext.proposals import add_context

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def model():
    """A tiny DeconvNet whose maps differ clearly between pixels and crops (the score
    layer widened, as test_infer's), so that their argmax mixes background and objects,
    with an untrained proposal scorer."""
    torch.manual_seed(3)
    net = dx.DeconvNet(num_classes=NUM_CLASSES, arch="tiny").eval()
    with torch.no_grad():
        net.score.weight.mul_(300.0)
        net.score.bias.mul_(300.0)
    net.proposal_scorer = ProposalScorer(NUM_CLASSES).eval()
    return net


def _image_and_boxes(seed=0, height=48, width=64, count=10):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    xy = rng.integers(-4, 40, (count, 2))
    boxes = np.concatenate([xy, xy + rng.integers(8, 30, (count, 2))], 1)
    return image, torch.as_tensor(boxes, dtype=torch.int64)


def _reference(model, image, boxes, config):
    """The two passes by hand: the kept proposal crops, the regions of their aggregation
    (with context), the region crops' maps, everything aggregated again."""
    size = image.shape[:2]
    maps = deconvnet_crop_maps(model, image, boxes, config)
    first = aggregate_crop_maps(maps, boxes, size, config, model.proposal_scorer)
    regions = region_boxes(first.argmax(0))
    if len(regions) == 0:
        return first, 0
    regions = torch.as_tensor(np.asarray(add_context(regions, size, config.context)))
    if config.min_objectness > 0:
        p = model.proposal_scorer.score(maps, boxes, size)
        keep = p >= config.min_objectness
        if not keep.any():
            keep[p.argmax()] = True
        maps, boxes = maps[keep], boxes[keep]
    region_maps = deconvnet_crop_maps(model, image, regions, config)
    every = dataclasses.replace(config, min_objectness=0.0)
    return (aggregate_crop_maps(torch.cat([maps, region_maps]), torch.cat([boxes, regions]),
                                size, every), len(regions))


@pytest.mark.parametrize("min_objectness", [0.0, 0.3, 0.6])
@pytest.mark.parametrize("aggregation", ["max", "topk"])
def test_region_crops_equal_the_two_passes_by_hand(model, min_objectness, aggregation):
    config = InferenceConfig(aggregation=aggregation, topk=3, min_objectness=min_objectness,
                             uncovered_background=0.3, region_crops=True)
    found = 0
    for seed in range(3):
        image, boxes = _image_and_boxes(seed)
        maps = deconvnet_crop_maps(model, image, boxes, config)
        got = deconvnet_image_scores(model, image, boxes, maps, config)
        want, regions = _reference(model, image, boxes, config)
        found += regions
        assert got.shape == (NUM_CLASSES,) + image.shape[:2]
        torch.testing.assert_close(got, want)
    assert found > 0  # the case exercises the second pass


def test_without_region_crops_the_scores_are_the_plain_aggregation(model):
    config = InferenceConfig(aggregation="topk", min_objectness=0.4, uncovered_background=0.3)
    image, boxes = _image_and_boxes(5)
    maps = deconvnet_crop_maps(model, image, boxes, config)
    got = deconvnet_image_scores(model, image, boxes, maps, config)
    assert torch.equal(got, aggregate_crop_maps(maps, boxes, image.shape[:2], config,
                                                model.proposal_scorer))


def test_no_region_found_leaves_the_first_pass():
    """A network that paints background everywhere finds no region: one pass only."""
    torch.manual_seed(0)
    net = dx.DeconvNet(num_classes=NUM_CLASSES, arch="tiny").eval()
    with torch.no_grad():
        net.score.weight.zero_()
        net.score.bias.copy_(torch.tensor([5.0, 0.0, 0.0, 0.0]))
    config = InferenceConfig(region_crops=True)
    image, boxes = _image_and_boxes(1)
    maps = deconvnet_crop_maps(net, image, boxes, config)
    got = deconvnet_image_scores(net, image, boxes, maps, config)
    assert torch.equal(got, aggregate_crop_maps(maps, boxes, image.shape[:2], config))
    assert (got.argmax(0) == 0).all()


def test_kept_crops_follow_the_scorer(model):
    config = InferenceConfig(min_objectness=0.5)
    image, boxes = _image_and_boxes(2)
    maps = deconvnet_crop_maps(model, image, boxes, config)
    p = model.proposal_scorer.score(maps, boxes, image.shape[:2])
    kept_maps, kept_boxes = kept_crops(maps, boxes, image.shape[:2], config,
                                       model.proposal_scorer)
    keep = p >= 0.5
    if not keep.any():
        keep[p.argmax()] = True
    assert torch.equal(kept_boxes, boxes[keep]) and torch.equal(kept_maps, maps[keep])
    every = kept_crops(maps, boxes, image.shape[:2], InferenceConfig())
    assert torch.equal(every[0], maps) and torch.equal(every[1], boxes)
    with pytest.raises(ValueError, match="proposal scorer"):
        kept_crops(maps, boxes, image.shape[:2], config, None)


def test_every_row_uses_the_region_crops(model):
    """deconvnet_scores and predict_variants (the evaluation's path) agree."""
    config = InferenceConfig(aggregation="topk", region_crops=True, uncovered_background=0.3)
    image, boxes = _image_and_boxes(4)
    scores = deconvnet_scores(model, [image], [boxes], config)[0]
    rows = predict_variants([image], model, None, config, use_crf=False, boxes=[boxes])[0]
    np.testing.assert_allclose(rows["DeconvNet"], torch.softmax(scores, 0).numpy(), atol=1e-6)
    plain = deconvnet_scores(model, [image], [boxes],
                             dataclasses.replace(config, region_crops=False))[0]
    assert not torch.equal(scores, plain)


def test_region_crops_option():
    parser = argparse.ArgumentParser()
    add_inference_arguments(parser)
    assert inference_config_from_args(parser.parse_args([])).region_crops is False
    assert inference_config_from_args(parser.parse_args(["--region-crops"])).region_crops
    assert not inference_config_from_args(
        parser.parse_args(["--no-region-crops"])).region_crops


class _Clock:
    """A stand-in for time.perf_counter that moves only when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_stage_timer_counts_a_nested_stage_once(monkeypatch):
    """A stage timed inside another is taken out of the enclosing one, so the entries
    add up to the wall time (the clock is faked; StageTimer itself is real)."""
    from deconvnet_ext import infer

    clock = _Clock()
    monkeypatch.setattr(infer.time, "perf_counter", clock)
    timer = infer.StageTimer()
    with timer("aggregation"):
        clock.now += 1.0
        with timer("network"):
            clock.now += 2.0
            with timer("proposals"):
                clock.now += 4.0
        clock.now += 8.0
    with timer("network"):
        clock.now += 16.0
    assert timer.seconds["aggregation"] == 9.0
    assert timer.seconds["network"] == 18.0
    assert timer.seconds["proposals"] == 4.0
    assert sum(timer.seconds.values()) == clock.now
    with pytest.raises(RuntimeError):  # an exception inside still closes the stage
        with timer("crf"):
            clock.now += 32.0
            raise RuntimeError("boom")
    assert timer.seconds["crf"] == 32.0 and timer._inner == []


class _RecordingTimer:
    """A StageTimer that also records which stages were opened inside which."""

    def __init__(self):
        from deconvnet_ext.infer import StageTimer

        self.timer, self.open, self.calls = StageTimer(), [], []

    def __call__(self, stage, device=None):
        import contextlib

        @contextlib.contextmanager
        def record():
            self.calls.append(tuple(self.open) + (stage,))
            self.open.append(stage)
            try:
                with self.timer(stage, device):
                    yield
            finally:
                self.open.pop()
        return record()


def test_the_region_crops_forward_is_timed_as_network(model):
    """With region crops, network_rows times the second forward pass as "network" (it
    runs inside the aggregation), and the rows are those of an untimed call."""
    from deconvnet_ext.infer import network_rows

    config = InferenceConfig(aggregation="topk", region_crops=True, uncovered_background=0.3)
    image, boxes = _image_and_boxes(4)
    recorder = _RecordingTimer()
    rows = network_rows(image, model, None, config, ("DeconvNet",), boxes, recorder)
    assert ("aggregation", "network") in recorder.calls
    plain = network_rows(image, model, None, config, ("DeconvNet",), boxes)
    np.testing.assert_array_equal(rows["DeconvNet"], plain["DeconvNet"])
    recorder = _RecordingTimer()
    network_rows(image, model, None, dataclasses.replace(config, region_crops=False),
                 ("DeconvNet",), boxes, recorder)
    assert ("aggregation", "network") not in recorder.calls
