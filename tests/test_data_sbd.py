"""The SBD (.mat) reader: round trip through scipy.io and bad files named."""
import numpy as np
import pytest
import scipy.io
from PIL import Image

from deconvnet_ext.data.crops import InstanceCrops
from deconvnet_ext.data.sbd import SBDSegmentation
from deconvnet_ext.data.voc import instance_boxes
from deconvnet_ext.errors import UserError


def _write_sbd(root, names, shape=(30, 40)):
    for sub in ("img", "cls", "inst"):
        (root / sub).mkdir(parents=True)
    maps = {}
    for k, name in enumerate(names):
        label = np.zeros(shape, np.uint8)
        inst = np.zeros(shape, np.uint8)
        label[5:15, 4:20], inst[5:15, 4:20] = 15, 1
        label[18:28, 22:38], inst[18:28, 22:38] = 7 + k, 2
        Image.new("RGB", shape[::-1], (k * 40, 90, 30)).save(root / "img" / f"{name}.jpg")
        scipy.io.savemat(root / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": label}})
        scipy.io.savemat(root / "inst" / f"{name}.mat",
                         {"GTinst": {"Segmentation": inst, "Categories": [15, 7 + k]}})
        maps[name] = (label, inst)
    (root / "train.txt").write_text("".join(f"{n}\n" for n in names))
    return maps


def test_sbd_round_trip_and_crops(tmp_path):
    maps = _write_sbd(tmp_path / "dataset", ["2008_000002", "2008_000003"])
    ds = SBDSegmentation(tmp_path, "train")  # the benchmark_RELEASE level works too
    assert len(ds) == 2
    for i, name in enumerate(ds.names):
        s = ds[i]
        np.testing.assert_array_equal(s.label, maps[name][0])
        np.testing.assert_array_equal(s.instances, maps[name][1])
        assert s.image.shape == (30, 40, 3)
        assert instance_boxes(s) == [([4, 5, 20, 15], 15), ([22, 18, 38, 28], 7 + i)]
    crops = InstanceCrops(ds, 16, stage=1, progress=False)
    assert len(crops) == 4 and crops[3][1].shape == (16, 16)


def test_sbd_bad_files_are_named(tmp_path):
    root = tmp_path / "dataset"
    _write_sbd(root, ["a", "b"])
    (root / "inst" / "b.mat").unlink()
    with pytest.raises(UserError, match="inst/b.mat"):
        SBDSegmentation(root, "train")
    scipy.io.savemat(root / "inst" / "b.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(UserError, match="inst/b.mat.*GTinst"):
        SBDSegmentation(root, "train")[1]
    (root / "cls" / "a.mat").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cls/a.mat"):
        SBDSegmentation(root, "train")[0]
    with pytest.raises(UserError, match="val.txt"):
        SBDSegmentation(root, "val")
