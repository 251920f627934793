import numpy as np
import pytest
import torch

pytest.importorskip("pydensecrf.densecrf")

from deconvnet_ext.crf import CRFParams, dense_crf  # noqa: E402


def _scene(seed: int = 0):
    """A clean 3-class label (background, a disc, a bar) and an image whose colours follow
    it, plus a probability map that is the label corrupted by heavy per-pixel noise."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    yy, xx = np.mgrid[0:h, 0:w]
    label = np.zeros((h, w), np.int64)
    label[(yy - 24) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 1
    label[8:40, 44:54] = 2
    colours = np.array([[40, 60, 40], [200, 40, 40], [40, 40, 210]], np.float64)
    image = colours[label] + rng.normal(0, 8, size=(h, w, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    logits = 2.0 * np.eye(3)[label].transpose(2, 0, 1) + rng.normal(0, 1.5, size=(3, h, w))
    probs = torch.softmax(torch.from_numpy(logits), dim=0).numpy().astype(np.float32)
    return image, label, probs


def test_crf_improves_agreement_with_the_clean_label():
    image, label, probs = _scene()
    before = (probs.argmax(0) == label).mean()
    refined = dense_crf(probs, image)
    after = (refined.argmax(0) == label).mean()
    assert refined.shape == probs.shape and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-4)
    assert before < 0.9           # the noise really hurts ...
    assert after > before + 0.05  # ... and the CRF repairs a good part of it
    assert after > 0.95


def test_crf_zero_iterations_keeps_the_argmax_and_accepts_tensors():
    image, _, probs = _scene(1)
    refined = dense_crf(torch.from_numpy(probs), image, CRFParams(iterations=0))
    # zero mean-field steps: the marginals are the softmax of the unary, i.e. probs itself
    np.testing.assert_allclose(refined, probs, atol=1e-5)


def test_crf_rejects_mismatched_image():
    _, _, probs = _scene()
    with pytest.raises(ValueError, match="image must be uint8"):
        dense_crf(probs, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="probs must be"):
        dense_crf(probs[0], np.zeros((48, 64, 3), np.uint8))
