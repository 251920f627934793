"""InferenceConfig.flip: test-time mirroring of both networks (infer.segment_crops,
infer.fcn_scores), and that every DeconvNet path (aggregation, proposal scorer,
predict_variants) reads the mirror-averaged maps. The networks are conftest.py's."""
import argparse

import numpy as np
import pytest
import torch

from deconvnet_ext.infer import (InferenceConfig, add_inference_arguments, crop_and_resize,
                                 deconvnet_crop_maps, deconvnet_scores, fcn_scores,
                                 inference_config_from_args, predict_variants, segment_crops,
                                 _image_tensor)


def _image(seed=0, height=40, width=56):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _boxes():
    return torch.tensor([[0, 0, 56, 40], [5, 3, 30, 25], [-8, -6, 20, 18], [40, 20, 70, 52]])


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_segment_crops_flip_is_the_mean_of_both_views(tiny_deconvnet, batch_size):
    """Against the definition, computed by hand one crop at a time."""
    crops = crop_and_resize(_image_tensor(_image()), _boxes(), tiny_deconvnet.input_size)
    got = segment_crops(tiny_deconvnet, crops, batch_size, flip=True)
    with torch.inference_mode():
        for k in range(len(crops)):
            x = crops[k:k + 1]
            want = (tiny_deconvnet(x) + tiny_deconvnet(x.flip(-1)).flip(-1)) / 2
            torch.testing.assert_close(got[k:k + 1], want, rtol=1e-4, atol=1e-3)
    plain = segment_crops(tiny_deconvnet, crops, batch_size)
    assert not torch.allclose(got, plain)  # the mirrored view does change the maps


def test_flipped_maps_are_mirror_equivariant(tiny_deconvnet, tiny_fcn):
    """With flip, a mirrored input gives exactly the mirrored scores: both views run, so
    the network's own left-right asymmetry cancels (bit for bit: the same batches)."""
    crops = crop_and_resize(_image_tensor(_image(1)), _boxes(), tiny_deconvnet.input_size)
    maps = segment_crops(tiny_deconvnet, crops, 64, flip=True)
    mirrored = segment_crops(tiny_deconvnet, crops.flip(-1), 64, flip=True)
    assert torch.equal(mirrored, maps.flip(-1))
    image = _image(2, 33, 47)
    logits = fcn_scores(tiny_fcn, [image], flip=True)[0]
    mirrored = fcn_scores(tiny_fcn, [np.ascontiguousarray(image[:, ::-1])], flip=True)[0]
    assert torch.equal(mirrored, logits.flip(-1))
    plain = fcn_scores(tiny_fcn, [image])[0]
    assert not torch.equal(plain, logits)
    assert not torch.equal(fcn_scores(tiny_fcn, [np.ascontiguousarray(image[:, ::-1])])[0],
                           plain.flip(-1))  # without flip the network is not symmetric


def test_fcn_scores_flip_is_the_mean_of_both_views(tiny_fcn):
    image = _image(3, 33, 47)
    x = _image_tensor(image)[None]
    with torch.inference_mode():
        want = (tiny_fcn(x) + tiny_fcn(x.flip(-1)).flip(-1))[0] / 2
    torch.testing.assert_close(fcn_scores(tiny_fcn, [image], flip=True)[0], want,
                               rtol=1e-5, atol=1e-5)


def test_every_row_reads_the_mirrored_maps(tiny_deconvnet, tiny_fcn):
    """predict_variants with flip: DeconvNet is the aggregation of the mirror-averaged
    crop maps, FCN-8s the softmax of the mirror-averaged logits."""
    config = InferenceConfig(aggregation="topk", uncovered_background=0.3, flip=True)
    image, boxes = _image(4), _boxes()
    rows = predict_variants([image], tiny_deconvnet, tiny_fcn, config, use_crf=False, boxes=[boxes])[0]
    scores = deconvnet_scores(tiny_deconvnet, [image], [boxes], config)[0]
    np.testing.assert_allclose(rows["DeconvNet"], torch.softmax(scores, 0).numpy(), atol=1e-6)
    maps = deconvnet_crop_maps(tiny_deconvnet, image, boxes, config)
    crops = crop_and_resize(_image_tensor(image), boxes, tiny_deconvnet.input_size)
    assert torch.equal(maps, segment_crops(tiny_deconvnet, crops, config.batch_size, flip=True))
    np.testing.assert_allclose(rows["FCN-8s"],
                               torch.softmax(fcn_scores(tiny_fcn, [image], flip=True)[0], 0).numpy(),
                               atol=1e-6)


def test_the_proposal_scorer_is_fitted_on_the_mirrored_maps(tiny_deconvnet, tmp_path):
    """training_crops sees the maps inference will score."""
    from deconvnet_ext.data.synthetic import generate_synthetic_voc
    from deconvnet_ext.data.voc import VOCSegmentation
    from deconvnet_ext.infer import proposal_boxes
    from deconvnet_ext.proposal_scorer import crop_features, training_crops

    root = generate_synthetic_voc(tmp_path / "voc", num_train=2, num_val=1, seed=11,
                                  progress=False)
    data = VOCSegmentation(root, "train")
    config = InferenceConfig(max_proposals=6, min_size=0, flip=True)
    features, _, _ = training_crops(tiny_deconvnet, data, config, 1, progress=False)
    sample = data[0]
    boxes = proposal_boxes(sample.image, config)
    maps = deconvnet_crop_maps(tiny_deconvnet, sample.image, boxes, config)
    torch.testing.assert_close(features, crop_features(maps, boxes, sample.label.shape))
    plain = training_crops(tiny_deconvnet, data, InferenceConfig(max_proposals=6, min_size=0),
                           1, progress=False)[0]
    assert not torch.equal(features, plain)


def test_flip_option():
    parser = argparse.ArgumentParser()
    add_inference_arguments(parser)
    assert InferenceConfig().flip is False  # the paper's inference
    assert inference_config_from_args(parser.parse_args([])).flip is False
    assert inference_config_from_args(parser.parse_args(["--flip"])).flip is True
    assert inference_config_from_args(parser.parse_args(["--no-flip"])).flip is False
    from deconvnet_ext.cli import build_parser
    args = build_parser("demo").parse_args(["demo"])
    assert inference_config_from_args(args).flip is False  # measured: see InferenceConfig
    args = build_parser("demo").parse_args(["demo", "--flip"])
    assert inference_config_from_args(args).flip is True
