"""dx.export_onnx and `deconvnet export`: DeconvNet, FCN-8s and convert_pooling'd models
(pooling_patterns.py) written with standard ONNX operators only, run by stock
onnxruntime on a batch size other than the example's, against PyTorch (1e-4)."""
import sys

import pytest
import torch
import torch.nn as nn

import deconvnet_ext as dx
from deconvnet_ext.cli import main
from deconvnet_ext.export import custom_domain_nodes, export_onnx, run_onnxruntime
from pooling_patterns import PATTERNS, calibrated, torch_and_converted

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

TOLERANCE = 1e-4


def _logits_up_to(model: nn.Module, layers, input_shape, largest: float = 4.0) -> nn.Module:
    """Scale the score layers (the output is linear in them) so the logits on random
    inputs reach about +-``largest``, the range a segmentation net's logits live in:
    the 1e-4 tolerance is then far above float32's rounding (about 1e-5 of the output's
    scale between two conv implementations: torch itself with and without mkldnn
    differs by that on these nets) yet far below any wrong value."""
    with torch.no_grad():
        scale = model(torch.randn(input_shape, generator=torch.Generator().manual_seed(1)))
        factor = largest / scale.abs().max().item()
        for layer in layers:
            layer.weight.mul_(factor)
            if layer.bias is not None:
                layer.bias.mul_(factor)
    return model


def _op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _check_against_torch(model, path, x, relative=False):
    """onnxruntime's output on x against the model's: max abs error <= 1e-4 on outputs
    of O(1) (relative=False), or <= 1e-4 of the outputs' largest magnitude."""
    with torch.no_grad():
        expected = model(x)
    got = run_onnxruntime(path, x)
    assert got.shape == expected.shape
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item()
    print(f"{path.name}: batch {x.shape[0]}, outputs up to {scale:.3g}, "
          f"max abs error {error:.2e}")
    if relative:
        assert scale > 0 and error <= TOLERANCE * scale
    else:
        assert scale > 0.1  # not a vacuous comparison
        assert error <= TOLERANCE
    return error


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_converted_patterns_run_in_onnxruntime(name, tmp_path):
    _, converted, x = torch_and_converted(name)
    converted = calibrated(converted, x.shape)
    path = export_onnx(converted, x, tmp_path / f"{name}.onnx")
    assert custom_domain_nodes(path) == []
    types = _op_types(path)
    assert "MaxPool" in types and "ScatterElements" in types
    assert not any("switches" in t.lower() or "unpool" in t.lower() for t in types)
    for batch in (x.shape[0] + 1, 1):
        _check_against_torch(converted, path, torch.randn(batch, *x.shape[1:]))
    assert converted.training is False


def test_unconverted_torch_pooling_exports_too(tmp_path):
    """torch's own MaxPool2d(return_indices) + MaxUnpool2d (onnxscript cannot translate
    aten::max_unpool2d by itself) also go through."""
    model, _, x = torch_and_converted("per_stage_skip_size")
    model = calibrated(model, x.shape)
    path = export_onnx(model, x, tmp_path / "torch_pooling.onnx")
    assert custom_domain_nodes(path) == []
    _check_against_torch(model, path, torch.randn(3, *x.shape[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_library_models_run_in_onnxruntime(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "fcn8s":
        model, size = dx.FCN8s(num_classes=5, arch="tiny"), (40, 52)
    else:
        model = dx.DeconvNet(num_classes=5, arch="tiny")
        size = (model.input_size, model.input_size)
    model = calibrated(model, (2, 3, *size))
    scores = ([model.score_fr, model.score_pool4, model.score_pool3] if kind == "fcn8s"
              else [model.score])
    model = _logits_up_to(model, scores, (2, 3, *size)).train()  # export: eval, restored
    path = export_onnx(model, torch.randn(1, 3, *size), tmp_path / f"{kind}.onnx")
    assert model.training
    assert custom_domain_nodes(path) == []
    model.eval()
    # Relative to the outputs' scale: the tiny DeconvNet's wide decoder (up to 128
    # channels, 27 layers) rounds to ~2e-5 of its largest logit between torch and
    # onnxruntime, which at logits of ~8 is already 1.5e-4; a wrong value is off by O(1).
    _check_against_torch(model, path, torch.randn(3, 3, *size), relative=kind == "deconvnet")


def test_static_batch_and_unbatched_pool(tmp_path):
    class Unbatched(nn.Module):  # (C, H, W) through the drop-in pool and unpool
        def __init__(self):
            super().__init__()
            self.pool = dx.nn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)
            self.unpool = dx.nn.MaxUnpool2d(3, 2, 1)

        def forward(self, x):
            y, sw = self.pool(x[0] * 2.0)
            return (self.unpool(y, sw) + 1.0).unsqueeze(0)

    model = Unbatched()
    x = torch.randn(1, 2, 9, 8)
    path = export_onnx(model, x, tmp_path / "static.onnx", dynamic_batch=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 2, 9, 8]
    _check_against_torch(model, path, x)


def test_missing_exporter_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ImportError, match=r"deconvnet_ext\[onnx\]"):
        export_onnx(nn.Identity(), torch.zeros(2, 3), tmp_path / "x.onnx")


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    """DeconvNet and FCN-8s checkpoints as the trainer writes them (two steps each)."""
    from deconvnet_ext.train import TrainConfig, fit
    from test_train_support import NUM_CLASSES, Squares

    root = tmp_path_factory.mktemp("trained")
    config = TrainConfig(steps=2, batch_size=2, accumulate=1, lr=0.01, seed=3,
                         checkpoint_every=2, progress=False, device="cpu")
    paths = {}
    for kind, model in (("deconvnet", dx.DeconvNet(NUM_CLASSES, arch="tiny")),
                        ("fcn8s", dx.FCN8s(NUM_CLASSES, arch="tiny"))):
        torch.manual_seed(0)
        paths[kind] = fit(model, Squares(4), config, root / kind).final
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deconvnet", "fcn8s"])
def test_cli_exports_a_trained_checkpoint(kind, trained_checkpoints, tmp_path, capsys):
    from deconvnet_ext.checkpoint import load_model

    out = tmp_path / f"{kind}.onnx"
    assert main(["export", "--checkpoint", str(trained_checkpoints[kind]),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "max abs error" in printed
    assert custom_domain_nodes(out) == []
    model, _ = load_model(trained_checkpoints[kind])
    size = model.input_size
    # two training steps leave small logits: the error is held to 1e-4 of their scale
    _check_against_torch(model, out, torch.randn(4, 3, size, size), relative=True)


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    for argv, needle in (
            (["export", "--checkpoint", str(tmp_path / "none.pt"), "--out",
              str(tmp_path / "m.onnx")], "none.pt"),
            (["export", "--checkpoint", "x.pt", "--out", "m.onnx", "--static-batch", "0"],
             "--static-batch")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
