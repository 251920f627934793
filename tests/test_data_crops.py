"""Instance-crop training sets (stages 1 and 2)."""
import numpy as np
import pytest
import torch

from deconvnet_ext.data.crops import InstanceCrops
from deconvnet_ext.data.palette import IGNORE_INDEX
from deconvnet_ext.data.synthetic import generate_synthetic_voc
from deconvnet_ext.data.voc import VOCSegmentation, instance_records
from deconvnet_ext.proposals import box_iou

S = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = generate_synthetic_voc(tmp_path_factory.mktemp("crops") / "voc", 8, 0, (72, 96),
                                  seed=5, progress=False)
    return VOCSegmentation(root, "train")


def _all_records(dataset):
    return [instance_records(*dataset.load_annotation(i)) for i in range(len(dataset))]


def test_stage1_has_one_crop_per_instance_labelled_alone(dataset):
    crops = InstanceCrops(dataset, S, stage=1, progress=False)
    records = _all_records(dataset)
    assert len(crops) == sum(len(r) for r in records)
    for i in range(len(crops)):
        image, label = crops[i]
        assert image.shape == (3, S, S) and image.dtype == torch.float32
        assert label.shape == (S, S) and label.dtype == torch.int64
        cls = int(crops.items[i, 5])
        values = set(label.unique().tolist())
        assert values <= {0, cls, IGNORE_INDEX}, (i, values)
        assert cls in values


def test_stage1_crop_is_centred_on_its_instance(dataset):
    """Without mirror/random offset ambiguity: the instance covers the crop centre
    region in the label (the box is enlarged only 1.2x)."""
    crops = InstanceCrops(dataset, S, stage=1, mirror=False, progress=False)
    for i in range(len(crops)):
        _, label = crops[i]
        cls = int(crops.items[i, 5])
        fraction = (label == cls).float().mean().item()
        assert fraction > 0.05, (i, fraction)


def test_crops_are_reproducible_per_epoch_and_index(dataset):
    a = InstanceCrops(dataset, S, stage=1, seed=1, progress=False)
    b = InstanceCrops(dataset, S, stage=1, seed=1, progress=False)
    for i in (0, 3):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # another epoch draws other crops/mirrors for at least some items
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    a.set_epoch(1)
    assert torch.equal(a[2][0], b[2][0])
    # torch's global generator untouched by seeded crops
    torch.manual_seed(0)
    a[0]
    after_crop = torch.rand(2)
    torch.manual_seed(0)
    assert torch.equal(after_crop, torch.rand(2))


def test_unseeded_crops_follow_torch_global_generator(dataset):
    crops = InstanceCrops(dataset, S, stage=1, progress=False)
    draws = []
    for _ in range(2):
        torch.manual_seed(123)
        draws.append([crops[i] for i in range(6)])
    for (xa, ya), (xb, yb) in zip(*draws):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    torch.manual_seed(124)
    other = [crops[i] for i in range(6)]
    assert any(not torch.equal(x, y[0]) for (x, _), y in zip(draws[0], other))


def test_stage2_jitter_crops_overlap_instances_and_label_every_class(dataset):
    crops = InstanceCrops(dataset, S, stage=2, proposals="jitter", progress=False)
    records = _all_records(dataset)
    for row in crops.items:
        i, box, cls = row[0], row[1:5], row[5]
        gt = np.array([b for _, b, _ in records[i]])
        iou = box_iou(box[None], gt)[0]
        assert iou.max() >= 0.5
        assert records[i][int(iou.argmax())][2] == cls
    seen = set()
    for k in range(0, len(crops), max(1, len(crops) // 40)):
        image, label = crops[k]
        assert image.shape == (3, S, S) and label.shape == (S, S)
        i = int(crops.items[crops.order[k], 0])
        img_classes = {c for _, _, c in records[i]}
        values = set(label.unique().tolist()) - {0, IGNORE_INDEX}
        assert values <= img_classes
        seen |= values
    assert len(seen) >= 3


def test_stage2_oversamples_rare_classes(dataset):
    plain = InstanceCrops(dataset, S, stage=2, proposals="jitter", oversample=False,
                          progress=False)
    over = InstanceCrops(dataset, S, stage=2, proposals="jitter", max_repeat=8,
                         progress=False)
    before, after = plain.class_counts(), over.class_counts()
    present = before > 0
    assert (after[present] >= before[present]).all()
    ratio_before = before[present].max() / before[present].min()
    ratio_after = after[present].max() / after[present].min()
    assert ratio_after < ratio_before or ratio_before == 1


def test_stage2_selective_search_items_are_cached(dataset, tmp_path):
    small = VOCSegmentation(dataset.root, "train")
    small.names = small.names[:3]
    a = InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("stage2_selective_search_*.npy"))
    assert len(files) == 1
    b = InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(a.items, b.items)
    records = _all_records(small)
    for row in a.items:
        gt = np.array([b for _, b, _ in records[row[0]]])
        assert box_iou(row[None, 1:5], gt).max() >= 0.5
    image, label = a[0]
    assert image.shape == (3, S, S) and label.dtype == torch.int64


def test_stage2_negatives_are_background_proposals(dataset, tmp_path):
    small = VOCSegmentation(dataset.root, "train")
    small.names = small.names[:3]
    plain = InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False)
    mixed = InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False,
                          negatives=0.5, negative_iou=0.3)
    assert len(list(tmp_path.glob("stage2_selective_search_*.npy"))) == 2  # own cache keys
    positive, negative = mixed.items[mixed.items[:, 6] >= 0], mixed.items[mixed.items[:, 6] < 0]
    np.testing.assert_array_equal(positive, plain.items)   # the positives are unchanged
    assert 0 < len(negative) <= round(0.5 * len(positive))
    records = _all_records(small)
    for row in negative:
        gt = np.array([b for _, b, _ in records[row[0]]])
        assert row[5] == 0 and box_iou(row[None, 1:5], gt).max() < 0.3
    # a negative is used once per epoch (not oversampled as a rare "class 0")
    order_rows = mixed.items[mixed.order]
    assert (order_rows[:, 6] < 0).sum() == len(negative)
    k = int(np.flatnonzero(mixed.items[mixed.order, 6] < 0)[0])
    image, label = mixed[k]
    assert image.shape == (3, S, S)
    assert set(label.unique().tolist()) <= set(range(21)) | {IGNORE_INDEX}
    again = InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False,
                          negatives=0.5, negative_iou=0.3)
    np.testing.assert_array_equal(again.items, mixed.items)
    with pytest.raises(ValueError, match="negatives"):
        InstanceCrops(small, S, stage=2, cache_dir=tmp_path, progress=False, negatives=-1)


def test_bad_arguments(dataset):
    with pytest.raises(ValueError, match="stage"):
        InstanceCrops(dataset, S, stage=3)
    with pytest.raises(ValueError, match="proposals"):
        InstanceCrops(dataset, S, stage=2, proposals="magic")
    crops = InstanceCrops(dataset, S, stage=1, progress=False)
    with pytest.raises(IndexError):
        crops[len(crops)]


def test_stage1_target_keeps_only_its_instance_and_its_band():
    label = np.zeros((40, 40), np.uint8)
    inst = np.zeros((40, 40), np.uint8)
    label[5:15, 5:15], inst[5:15, 5:15] = 12, 1
    label[4, 5:15] = inst[4, 5:15] = IGNORE_INDEX      # band next to instance 1
    label[25:35, 25:35], inst[25:35, 25:35] = 3, 2
    label[24, 25:35] = inst[24, 25:35] = IGNORE_INDEX  # band next to instance 2, far away
    target = InstanceCrops._single_instance_label(label, inst, 1, 12)
    assert (target[5:15, 5:15] == 12).all()
    assert (target[4, 5:15] == IGNORE_INDEX).all()
    assert (target[25:35, 25:35] == 0).all() and (target[24, 25:35] == 0).all()
    assert set(np.unique(target)) == {0, 12, IGNORE_INDEX}


def test_proposal_cache_is_not_reused_for_changed_files(tmp_path):
    root = generate_synthetic_voc(tmp_path / "voc", 2, 0, (48, 64), seed=1, progress=False)
    cache = tmp_path / "cache"
    InstanceCrops(VOCSegmentation(root, "train"), 16, stage=2, proposals="jitter",
                  cache_dir=cache, progress=False)
    generate_synthetic_voc(root, 2, 0, (48, 64), seed=2, progress=False)
    again = InstanceCrops(VOCSegmentation(root, "train"), 16, stage=2, proposals="jitter",
                          cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.npy"))) == 2
    fresh = InstanceCrops(VOCSegmentation(root, "train"), 16, stage=2, proposals="jitter",
                          progress=False)
    np.testing.assert_array_equal(again.items, fresh.items)
