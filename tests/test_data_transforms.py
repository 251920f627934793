"""Image/label transforms: normalisation, resizing, box crops."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deconvnet_ext.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, MEAN_RGB_UINT8,
                                           crop_image, crop_label, image_to_tensor,
                                           label_to_tensor, resize_image, resize_label)


def _image(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_image_to_tensor_normalises_with_imagenet_stats():
    img = _image()
    x = image_to_tensor(img)
    assert x.dtype == torch.float32 and x.shape == (3, 20, 30)
    expected = (img.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        image_to_tensor(img.astype(np.float32))


def test_label_to_tensor_keeps_ids():
    lab = np.array([[0, 255], [20, 3]], np.uint8)
    t = label_to_tensor(lab)
    assert t.dtype == torch.int64 and t.tolist() == [[0, 255], [20, 3]]


def test_resize_image_is_bilinear_and_label_nearest():
    img = _image(16, 16)
    up = resize_image(img, (32, 48))
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(),
                        size=(32, 48), mode="bilinear", align_corners=False)[0]
    assert up.shape == (32, 48, 3)
    assert np.abs(up.astype(np.float64) - ref.permute(1, 2, 0).numpy()).max() <= 1.0
    lab = np.random.default_rng(1).integers(0, 21, (16, 16)).astype(np.uint8)
    big = resize_label(lab, 32)
    assert set(np.unique(big)) <= set(np.unique(lab))
    np.testing.assert_array_equal(big[::2, ::2], lab)


def test_crop_of_the_whole_image_is_the_identity_and_flip_mirrors():
    img = _image()
    np.testing.assert_array_equal(crop_image(img, [0, 0, 30, 20], (20, 30)), img)
    np.testing.assert_array_equal(crop_image(img, [0, 0, 30, 20], (20, 30), flip=True),
                                  img[:, ::-1])
    lab = np.random.default_rng(2).integers(0, 21, (20, 30)).astype(np.uint8)
    np.testing.assert_array_equal(crop_label(lab, [0, 0, 30, 20], (20, 30)), lab)
    np.testing.assert_array_equal(crop_label(lab, [5, 4, 15, 12], (8, 10), flip=True),
                                  lab[4:12, 5:15][:, ::-1])


def test_crop_matches_interpolate_of_the_region():
    img = _image(40, 40)
    out = crop_image(img, [8, 4, 24, 36], (64, 32))  # 16 wide x 32 tall -> 32 x 64
    region = torch.from_numpy(img[4:36, 8:24]).permute(2, 0, 1)[None].double()
    ref = F.interpolate(region, size=(64, 32), mode="bilinear", align_corners=False)[0]
    inner = (slice(1, -1), slice(1, -1))  # borders: cv2 samples the neighbour pixels
    diff = np.abs(out.astype(np.float64) - ref.permute(1, 2, 0).numpy())[inner]
    assert diff.max() <= 1.0


def test_crop_outside_the_image_pads_mean_and_ignore():
    img = _image()
    out = crop_image(img, [-40, -40, -10, -20], (5, 5))
    assert (out == np.array(MEAN_RGB_UINT8, np.uint8)).all()
    assert image_to_tensor(out).abs().max() < 0.02
    lab = np.zeros((20, 30), np.uint8)
    assert (crop_label(lab, [-40, -40, -10, -20], 5) == 255).all()
    with pytest.raises(ValueError, match="box"):
        crop_image(img, [5, 5, 5, 9], 4)
