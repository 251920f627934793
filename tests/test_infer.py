import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deconvnet_ext import reference
from deconvnet_ext.data.transforms import image_to_tensor
from deconvnet_ext.infer import (VARIANTS, InferenceConfig, crop_and_resize,
                                 deconvnet_scores, ensemble, fcn_scores, predict_variants,
                                 proposal_boxes)

NUM_CLASSES = 5  # the classes of conftest.py's tiny_deconvnet and tiny_fcn


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8)
            for shape in ((40, 56, 3), (40, 56, 3), (33, 47, 3))]


def _boxes():
    # inside, overlapping, past every border (context), one-pixel-thin, whole image
    return [torch.tensor([[0, 0, 56, 40], [5, 3, 30, 25], [-8, -6, 20, 18], [40, 20, 70, 52]]),
            torch.tensor([[10, 10, 11, 30], [2, 2, 50, 38]]),
            torch.tensor([[0, 0, 47, 33], [-5, 10, 60, 40], [20, 5, 30, 15]])]


def test_crop_and_resize_matches_interpolate_of_the_slice():
    torch.manual_seed(0)
    image = torch.randn(3, 20, 30, dtype=torch.float64)
    # 2x downsampling: every sample point falls inside the crop, where both agree exactly
    boxes = [(4, 2, 20, 18), (14, 4, 30, 20), (0, 0, 16, 16)]
    crops = crop_and_resize(image, torch.tensor(boxes), 8)
    for crop, (x0, y0, x1, y1) in zip(crops, boxes):
        expected = F.interpolate(image[None, :, y0:y1, x0:x1], size=(8, 8), mode="bilinear",
                                 align_corners=False)[0]
        torch.testing.assert_close(crop, expected)
    # a box entirely outside the image crops zeros (the mean colour after normalization)
    outside = crop_and_resize(image, torch.tensor([[40, 30, 50, 40]]), 4)
    assert outside.abs().max().item() == 0.0


def test_crop_and_resize_rejects_empty_boxes():
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_and_resize(torch.zeros(3, 8, 8), torch.tensor([[2, 2, 2, 5]]), 4)


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_pipeline_aggregation_equals_reference(tiny_deconvnet, mode):
    images, boxes = _images(), _boxes()
    config = InferenceConfig(aggregation=mode, batch_size=3)  # chunks of 3 within an image
    scores = deconvnet_scores(tiny_deconvnet, images, boxes, config)
    size = tiny_deconvnet.input_size
    for image, image_boxes, got in zip(images, boxes, scores):
        crops = crop_and_resize(image_to_tensor(image), image_boxes, size)
        with torch.no_grad():
            maps = tiny_deconvnet(crops)
        expected = reference.aggregate_proposals(maps, image_boxes, image.shape[:2], mode=mode)
        assert got.shape == (NUM_CLASSES,) + image.shape[:2]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert got.std() > 0  # not a flat map that would pass trivially


def test_ensemble_rules():
    deconv = torch.softmax(torch.randn(3, 4, 5), dim=0)
    fcn = torch.randn(3, 4, 5)
    torch.testing.assert_close(ensemble(deconv, fcn, "mean"),
                               (deconv + torch.softmax(fcn, 0)) / 2)
    product = ensemble(deconv, fcn, "product")
    raw = deconv * fcn.clamp_min(0)
    covered = raw.sum(0) > 0
    torch.testing.assert_close(product[:, covered], (raw / raw.sum(0, keepdim=True))[:, covered])
    torch.testing.assert_close(product[:, ~covered], deconv[:, ~covered])
    with pytest.raises(ValueError, match="rule"):
        ensemble(deconv, fcn, "vote")


def test_predict_variants_gives_every_row(tiny_deconvnet, tiny_fcn):
    images, boxes = _images(), _boxes()
    config = InferenceConfig()
    out = predict_variants(images, tiny_deconvnet, tiny_fcn, config, boxes=boxes)
    scores = deconvnet_scores(tiny_deconvnet, images, boxes, config)
    fcn_logits = fcn_scores(tiny_fcn, images)
    for image, rows, s, f in zip(images, out, scores, fcn_logits):
        assert list(rows) == list(VARIANTS)
        for probs in rows.values():
            assert probs.shape == (NUM_CLASSES,) + image.shape[:2]
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
        np.testing.assert_allclose(rows["DeconvNet"], torch.softmax(s, 0).numpy(), atol=1e-6)
        np.testing.assert_allclose(rows["EDeconvNet"],
                                   ensemble(torch.softmax(s, 0), f, "mean").numpy(), atol=1e-6)
    only = predict_variants(images[:1], None, tiny_fcn, config, variants=["FCN-8s"])
    assert list(only[0]) == ["FCN-8s"]


def test_proposal_boxes_ranked_within_the_image_plus_context():
    rng = np.random.default_rng(3)
    image = np.zeros((60, 80, 3), np.uint8)
    image[:] = (30, 90, 30)
    image[10:40, 12:40] = (220, 40, 40)
    image[25:55, 50:75] = (40, 40, 220)
    image = np.clip(image + rng.integers(0, 12, image.shape), 0, 255).astype(np.uint8)
    config = InferenceConfig(max_proposals=7, min_size=4, context=1.0)
    boxes = proposal_boxes(image, config)
    assert boxes.dtype == torch.int64 and boxes.dim() == 2 and boxes.shape[1] == 4
    assert 1 <= boxes.shape[0] <= 7
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    padded = proposal_boxes(image, InferenceConfig(max_proposals=7, min_size=4, context=1.5))
    assert padded.shape == boxes.shape
    # context only grows each box (it may now reach past the image)
    assert (padded[:, :2] <= boxes[:, :2]).all() and (padded[:, 2:] >= boxes[:, 2:]).all()


def test_proposal_upscale_runs_the_proposer_on_the_enlarged_image():
    from deconvnet_ext.proposals import propose
    rng = np.random.default_rng(5)
    image = np.zeros((60, 80, 3), np.uint8)
    image[:] = (30, 90, 30)
    for y, x in ((5, 5), (20, 40), (40, 12), (45, 60)):  # small objects
        image[y:y + 9, x:x + 7] = rng.integers(60, 255, 3)
    image = np.clip(image + rng.integers(0, 12, image.shape), 0, 255).astype(np.uint8)
    config = InferenceConfig(max_proposals=200, min_size=0, context=1.0, proposal_upscale=True)
    boxes = proposal_boxes(image, config)
    np.testing.assert_array_equal(boxes.numpy(), propose(image, 200, 0, upscale=True))
    native = proposal_boxes(image, InferenceConfig(max_proposals=200, min_size=0, context=1.0))
    np.testing.assert_array_equal(native.numpy(), propose(image, 200, 0))
    assert len(boxes) > len(native)


def test_proposal_upscale_option():
    import argparse
    from deconvnet_ext.infer import add_inference_arguments, inference_config_from_args
    parser = argparse.ArgumentParser()
    add_inference_arguments(parser)
    assert inference_config_from_args(parser.parse_args([])).proposal_upscale is False
    on = inference_config_from_args(parser.parse_args(["--proposal-upscale"]))
    assert on.proposal_upscale is True
    off = parser.parse_args(["--proposal-upscale", "--no-proposal-upscale"])
    assert inference_config_from_args(off).proposal_upscale is False


def test_load_models_gives_the_saved_networks_deconvnet_channels_last_on_cpu(
        tiny_deconvnet, tiny_fcn, tmp_path):
    from deconvnet_ext.checkpoint import save_checkpoint
    from deconvnet_ext.errors import UserError
    from deconvnet_ext.infer import load_models
    save_checkpoint(tmp_path / "dn.pt", tiny_deconvnet)
    save_checkpoint(tmp_path / "fcn.pt", tiny_fcn)
    deconvnet, fcn = load_models(str(tmp_path / "dn.pt"), str(tmp_path / "fcn.pt"),
                                 torch.device("cpu"))
    assert not deconvnet.training and not fcn.training
    conv = next(m for m in deconvnet.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images, boxes = _images(), _boxes()
    config = InferenceConfig(aggregation="max")
    for got, expected in zip(deconvnet_scores(deconvnet, images, boxes, config),
                             deconvnet_scores(tiny_deconvnet, images, boxes, config)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for got, expected in zip(fcn_scores(fcn, images), fcn_scores(tiny_fcn, images)):
        torch.testing.assert_close(got, expected)
    with pytest.raises(UserError, match="expected 'deconvnet'"):
        load_models(str(tmp_path / "fcn.pt"), None, torch.device("cpu"))
