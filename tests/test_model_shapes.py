"""DeconvNet and FCN-8s: output shapes, parameter counts, ext vs torch pooling."""
import copy
import dataclasses

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext.vgg import ARCHS, torchvision_vgg16_shapes
from test_train_support import one_thread  # noqa: F401 (fixture)


def _conv(cin, cout, k):  # weight + bias
    return cin * cout * k * k + cout


def _bn(c):  # weight + bias (running stats are buffers)
    return 2 * c


def test_vgg16_deconvnet_parameter_count_by_construction():
    """Count the paper's layers by hand; build the model on the meta device (no memory)."""
    enc = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    dec = [(512, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 256),
           (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 64)]
    expected = sum(_conv(i, o, 3) + _bn(o) for i, o in enc + dec)
    expected += _conv(512, 4096, 7) + _bn(4096)      # fc6
    expected += _conv(4096, 4096, 1) + _bn(4096)     # fc7
    expected += _conv(4096, 512, 7) + _bn(512)       # deconv-fc6
    expected += _conv(64, 21, 1)                     # score
    with torch.device("meta"):
        model = dx.DeconvNet(num_classes=21, arch="vgg16")
    assert model.num_parameters == expected
    assert 250e6 < expected < 254e6  # "about 252M" as the paper's release
    assert model.input_size == 224
    assert f"{expected:,}" in repr(model)


def test_vgg16_encoder_keys_match_torchvision_vgg16_bn():
    with torch.device("meta"):
        model = dx.DeconvNet(arch="vgg16")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("features.")}
    theirs = {k: v for k, v in torchvision_vgg16_shapes(True, "vgg16").items()
              if k.startswith("features.")}
    assert ours == theirs
    # torchvision's own indices for the convs of vgg16_bn / vgg16
    assert [k for k in theirs if k.endswith(".bias") and len(theirs[k.replace("bias", "weight")]) == 4] \
        == [f"features.{i}.bias" for i in (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)]
    plain = torchvision_vgg16_shapes(False, "vgg16")
    assert [k for k in plain if k.startswith("features.") and k.endswith(".bias")] == \
        [f"features.{i}.bias" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    assert plain["classifier.0.weight"] == (4096, 25088)
    assert model.fc6.conv.weight.shape == (4096, 512, 7, 7)
    assert model.fc7.conv.weight.shape == (4096, 4096, 1, 1)


@pytest.mark.slow
def test_vgg16_deconvnet_forward_shape():
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=21, arch="vgg16").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 21, 224, 224) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(64, 64), (80, 96), (67, 71)])
def test_tiny_deconvnet_shapes(size):
    model = dx.DeconvNet(num_classes=5, arch="tiny")
    assert model.input_size == 64
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (100, 33), (1, 1)])
def test_tiny_fcn8s_shapes_any_size(size):
    model = dx.FCN8s(num_classes=7, arch="tiny")
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7, *size)


def test_fcn8s_upsampling_starts_bilinear():
    """The transposed convs start as bilinear upsampling: a constant map stays constant
    away from the border (FCN's initialisation)."""
    model = dx.FCN8s(num_classes=3, arch="tiny")
    x = torch.ones(1, 3, 6, 6)
    up = model.upscore8(x)
    assert up.shape == (1, 3, 48, 48)
    torch.testing.assert_close(up[:, :, 8:-8, 8:-8], torch.ones(1, 3, 32, 32))
    up2 = model.upscore2(x)
    torch.testing.assert_close(up2[:, :, 2:-2, 2:-2], torch.ones(1, 3, 8, 8))


def test_bad_inputs_are_named():
    model = dx.DeconvNet(arch="tiny")
    with pytest.raises(ValueError, match="x must be at least 64"):
        model(torch.randn(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="arch"):
        dx.DeconvNet(arch="resnet")
    with pytest.raises(ValueError, match="num_classes"):
        dx.FCN8s(num_classes=0)


def test_decoder_init_is_gaussian_001():
    # the paper's rule (vgg16's config), checked at the tiny widths to stay cheap
    assert ARCHS["vgg16"].decoder_init_std == 0.01
    torch.manual_seed(0)
    model = dx.DeconvNet(arch=dataclasses.replace(ARCHS["tiny"], decoder_init_std=0.01))
    w = torch.cat([m.weight.flatten() for m in model.decoder.modules()
                   if isinstance(m, torch.nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.01) < 0.0005 and abs(w.mean().item()) < 0.0005


def test_tiny_decoder_init_is_he_and_score_gaussian_001():
    torch.manual_seed(0)
    model = dx.DeconvNet(arch="tiny")
    assert ARCHS["tiny"].decoder_init_std is None
    deconvs = [m for m in list(model.deconv_fc6.modules()) + list(model.decoder.modules())
               if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 14  # deconv-fc6 + the 13 mirrored convs
    for m in deconvs:
        fan_in = m.weight.shape[1] * m.weight[0, 0].numel()  # torch's fan_in of this weight
        expected = (2.0 / fan_in) ** 0.5
        assert abs(m.weight.std().item() - expected) < 0.1 * expected
        assert torch.count_nonzero(m.bias) == 0
    assert abs(model.score.weight.std().item() - 0.01) < 0.003
    assert torch.count_nonzero(model.score.bias) == 0


def test_tiny_decoder_is_wider_than_its_encoder():
    """The tiny decoder's stages are 4/4/2/2/1 times its encoder's widths (vgg.py says
    why); vgg16 keeps the paper's mirror."""
    config = ARCHS["tiny"]
    assert config.decoder_stage_widths == (32, 64, 64, 128, 64)
    assert ARCHS["vgg16"].decoder_stage_widths == ARCHS["vgg16"].widths
    model = dx.DeconvNet(num_classes=5, arch="tiny")
    assert model.switch_groups == (1, 2, 2, 4, 4)  # pool5's switches first
    assert model.deconv_fc6.deconv.out_channels == 64
    assert [stage[-1].deconv.out_channels for stage in model.decoder] == [128, 64, 64, 32, 32]
    assert model.score.in_channels == 32


def test_grouped_switches_unpool_each_group_at_the_pools_switches():
    """Unpooling 3*C channels with grouped_switches equals unpooling each C-channel group
    with the C-channel pool's own switches."""
    from deconvnet_ext.model import grouped_switches
    from deconvnet_ext.nn import MaxPool2dWithSwitches, MaxUnpool2dWithSwitches
    torch.manual_seed(0)
    for impl in ("ext", "torch"):
        pooled, sw = MaxPool2dWithSwitches(2, 2, pool_impl=impl)(torch.randn(2, 4, 8, 6))
        x = torch.randn(2, 12, 4, 3)
        unpool = MaxUnpool2dWithSwitches(2, 2)
        got = unpool(x, grouped_switches(sw, 3))
        want = torch.cat([unpool(x[:, 4 * j:4 * (j + 1)], sw) for j in range(3)], dim=1)
        assert torch.equal(got, want), impl
        assert grouped_switches(sw, 1) is sw


def test_decoder_widths_must_be_multiples_of_the_encoders():
    for bad in ((32, 64, 64, 128), (12, 64, 64, 128, 64), (4, 16, 32, 64, 64)):
        with pytest.raises(ValueError, match="decoder_widths"):
            dataclasses.replace(ARCHS["tiny"], decoder_widths=bad)


def test_custom_decoder_widths_survive_a_checkpoint(tmp_path):
    from deconvnet_ext.checkpoint import load_model, save_checkpoint
    arch = dataclasses.replace(ARCHS["tiny"], name="custom", decoder_widths=(16, 16, 32, 64, 128))
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=3, arch=arch).eval()
    assert model.switch_groups == (2, 1, 1, 1, 2)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, meta = load_model(tmp_path / "m.pt")
    assert loaded.config == arch
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize("train_mode", [True, False])
def test_ext_and_torch_pooling_same_outputs_and_gradients(train_mode):
    torch.manual_seed(0)
    ext = dx.DeconvNet(num_classes=4, arch="tiny", pool_impl="ext").train(train_mode)
    ref = copy.deepcopy(ext).set_pool_impl("torch")
    assert all(m.pool_impl == "torch" for m in ref.features if hasattr(m, "pool_impl"))
    x = torch.randn(3, 3, 64, 64)
    target = torch.randint(0, 4, (3, 64, 64))
    losses = []
    for model in (ext, ref):
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    for (name, p), q in zip(ext.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ext_and_torch_pooling_agree_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    torch.manual_seed(0)
    ext = dx.DeconvNet(num_classes=4, arch="tiny", pool_impl="ext").cuda()
    ref = copy.deepcopy(ext).set_pool_impl("torch")
    x = torch.randn(3, 3, 64, 64, device="cuda")
    target = torch.randint(0, 4, (3, 64, 64), device="cuda")
    outs = []
    for model in (ext, ref):
        out = model(x)
        torch.nn.functional.cross_entropy(out, target).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1])
    for (name, p), q in zip(ext.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
