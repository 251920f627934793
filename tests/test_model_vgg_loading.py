"""Encoder init from a torchvision-keyed vgg16 / vgg16_bn state-dict file (synthetic,
random tensors with torchvision's keys, here at the tiny widths)."""
import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext.checkpoint import CheckpointError
from deconvnet_ext.vgg import ARCHS, torchvision_vgg16_shapes
from test_train_support import one_thread  # noqa: F401 (fixture)


def _synthetic_vgg_file(tmp_path, batch_norm, arch="tiny", seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_vgg16_shapes(batch_norm, arch).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.2
    path = tmp_path / ("vgg16_bn.pth" if batch_norm else "vgg16.pth")
    torch.save(state, path)
    return path, state


def _torchvision_forward(state, x, batch_norm, config):
    """VGG16's features + classifier.0 as torchvision computes them, from the raw state."""
    index = 0
    for count in config.convs_per_stage:
        for _ in range(count):
            x = F.conv2d(x, state[f"features.{index}.weight"], state[f"features.{index}.bias"],
                         padding=1)
            if batch_norm:
                b = f"features.{index + 1}"
                x = F.batch_norm(x, state[b + ".running_mean"], state[b + ".running_var"],
                                 state[b + ".weight"], state[b + ".bias"], training=False)
            x = F.relu(x)
            index += 3 if batch_norm else 2
        x = F.max_pool2d(x, 2, 2)
        index += 1
    fc6 = F.linear(x.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
    fc7 = F.linear(F.relu(fc6), state["classifier.3.weight"], state["classifier.3.bias"])
    return fc6, fc7


@pytest.mark.parametrize("kind", [dx.DeconvNet, dx.FCN8s])
def test_vgg16_bn_file_gives_torchvisions_fc6_fc7(tmp_path, kind):
    path, state = _synthetic_vgg_file(tmp_path, batch_norm=True)
    model = kind(arch="tiny")
    assert model.load_vgg16(path) is True
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fc6 = F.conv2d(model.encode(x)[0], model.fc6.conv.weight, model.fc6.conv.bias)
        fc7 = model.fc7.conv(F.relu(fc6))
        ref6, ref7 = _torchvision_forward(state, x, True, ARCHS["tiny"])
    torch.testing.assert_close(fc6.flatten(1), ref6, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fc7.flatten(1), ref7, rtol=1e-4, atol=1e-4)
    assert int(model.features[1].num_batches_tracked) == 7


def test_plain_vgg16_file_maps_conv_by_conv(tmp_path):
    path, state = _synthetic_vgg_file(tmp_path, batch_norm=False)
    model = dx.DeconvNet(arch="tiny")
    bn_before = model.features[1].weight.detach().clone()
    assert model.load_vgg16(path) is False
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    src = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision vgg16 conv indices
    assert len(convs) == 13
    for conv, i in zip(convs, src):
        assert torch.equal(conv.weight, state[f"features.{i}.weight"])
        assert torch.equal(conv.bias, state[f"features.{i}.bias"])
    assert torch.equal(model.features[1].weight, bn_before)  # BN keeps its init
    k = ARCHS["tiny"].fc6_kernel
    assert torch.equal(model.fc6.conv.weight,
                       state["classifier.0.weight"].view(-1, ARCHS["tiny"].widths[-1], k, k))
    assert torch.equal(model.fc7.conv.weight[:, :, 0, 0], state["classifier.3.weight"])


def test_wrong_arch_missing_key_truncated_and_foreign_files_are_named(tmp_path):
    path, state = _synthetic_vgg_file(tmp_path, batch_norm=True)
    model = dx.DeconvNet(arch="tiny")
    # the full-size file's shapes do not fit tiny (checked on a tiny file of vgg16 keys)
    wrong = dict(state)
    wrong["features.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*features\.0\.weight.*shape"):
        model.load_vgg16(tmp_path / "wrong.pth")
    missing = {k: v for k, v in state.items() if k != "classifier.3.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing\.pth.*classifier\.3\.weight"):
        model.load_vgg16(tmp_path / "missing.pth")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        model.load_vgg16(tmp_path / "cut.pth")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt"):
        model.load_vgg16(tmp_path / "notes.txt")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth.*state dict"):
        model.load_vgg16(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"absent\.pth.*not found"):
        model.load_vgg16(tmp_path / "absent.pth")


@pytest.mark.slow
def test_full_size_vgg16_bn_file_maps_into_the_encoder(tmp_path):
    """One full-size torchvision-keyed vgg16_bn file (~550 MB, uninitialised memory
    except where checked): classifier.0 (4096 x 25088) becomes fc6 (4096,512,7,7) so
    that fc6 on pool5 equals torchvision's Linear on the flattened pool5. FCN8s carries
    the same encoder/fc6/fc7 mapping code as DeconvNet at half the memory."""
    shapes = torchvision_vgg16_shapes(True, "vgg16")
    assert shapes["classifier.0.weight"] == (4096, 25088)
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1)
        elif key.endswith("running_var"):
            state[key] = torch.ones(shape)
        elif key.startswith("classifier."):
            state[key] = torch.empty(shape).normal_(0, 0.01, generator=g)
        else:
            state[key] = torch.empty(shape).normal_(0, 0.05, generator=g)
    torch.save(state, tmp_path / "vgg16_bn.pth")
    del state
    model = dx.FCN8s(arch="vgg16")
    assert model.load_vgg16(tmp_path / "vgg16_bn.pth") is True
    state = torch.load(tmp_path / "vgg16_bn.pth", weights_only=True)
    model.eval()
    with torch.no_grad():
        pool5 = model.encode(torch.randn(1, 3, 224, 224))[0]
        assert pool5.shape == (1, 512, 7, 7)
        fc6 = F.conv2d(pool5, model.fc6.conv.weight, model.fc6.conv.bias)
        ref6 = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
    torch.testing.assert_close(fc6.flatten(1), ref6, rtol=1e-4, atol=1e-4)
    assert torch.equal(model.fc7.conv.weight[:, :, 0, 0], state["classifier.3.weight"])
    assert torch.equal(model.features[40].weight, state["features.40.weight"])
    assert torch.equal(model.features[41].running_mean, state["features.41.running_mean"])
