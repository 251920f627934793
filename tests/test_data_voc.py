"""The VOC2012 reader: palette PNGs, and every kind of bad file named in the error."""
import shutil

import numpy as np
import pytest
from PIL import Image

from deconvnet_ext.data.palette import (IGNORE_INDEX, colorize, read_index_png,
                                        voc_colormap, write_palette_png)
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation, instance_boxes
from deconvnet_ext.errors import UserError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    return generate_synthetic_voc(root, 4, 2, (48, 64), seed=0, progress=False)


@pytest.fixture
def root(pristine, tmp_path):
    """A private copy each test may damage."""
    copy = tmp_path / "VOC2012"
    shutil.copytree(pristine, copy)
    return copy


def test_voc_colormap_matches_the_devkit():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]        # aeroplane
    assert cmap[15].tolist() == [192, 128, 128]   # person
    assert cmap[20].tolist() == [0, 64, 128]      # tvmonitor
    assert cmap[255].tolist() == [224, 224, 192]  # ignore band


def test_palette_png_round_trip_keeps_indices_not_colours(tmp_path):
    indices = np.random.default_rng(0).integers(0, 21, (9, 13)).astype(np.uint8)
    indices[0, :] = IGNORE_INDEX
    write_palette_png(tmp_path / "l.png", indices)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.convert("RGB")), colorize(indices))
    np.testing.assert_array_equal(read_index_png(tmp_path / "l.png"), indices)


def test_reader_accepts_voc2012_or_its_parent(pristine):
    a = VOCSegmentation(pristine, "train")
    b = VOCSegmentation(pristine.parent, "train")
    assert len(a) == len(b) == 4 and a.names == b.names
    s = a[-1]
    assert s.image.dtype == s.label.dtype == s.instances.dtype == np.uint8
    assert s.image.shape == (48, 64, 3) and s.label.shape == s.instances.shape == (48, 64)
    with pytest.raises(IndexError):
        a[4]


def test_instance_boxes_take_the_majority_class():
    from deconvnet_ext.data.voc import Sample
    label = np.zeros((10, 10), np.uint8)
    inst = np.zeros((10, 10), np.uint8)
    inst[2:5, 3:8] = 1
    label[2:5, 3:8] = 7
    label[2, 3] = 9            # a stray pixel of another class is outvoted
    inst[6:9, 0:2] = 2
    label[6:9, 0:2] = 15
    label[6, 0] = IGNORE_INDEX  # ignore pixels do not vote
    s = Sample("x", np.zeros((10, 10, 3), np.uint8), label, inst)
    assert instance_boxes(s) == [([3, 2, 8, 5], 7), ([0, 6, 2, 9], 15)]
    label[6:9, 0:2] = 0
    with pytest.raises(UserError, match="instance 2"):
        instance_boxes(s)


def _first(root, split="train"):
    return (root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()[0]


def test_missing_image_is_named(root):
    name = _first(root)
    (root / "JPEGImages" / f"{name}.jpg").unlink()
    with pytest.raises(UserError, match=f"JPEGImages/{name}.jpg"):
        VOCSegmentation(root, "train")


def test_id_listed_without_files_is_named(root):
    with open(root / "ImageSets/Segmentation/val.txt", "a") as f:
        f.write("2099_000001\n")
    with pytest.raises(UserError, match="2099_000001") as err:
        VOCSegmentation(root, "val")
    assert "val.txt" in str(err.value)


def test_image_label_size_mismatch_is_named(root):
    name = _first(root)
    Image.new("RGB", (50, 40)).save(root / "JPEGImages" / f"{name}.jpg")
    ds = VOCSegmentation(root, "train")
    with pytest.raises(UserError, match=f"JPEGImages/{name}.jpg.*differs"):
        ds[0]


def test_instance_label_size_mismatch_is_named(root):
    name = _first(root)
    write_palette_png(root / "SegmentationObject" / f"{name}.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(UserError, match=f"SegmentationObject/{name}.png"):
        VOCSegmentation(root, "train")[0]


def test_rgb_label_is_refused_and_named(root):
    name = _first(root)
    path = root / "SegmentationClass" / f"{name}.png"
    with Image.open(path) as im:
        im.convert("RGB").save(path)  # what an image editor does to a VOC label
    with pytest.raises(UserError, match=f"SegmentationClass/{name}.png.*'RGB'"):
        VOCSegmentation(root, "train")[0]


def test_out_of_range_class_is_named(root):
    name = _first(root)
    write_palette_png(root / "SegmentationClass" / f"{name}.png",
                      np.full((48, 64), 40, np.uint8))
    with pytest.raises(UserError, match=f"{name}.png: class id 40"):
        VOCSegmentation(root, "train")[0]


def test_corrupt_files_are_named(root):
    name = _first(root)
    (root / "JPEGImages" / f"{name}.jpg").write_bytes(b"not a jpeg")
    (root / "SegmentationObject" / f"{name}.png").write_bytes(b"\x89PNG broken")
    ds = VOCSegmentation(root, "train")
    with pytest.raises(UserError, match=f"SegmentationObject/{name}.png"):
        ds[0]
    write_palette_png(root / "SegmentationObject" / f"{name}.png",
                      np.zeros((48, 64), np.uint8))
    with pytest.raises(UserError, match=f"JPEGImages/{name}.jpg"):
        ds[0]


def test_bad_root_and_split_are_named(root, tmp_path):
    with pytest.raises(UserError, match="SegmentationObject"):
        shutil.rmtree(root / "SegmentationObject")
        VOCSegmentation(root, "train")
    with pytest.raises(UserError, match="not a directory"):
        VOCSegmentation(tmp_path / "nope", "train")


def test_unknown_split_is_named(pristine):
    with pytest.raises(UserError, match="test.txt"):
        VOCSegmentation(pristine, "test")


def test_cached_samples_equal_fresh_decodes_and_are_read_only(pristine):
    cached = VOCSegmentation(pristine, "train")
    fresh = VOCSegmentation(pristine, "train", cache_bytes=0)
    for index in (0, 3, -1, 0):  # index 0 twice: the second read comes from the cache
        a, b = cached[index], fresh[index]
        assert a.name == b.name
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x, y)
            assert not x.flags.writeable and not y.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        cached[0].image[0, 0, 0] = 1


def test_cache_serves_what_it_read_first_and_respects_its_byte_cap(root):
    one_sample = 48 * 64 * 3 + 2 * 48 * 64  # image + label + instances bytes
    datasets = {cap: VOCSegmentation(root, "train", cache_bytes=cap)
                for cap in (0, one_sample, 4 * one_sample)}
    before = {cap: [ds[i].image.copy() for i in range(4)] for cap, ds in datasets.items()}
    for name in datasets[0].names:  # rewrite every image on disk
        path = root / "JPEGImages" / f"{name}.jpg"
        Image.fromarray(np.full((48, 64, 3), 7, np.uint8)).save(path)
    for cap, ds in datasets.items():
        stale = [np.array_equal(ds[i].image, before[cap][i]) for i in range(4)]
        # the cache keeps the samples read first, up to its cap; the rest are re-read
        assert stale == [i < cap // one_sample for i in range(4)], cap


def test_bad_cache_bytes_are_refused(pristine):
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="cache_bytes"):
            VOCSegmentation(pristine, "train", cache_bytes=bad)
