"""The synthetic VOC generator: layout, reproducibility, label semantics, CLI."""
import argparse
import json

import cv2
import numpy as np
import pytest

from deconvnet_ext.data import synthetic
from deconvnet_ext.data.palette import IGNORE_INDEX
from deconvnet_ext.data.synthetic import generate_synthetic_voc, render_scene
from deconvnet_ext.data.voc import VOCSegmentation, instance_boxes
from deconvnet_ext.errors import UserError

SIZE = (72, 96)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "voc"
    return generate_synthetic_voc(root, num_train=12, num_val=4, image_size=SIZE, seed=3,
                                  progress=False)


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_writes_the_voc2012_layout(synth_root):
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationObject"):
        assert (synth_root / sub).is_dir()
    for split, count in (("train", 12), ("val", 4), ("trainval", 16)):
        ids = (synth_root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()
        assert len(ids) == count
        for name in ids:
            assert (synth_root / "JPEGImages" / f"{name}.jpg").is_file()
    meta = json.loads((synth_root / synthetic.META_FILE).read_text())
    assert meta["image_size"] == list(SIZE) and meta["seed"] == 3


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path, synth_root):
    again = generate_synthetic_voc(tmp_path / "again", 12, 4, SIZE, seed=3, progress=False)
    assert _tree_bytes(again) == _tree_bytes(synth_root)
    other = generate_synthetic_voc(tmp_path / "other", 12, 4, SIZE, seed=4, progress=False)
    a, b = _tree_bytes(other), _tree_bytes(synth_root)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("JPEGImages/"))


def test_files_read_back_equal_the_rendered_arrays(synth_root):
    """Round trip: what the renderer drew is what the reader returns (labels exactly,
    the JPEG image up to compression)."""
    ds = VOCSegmentation(synth_root, "train")
    band = json.loads((synth_root / synthetic.META_FILE).read_text())["band"]
    for i in (0, 5, 11):
        rng = np.random.default_rng([3, 0, i])
        image, label, instances = render_scene(rng, *SIZE, band, lead=1 + i % 20)
        sample = ds[i]
        assert sample.name == f"synth_train_{i:06d}"
        np.testing.assert_array_equal(sample.label, label)
        np.testing.assert_array_equal(sample.instances, instances)
        assert sample.image.shape == SIZE + (3,) and sample.image.dtype == np.uint8
        error = sample.image.astype(np.float64) - image
        psnr = 10 * np.log10(255.0 ** 2 / np.mean(error ** 2))
        assert psnr > 30, f"JPEG round trip PSNR {psnr:.1f} dB"


def test_labels_are_consistent_and_carry_the_ignore_band(synth_root):
    ds = VOCSegmentation(synth_root, "trainval")
    band = json.loads((synth_root / synthetic.META_FILE).read_text())["band"]
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    seen_classes = set()
    for i in range(len(ds)):
        s = ds[i]
        # instance map and class map agree on what is object / background / ignore
        np.testing.assert_array_equal(s.label == IGNORE_INDEX, s.instances == IGNORE_INDEX)
        np.testing.assert_array_equal(s.label == 0, s.instances == 0)
        ids = sorted(set(np.unique(s.instances).tolist()) - {0, IGNORE_INDEX})
        assert ids == list(range(1, len(ids) + 1)), "instance ids must be dense"
        boxes = instance_boxes(s)
        assert len(boxes) == len(ids)
        for inst_id, (box, cls) in zip(ids, boxes):
            mask = s.instances == inst_id
            assert 1 <= cls <= 20 and (s.label[mask] == cls).all()
            ys, xs = np.nonzero(mask)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            ring = (cv2.dilate(mask.astype(np.uint8), kernel) > 0) & ~mask
            assert (s.label[ring] == IGNORE_INDEX).all()
            seen_classes.add(cls)
    assert len(seen_classes) >= 8


def test_default_set_has_every_class_and_varied_scales():
    """Statistics over the default-size images (rendered in memory, no files)."""
    height, width = synthetic.DEFAULT_IMAGE_SIZE
    classes, heights, per_image = set(), [], []
    for i in range(150):
        _, label, instances = render_scene(np.random.default_rng([0, 0, i]), height,
                                           width, band=2)
        ids = set(np.unique(instances).tolist()) - {0, IGNORE_INDEX}
        per_image.append(len(ids))
        for k in ids:
            ys, _ = np.nonzero(instances == k)
            heights.append(ys.max() - ys.min() + 1)
            classes.add(int(np.bincount(label[instances == k]).argmax()))
    assert classes == set(range(1, 21))
    assert min(heights) <= 12 and max(heights) >= 0.5 * height
    assert max(per_image) >= 4


def test_regenerating_replaces_the_previous_set(tmp_path):
    root = generate_synthetic_voc(tmp_path / "r", 5, 2, (48, 64), seed=0, progress=False)
    generate_synthetic_voc(root, 2, 1, (48, 64), seed=0, progress=False)
    fresh = generate_synthetic_voc(tmp_path / "f", 2, 1, (48, 64), seed=0, progress=False)
    assert _tree_bytes(root) == _tree_bytes(fresh)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        generate_synthetic_voc(tmp_path / "a", 1, 1, (8, 8), progress=False)
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic_voc(tmp_path / "b", -1, 1, progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "precious.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate_synthetic_voc(tmp_path / "c", 1, 1, progress=False)


def test_cli_writes_the_dataset(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synthetic.add_cli_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "d"), "--num-train", "2",
                              "--num-val", "1", "--size", "48x64", "--seed", "1"])
    assert synthetic.run_cli(args) == 0
    ds = VOCSegmentation(tmp_path / "d", "val")
    assert len(ds) == 1 and ds[0].image.shape == (48, 64, 3)
    assert "wrote 2 train + 1 val" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--size", "big"])
