"""Region proposals: valid, ranked, filtered, deterministic; context boxes; IoU."""
import numpy as np
import pytest

from deconvnet_ext.data.synthetic import render_scene
from deconvnet_ext.errors import UserError
from deconvnet_ext.proposals import add_context, box_iou, propose, scaled_min_size


@pytest.fixture(scope="module")
def image():
    return render_scene(np.random.default_rng([0, 0, 1]), 96, 128, band=1)[0]


def _check_valid(boxes, height, width):
    assert boxes.dtype == np.int64 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_selective_search_boxes_are_valid_and_deterministic(image):
    a = propose(image, max_proposals=2000)
    _check_valid(a, 96, 128)
    assert len(a) >= 10
    # OpenCV's own order changes from call to call; ours must not
    for _ in range(2):
        np.testing.assert_array_equal(propose(image, max_proposals=2000), a)


def test_ranking_is_a_prefix_order_and_max_proposals_caps(image):
    full = propose(image, max_proposals=2000)
    top = propose(image, max_proposals=7)
    np.testing.assert_array_equal(top, full[:7])
    assert propose(image, max_proposals=0).shape == (0, 4)


def test_min_size_skips_small_boxes(image):
    full = propose(image)
    kept = propose(image, min_size=30)
    short = np.minimum(kept[:, 2] - kept[:, 0], kept[:, 3] - kept[:, 1])
    assert (short >= 30).all()
    big = full[np.minimum(full[:, 2] - full[:, 0], full[:, 3] - full[:, 1]) >= 30]
    np.testing.assert_array_equal(kept, big)  # same ranking, small ones removed
    assert scaled_min_size((375, 500)) == 112 and scaled_min_size((120, 160)) == 36


def test_downscaled_search_maps_boxes_back_into_the_image():
    big = render_scene(np.random.default_rng([0, 0, 2]), 150, 300, band=1)[0]
    boxes = propose(big, work_size=100)
    _check_valid(boxes, 150, 300)
    assert (boxes[:, 2] - boxes[:, 0]).max() > 200  # some box spans most of the width


def test_upscaled_search_stays_in_the_image_and_finds_more(image):
    native = propose(image, work_size=256)
    boxes = propose(image, work_size=256, upscale=True)
    _check_valid(boxes, 96, 128)
    assert len(boxes) > len(native)
    np.testing.assert_array_equal(propose(image, work_size=256, upscale=True), boxes)


def test_edgeboxes_needs_an_existing_model_file(image, tmp_path):
    missing = tmp_path / "no_such_model.yml.gz"
    with pytest.raises(UserError, match="no_such_model.yml.gz"):
        propose(image, method="edgeboxes", edge_model=missing)
    with pytest.raises(UserError, match="edge_model"):
        propose(image, method="edgeboxes")
    junk = tmp_path / "junk.yml.gz"
    junk.write_bytes(b"not a model")
    with pytest.raises(UserError, match="junk.yml.gz"):
        propose(image, method="edgeboxes", edge_model=junk)


def test_bad_arguments_name_the_argument(image):
    with pytest.raises(ValueError, match="method"):
        propose(image, method="sliding")
    with pytest.raises(ValueError, match="image"):
        propose(image.astype(np.float32))
    with pytest.raises(ValueError, match="min_size"):
        propose(image, min_size=-1)


def test_add_context_enlarges_about_the_centre():
    boxes = np.array([[10, 20, 30, 60], [0, 0, 5, 5]])
    out = add_context(boxes, (64, 64), 1.5)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [[5, 10, 35, 70], [-2, -2, 7, 7]])
    np.testing.assert_array_equal(add_context(boxes, (64, 64), 1.0), boxes)
    with pytest.raises(ValueError, match="image_size"):
        add_context(np.array([[0, 0, 70, 10]]), (64, 64), 1.2)
    with pytest.raises(ValueError, match="ratio"):
        add_context(boxes, (64, 64), 0)


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0]])
