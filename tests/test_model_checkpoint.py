"""Checkpoints: atomic save, weights-only load, load_model rebuilds the network, bad
files are rejected with the file named."""
import os
import pickle

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                      save_checkpoint)
from deconvnet_ext.errors import UserError
from test_train_support import one_thread  # noqa: F401 (fixture)


@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_round_trip_rebuilds_the_same_network(tmp_path, kind):
    torch.manual_seed(1)
    model = dx.DeconvNet(num_classes=6, arch="tiny") if kind == "deconvnet" \
        else dx.FCN8s(num_classes=6, arch="tiny")
    # move the BN running stats away from their init so they must be saved too
    model.train()
    model(torch.randn(2, 3, 64, 64))
    path = save_checkpoint(tmp_path / "m.pt", model, step=3, note="x")
    loaded, meta = load_model(path)
    assert meta["kind"] == kind and meta["arch"] == "tiny" and meta["num_classes"] == 6
    assert type(loaded) is type(model) and not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    payload = load_checkpoint(path)
    assert payload["step"] == 3 and payload["note"] == "x"


def test_load_model_can_switch_pool_impl(tmp_path):
    model = dx.DeconvNet(num_classes=3, arch="tiny").eval()
    path = save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_model(path, pool_impl="torch")
    assert loaded.pool_impl == "torch"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_save_is_atomic_on_failure(tmp_path):
    model = dx.FCN8s(num_classes=2, arch="tiny")
    path = save_checkpoint(tmp_path / "m.pt", model, step=1)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint(path, model, step=2, bad=lambda: None)  # cannot be pickled
    assert path.read_bytes() == before          # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["m.pt"]     # and no temporary file is left behind
    assert load_checkpoint(path)["step"] == 1


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_files_are_rejected_with_the_file_named(tmp_path):
    model = dx.FCN8s(num_classes=2, arch="tiny")
    good = save_checkpoint(tmp_path / "good.pt", model)
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_model(tmp_path / "truncated.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_checkpoint(tmp_path / "text.pt")
    # a pickle that would run code: refused by weights_only loading
    with open(tmp_path / "code.pt", "wb") as f:
        pickle.dump({"format": "deconvnet_ext.checkpoint", "x": _Payload()}, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"code\.pt"):
        load_checkpoint(tmp_path / "code.pt")
    # a valid torch file that is not ours (e.g. a bare state dict)
    torch.save(model.state_dict(), tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt.*not a deconvnet_ext checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"nowhere\.pt.*not found"):
        load_model(tmp_path / "nowhere.pt")
    # weights that do not fit the meta's network
    payload = load_checkpoint(good)
    payload["meta"]["num_classes"] = 5
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match=r"mismatch\.pt.*do not match"):
        load_model(tmp_path / "mismatch.pt")
    assert issubclass(CheckpointError, UserError)
