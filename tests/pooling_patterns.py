"""Small models written the ways public SegNet/DeconvNet/autoencoder code uses torch's
``nn.MaxPool2d(return_indices=True)`` and ``nn.MaxUnpool2d``, shared by
test_convert_pooling.py and test_onnx_export.py; and the measurement of the bytes
autograd saves for backward.

``python tests/pooling_patterns.py [--onnx]`` prints, per pattern, the bytes saved for
backward by the torch model and by its ``convert_pooling`` twin, and (--onnx) the
onnxruntime-vs-PyTorch max error of the exported twin: the README's table.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, NamedTuple, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PerStageSegNet(nn.Module):
    """One pool and one unpool module per stage; ``unpool(x, idx, output_size=skip.size())``
    (the full 4-d size); a plain MaxPool2d (no indices) in an auxiliary branch."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_bn_relu(3, c), conv_bn_relu(c, 2 * c)
        self.pool1 = nn.MaxPool2d(2, 2, return_indices=True)
        self.pool2 = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool2, self.unpool1 = nn.MaxUnpool2d(2, 2), nn.MaxUnpool2d(2, 2)
        self.dec2 = conv_bn_relu(2 * c, c)
        self.dec1 = nn.Conv2d(c, classes, 3, padding=1)
        self.aux_pool = nn.MaxPool2d(2)  # no indices: stays torch's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.enc1(x)
        p1, i1 = self.pool1(x1)
        x2 = self.enc2(p1)
        p2, i2 = self.pool2(x2)
        d2 = self.dec2(self.unpool2(p2, i2, output_size=x2.size()))
        d1 = self.dec1(self.unpool1(d2, i1, output_size=x1.size()))
        return d1 + self.aux_pool(x1).mean(dim=(1, 2, 3), keepdim=True)


class SharedPoolSegNet(nn.Module):
    """One pool and one unpool module reused at every level; ``x, idx = self.pool(x)``
    and ``self.unpool(x, idx)`` with no size (right for sizes divisible by 8)."""

    def __init__(self, classes: int = 3, widths=(4, 6, 8)) -> None:
        super().__init__()
        ins = (3,) + tuple(widths[:-1])
        self.encoders = nn.ModuleList(conv_bn_relu(i, o) for i, o in zip(ins, widths))
        self.decoders = nn.ModuleList(conv_bn_relu(o, i) for i, o in
                                      reversed(list(zip((widths[0],) + tuple(widths[:-1]), widths))))
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(kernel_size=2, stride=2)
        self.score = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices = []
        for encoder in self.encoders:
            x, idx = self.pool(encoder(x))
            indices.append(idx)
        for decoder, idx in zip(self.decoders, reversed(indices)):
            x = decoder(self.unpool(x, idx))
        return self.score(x)


class CeilModeSegNet(nn.Module):
    """``ceil_mode=True`` pools on odd sizes, unpooled to ``skip.size()``."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_bn_relu(3, c), conv_bn_relu(c, c)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.dec2, self.dec1 = conv_bn_relu(c, c), nn.Conv2d(c, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        x, i1 = self.pool(s1)
        s2 = self.enc2(x)
        x, i2 = self.pool(s2)
        x = self.dec2(self.unpool(x, i2, output_size=s2.size()))
        return self.dec1(self.unpool(x, i1, output_size=s1.size()))


class BigKernelAutoencoder(nn.Module):
    """Kernel 4 and kernel 8 with the default stride (= kernel), ``unpool(x, idx)``."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.enc1, self.enc2 = conv_bn_relu(3, c), conv_bn_relu(c, 2 * c)
        self.pool4 = nn.MaxPool2d(4, return_indices=True)
        self.pool8 = nn.MaxPool2d(8, return_indices=True)
        self.unpool8, self.unpool4 = nn.MaxUnpool2d(8), nn.MaxUnpool2d(4)
        self.dec2, self.dec1 = conv_bn_relu(2 * c, c), nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, i1 = self.pool4(self.enc1(x))
        x, i2 = self.pool8(self.enc2(x))
        x = self.dec2(self.unpool8(x, i2))
        return self.dec1(self.unpool4(x, i1))


class DilatedSegNet(nn.Module):
    """A dilated pool (kernel 2, stride 3, dilation 2: disjoint windows) unpooled to
    ``skip.size()[-2:]`` (an (H, W) pair)."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.enc = conv_bn_relu(3, c)
        self.pool = nn.MaxPool2d(2, stride=3, dilation=2, return_indices=True)
        self.mid = conv_bn_relu(c, c)
        self.unpool = nn.MaxUnpool2d(2, stride=3)
        self.dec = nn.Conv2d(c, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        x, idx = self.pool(skip)
        return self.dec(self.unpool(self.mid(x), idx, output_size=skip.size()[-2:]))


class OverlappingSegNet(nn.Module):
    """Overlapping windows (kernel 3, stride 2, padding 1), as a ResNet-style stem
    would; unpooled to ``skip.size()``."""

    def __init__(self, classes: int = 3, c: int = 4) -> None:
        super().__init__()
        self.enc = conv_bn_relu(3, c)
        self.pool = nn.MaxPool2d(3, 2, 1, return_indices=True)
        self.mid = conv_bn_relu(c, c)
        self.unpool = nn.MaxUnpool2d(3, 2, 1)
        self.dec = nn.Conv2d(c, classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc(x)
        x, idx = self.pool(skip)
        return self.dec(self.unpool(self.mid(x), idx, output_size=skip.size()))


class Pattern(NamedTuple):
    make: Callable[[], nn.Module]
    input_shape: Tuple[int, int, int, int]


# name -> (model factory, input shape); the odd sizes are where torch's size guess
# would be wrong, so these models pass the size (as such code must).
PATTERNS: Dict[str, Pattern] = {
    "per_stage_skip_size": Pattern(PerStageSegNet, (2, 3, 13, 11)),
    "shared_no_size": Pattern(SharedPoolSegNet, (2, 3, 16, 24)),
    "ceil_mode_odd": Pattern(CeilModeSegNet, (2, 3, 11, 9)),
    "kernel_4_and_8": Pattern(BigKernelAutoencoder, (2, 3, 32, 32)),
    "dilated": Pattern(DilatedSegNet, (2, 3, 13, 10)),
    "overlapping_k3s2": Pattern(OverlappingSegNet, (2, 3, 11, 10)),
}


def torch_and_converted(name: str, seed: int = 0):
    """(torch model, its convert_pooling twin with the same weights, input)."""
    from deconvnet_ext.nn import convert_pooling

    make, shape = PATTERNS[name]
    torch.manual_seed(seed)
    model = make()
    converted = convert_pooling(copy.deepcopy(model))
    x = torch.randn(shape)
    return model, converted, x


def calibrated(model: nn.Module, input_shape, seed: int = 0) -> nn.Module:
    """Parameters that start at zero (biases, FCN-8s' score layers) made random and
    BatchNorm statistics measured on random inputs, so the activations stay O(1) and a
    wrong graph cannot hide behind zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn(input_shape, generator=g))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


class SavedBytes(NamedTuple):
    total: int    # bytes of every tensor autograd saved (one count per save)
    unique: int   # bytes of the distinct storages among them (what stays alive)


def saved_for_backward(model: nn.Module, x: torch.Tensor) -> SavedBytes:
    """Bytes autograd keeps for backward over one forward of ``model`` on ``x``
    (requires_grad), measured with torch.autograd.graph.saved_tensors_hooks."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    x = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    total = sum(t.numel() * t.element_size() for t in saved)
    storages = {}
    for t in saved:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return SavedBytes(total, sum(storages.values()))


def onnx_max_error(name: str, batch: int = 3) -> float:
    """Max abs error of onnxruntime against PyTorch for the converted ``name`` pattern
    (calibrated weights), exported with dx.export_onnx at the pattern's batch size and
    run at ``batch``."""
    import tempfile
    from pathlib import Path

    from deconvnet_ext.export import export_onnx, run_onnxruntime

    _, converted, x = torch_and_converted(name)
    converted = calibrated(converted, x.shape)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(converted, x, Path(tmp) / f"{name}.onnx")
        check = torch.randn(batch, *x.shape[1:])
        with torch.no_grad():
            expected = converted(check)
        return (run_onnxruntime(path, check) - expected).abs().max().item()


def main(with_onnx: bool = False) -> None:
    print("| pattern | input | bytes saved for backward: torch (distinct) | converted | "
          "less | ONNX max abs error |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (_, shape) in PATTERNS.items():
        model, converted, x = torch_and_converted(name)
        ours, theirs = saved_for_backward(converted, x), saved_for_backward(model, x)
        error = f"{onnx_max_error(name):.1e}" if with_onnx else "-"
        print(f"| {name} | {'x'.join(map(str, shape))} | {theirs.total} ({theirs.unique}) | "
              f"{ours.total} ({ours.unique}) | {theirs.total - ours.total} "
              f"({theirs.unique - ours.unique}) | {error} |", flush=True)


if __name__ == "__main__":
    import sys

    main(with_onnx="--onnx" in sys.argv)
