"""The VGG16 encoder shared by DeconvNet and FCN-8s, with torchvision's state-dict
layout, and the loader that initialises it from a local torchvision ``vgg16`` /
``vgg16_bn`` weight file (no torchvision, no network).

The encoder is an ``nn.Sequential`` named ``features`` whose indices are exactly those of
torchvision's ``vgg16_bn`` (conv, BN, ReLU per layer, one pool per stage), so
``features.N.weight`` keys line up with a ``vgg16_bn`` file directly; a plain ``vgg16``
file (conv, ReLU) is mapped conv by conv. ``classifier.0`` (fc, C*k*k) and
``classifier.3`` (fc, fc) become the convolutional fc6 (fc, C, k, k) and fc7
(fc, fc, 1, 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, read_weights_file


@dataclass(frozen=True)
class VGGConfig:
    """Widths and sizes of one encoder configuration.

    widths: output channels of the five conv stages; convs_per_stage: convs in each;
    fc_width: channels of fc6/fc7; input_size: the crop side the network is built for
    (a multiple of 32; fc6's kernel is input_size // 32, the pool5 feature size);
    decoder_init_std: std of DeconvNet's Gaussian decoder init (the original's 0.01),
    or None for He init of the decoder's transposed convs (the score layer keeps 0.01);
    decoder_widths: DeconvNet's decoder width at each of the five stages (None: the
    encoder's, the paper's mirror). Each is a multiple m of the encoder width of its
    stage: that stage's unpooling puts m groups of channels back at the same switches."""
    name: str
    widths: Tuple[int, int, int, int, int]
    convs_per_stage: Tuple[int, int, int, int, int]
    fc_width: int
    input_size: int
    decoder_init_std: Optional[float] = 0.01
    decoder_widths: Optional[Tuple[int, int, int, int, int]] = None

    def __post_init__(self) -> None:
        if self.decoder_widths is not None:
            if len(self.decoder_widths) != len(self.widths) or any(
                    not isinstance(d, int) or d < w or d % w
                    for d, w in zip(self.decoder_widths, self.widths)):
                raise ValueError(f"decoder_widths must give each of the {len(self.widths)} "
                                 f"stages a multiple of its encoder width {self.widths}, "
                                 f"got {self.decoder_widths}")

    @property
    def fc6_kernel(self) -> int:
        return self.input_size // 32

    @property
    def decoder_stage_widths(self) -> Tuple[int, ...]:
        """DeconvNet's decoder width per stage (the encoder's unless decoder_widths)."""
        return tuple(self.decoder_widths or self.widths)


ARCHS: Dict[str, VGGConfig] = {
    # The paper's network: VGG16 on 224 x 224 crops, fc6 = 7x7 conv with 4096 outputs.
    "vgg16": VGGConfig("vgg16", (64, 128, 256, 512, 512), (2, 2, 3, 3, 3), 4096, 224),
    # Same topology, narrow and on 64 x 64 crops (pool5 is 2x2, so fc6 is a 2x2 conv).
    # Widths measured for the 2-core demo: without a pretrained encoder the net needs
    # many crops (tens of epochs of the synthetic set's ~530 instances) before it tells
    # the classes apart, and halving (16,32,64,96,96)/256 trains ~2.3x more crops per
    # second, which wins at equal wall time (loss 2.02 vs 2.35 after ~90 s). Its decoder
    # starts from He init: behind BN, N(0, 0.01) weights are 6-17x smaller than He's, so
    # their effective step (lr / |w|^2) is far larger, and from scratch, without the
    # paper's pretrained encoder, that learned slower: stage 1, 2000 steps of 8 crops,
    # loss 1.79 / crop mean IU 0.11 (He, lr 0.05) vs 2.07 / 0.08 (N(0, 0.01), lr 0.1,
    # its best lr); the old (16,32,64,96,96)/256 net, 150 x 16 crops: 2.35 / 0.02.
    # Its decoder is 4/4/2/2/1 times wider than the encoder, stage 1 first: the mirror's
    # last stages (8 and 16 channels) could not carry 21 classes to the score layer --
    # stage 1 fitted its own training crops to crop mean IU 47 only. Measured on the
    # tuning split (synthetic seed 2000003, never a demo's val), the shipped encoder,
    # 2000 stage-1 steps of 8 crops: mirror 27.8 / 24.2 (ground-truth-box mean IU / crop
    # mean IU, 117 s), decoder x(2,2,2,1,1) 37.3 / 34.1 (142 s), x(4,4,2,2,1) 49.4 / 43.0
    # (215 s); the encoder (and so the shipped pre-trained file) is unchanged.
    "tiny": VGGConfig("tiny", (8, 16, 32, 64, 64), (2, 2, 3, 3, 3), 128, 64,
                      decoder_init_std=None, decoder_widths=(32, 64, 64, 128, 64)),
}


def get_arch(arch: Union[str, VGGConfig]) -> VGGConfig:
    """The VGGConfig named ``arch`` ("vgg16" or "tiny"); a VGGConfig passes through."""
    if isinstance(arch, VGGConfig):
        return arch
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    return ARCHS[arch]


def make_features(config: VGGConfig, make_pool: Callable[[], nn.Module]) -> nn.Sequential:
    """The 13-conv encoder as torchvision's vgg16_bn lays it out: per conv
    [Conv2d 3x3 pad 1, BatchNorm2d, ReLU], one ``make_pool()`` after each stage.
    (N,3,H,W) -> (N,widths[-1],H/32,W/32) when run layer by layer."""
    layers: List[nn.Module] = []
    in_channels = 3
    for width, count in zip(config.widths, config.convs_per_stage):
        for _ in range(count):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(make_pool())
    return nn.Sequential(*layers)


def torchvision_vgg16_shapes(batch_norm: bool, config: Union[str, VGGConfig] = "vgg16",
                             num_classes: int = 1000) -> Dict[str, Tuple[int, ...]]:
    """Every key of torchvision's ``vgg16`` (batch_norm=False) or ``vgg16_bn`` state dict,
    with its shape, for ``config``'s widths (torchvision's own file for "vgg16").
    Computed without allocating any tensor."""
    config = get_arch(config)
    shapes: Dict[str, Tuple[int, ...]] = {}
    index, in_channels = 0, 3
    for width, count in zip(config.widths, config.convs_per_stage):
        for _ in range(count):
            shapes[f"features.{index}.weight"] = (width, in_channels, 3, 3)
            shapes[f"features.{index}.bias"] = (width,)
            if batch_norm:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    shapes[f"features.{index + 1}.{name}"] = (width,)
                shapes[f"features.{index + 1}.num_batches_tracked"] = ()
            index += 3 if batch_norm else 2
            in_channels = width
        index += 1  # the pool
    k, fc = config.fc6_kernel, config.fc_width
    shapes["classifier.0.weight"] = (fc, in_channels * k * k)
    shapes["classifier.0.bias"] = (fc,)
    shapes["classifier.3.weight"] = (fc, fc)
    shapes["classifier.3.bias"] = (fc,)
    shapes["classifier.6.weight"] = (num_classes, fc)
    shapes["classifier.6.bias"] = (num_classes,)
    return shapes


def _conv_keys(shapes: Dict[str, Tuple[int, ...]]) -> List[int]:
    """Indices N of the 4-d ``features.N.weight`` entries (the convs), in order."""
    return sorted(int(key.split(".")[1]) for key, shape in shapes.items()
                  if key.startswith("features.") and key.endswith(".weight") and len(shape) == 4)


def read_vgg16_state_dict(path: Union[str, Path], config: Union[str, VGGConfig] = "vgg16"
                          ) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Load and check a torchvision vgg16 / vgg16_bn state-dict file.

    Returns (state_dict, batch_norm). Raises CheckpointError naming the file when it is
    unreadable, truncated, not a state dict, lacks a key, or has a shape that does not
    fit ``config``."""
    config = get_arch(config)
    state = read_weights_file(path, "torchvision vgg16 state dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a torchvision vgg16/vgg16_bn state dict "
                              "(expected a dict of tensors)")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    batch_norm = "features.1.running_mean" in state
    num_classes = state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else 1000
    expected = torchvision_vgg16_shapes(batch_norm, config, num_classes)
    for key, shape in expected.items():
        if key.startswith("classifier.6"):
            continue  # the ImageNet head is not used
        if key not in state:
            raise CheckpointError(
                f"{path}: missing key {key!r}; not a torchvision "
                f"{'vgg16_bn' if batch_norm else 'vgg16'} state dict for arch {config.name!r}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"arch {config.name!r} expects {shape}")
    return state, batch_norm


def load_vgg16_weights(model: nn.Module, path: Union[str, Path]) -> bool:
    """Initialise ``model``'s encoder (``features``, ``fc6.conv``, ``fc7.conv``) from a
    torchvision vgg16 or vgg16_bn file. With a vgg16_bn file the BN layers take its
    parameters and running statistics; with vgg16 they keep their initialisation.
    Returns whether the file had BN layers."""
    config = get_arch(model.config)
    state, batch_norm = read_vgg16_state_dict(path, config)
    source_convs = _conv_keys(torchvision_vgg16_shapes(batch_norm, config))
    target_convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for src, dst in zip(source_convs, target_convs):
            model.features[dst].weight.copy_(state[f"features.{src}.weight"])
            model.features[dst].bias.copy_(state[f"features.{src}.bias"])
            if batch_norm:
                bn = model.features[dst + 1]
                for name in ("weight", "bias", "running_mean", "running_var",
                             "num_batches_tracked"):
                    getattr(bn, name).copy_(state[f"features.{src + 1}.{name}"])
        fc6, fc7 = model.fc6.conv, model.fc7.conv
        fc6.weight.copy_(state["classifier.0.weight"].view(fc6.weight.shape))
        fc6.bias.copy_(state["classifier.0.bias"])
        fc7.weight.copy_(state["classifier.3.weight"].view(fc7.weight.shape))
        fc7.bias.copy_(state["classifier.3.bias"])
    return batch_norm
