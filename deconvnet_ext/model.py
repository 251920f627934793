"""DeconvNet (Noh, Hong, Han, ICCV 2015) and FCN-8s (Long, Shelhamer, Darrell, 2015)
over the VGG16 encoder of ``vgg.py``, in the paper's "vgg16" size and a CPU-sized
"tiny" one.

Both map (N,3,H,W) float images (normalised as ``data.transforms.image_to_tensor``
does) to raw class scores (N,num_classes,H,W).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import (ConvBNReLU, DeconvBNReLU, MaxPool2dWithSwitches, MaxUnpool2dWithSwitches,
                 PoolSwitches, check_pool_impl, set_pool_impl)
from .vgg import ARCHS, VGGConfig, get_arch, load_vgg16_weights, make_features
from .proposal_scorer import ProposalScorer

ArchLike = Union[str, VGGConfig, Dict[str, Any]]

DECODER_INIT_STD = 0.01  # the original release's Gaussian init of every decoder layer


def _resolve_arch(arch: ArchLike) -> VGGConfig:
    """A VGGConfig from a name, a VGGConfig, or the dict ``meta()`` stores for custom ones."""
    if isinstance(arch, dict):
        fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in arch.items()}
        return VGGConfig(**fields)
    return get_arch(arch)


def _arch_meta(config: VGGConfig) -> Union[str, Dict[str, Any]]:
    """The arch's name when it is a stock one, else its fields (rebuildable by meta)."""
    return config.name if ARCHS.get(config.name) == config else dataclasses.asdict(config)


def _check_images(x: torch.Tensor, min_size: int = 1) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (N,3,H,W) image tensor, got shape {shape}")
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(f"x must be at least {min_size}x{min_size} for this network, "
                         f"got {tuple(x.shape[2:])}")


def _init_encoder(modules) -> None:
    """He init for the encoder convs (torchvision's VGG init), BN to identity."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_gaussian(modules, std: float) -> None:
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _init_decoder_he(modules) -> None:
    """He (fan-in, ReLU) init of the transposed convs, zero biases, BN to identity."""
    for m in modules:
        if isinstance(m, nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameter elements."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def grouped_switches(switches: PoolSwitches, groups: int) -> PoolSwitches:
    """The switches of a C-channel pool for unpooling ``groups * C`` channels: channel
    c + j*C is put back where channel c's max was (a decoder wider than its encoder).

    The repeat copies the switches on every forward; measured on the tiny config (batch
    8 of 64x64, 2 threads, 2026-12-07) that is 0.13 ms of a ~90 ms training step, so a
    copy-free variant (an unpool kernel reading switches by channel modulo) is not worth
    a second op signature."""
    if groups == 1:
        return switches
    return switches._replace(switches=switches.switches.repeat(1, groups, 1, 1))


class DeconvNet(nn.Module):
    """The deconvolution network of the paper, as the original release builds it.

    Encoder: VGG16's 13 convs (3x3 pad 1) each with BN + ReLU, five 2x2/2 max-pools
    that keep their switches; fc6 = k x k conv (k = input_size/32, 7 for vgg16, no pad)
    and fc7 = 1x1 conv, each with BN + ReLU (no dropout). Decoder: deconv-fc6 = k x k
    transposed conv back to the pool5 size, then per stage (5 down to 1) an unpool with
    the mirrored pool's switches and 3x3 transposed convs with BN + ReLU
    (512,512,512 / 512,512,256 / 256,256,128 / 128,64 / 64,64 for vgg16; the tiny
    config's decoder is wider than its encoder, each unpooling's switches serving
    several channel groups, see vgg.py); a 1x1 score layer gives raw scores. Decoder
    weights ~ N(0, 0.01) (the tiny config: He init for the transposed convs, see vgg.py).

    forward(x: (N,3,H,W) float, H,W >= input_size) -> (N,num_classes,H,W).
    Built for H = W = ``input_size`` (224 for vgg16, 64 for tiny).
    """

    def __init__(self, num_classes: int = 21, arch: ArchLike = "vgg16",
                 pool_impl: str = "ext") -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.config = _resolve_arch(arch)
        self.num_classes = num_classes
        self.pool_impl = check_pool_impl(pool_impl)
        self.input_size = self.config.input_size
        widths, k, fc = self.config.widths, self.config.fc6_kernel, self.config.fc_width

        self.features = make_features(self.config,
                                      lambda: MaxPool2dWithSwitches(2, 2, pool_impl=pool_impl))
        self.fc6 = ConvBNReLU(widths[-1], fc, k)
        self.fc7 = ConvBNReLU(fc, fc, 1)
        decoder_widths = self.config.decoder_stage_widths
        # channel groups per unpooling (1 = the paper's mirror), last stage first
        self.switch_groups = tuple(d // w for d, w in zip(reversed(decoder_widths),
                                                          reversed(widths)))
        self.deconv_fc6 = DeconvBNReLU(fc, decoder_widths[-1], k)
        self.unpool = MaxUnpool2dWithSwitches(2, 2)
        stages = []
        for s in reversed(range(5)):  # mirror of encoder stage s
            count, width = self.config.convs_per_stage[s], decoder_widths[s]
            last = decoder_widths[s - 1] if s > 0 else decoder_widths[0]
            outs = [width] * (count - 1) + [last]
            ins = [width] + outs[:-1]
            stages.append(nn.Sequential(*(DeconvBNReLU(i, o, 3, padding=1)
                                          for i, o in zip(ins, outs))))
        self.decoder = nn.ModuleList(stages)
        self.score = nn.Conv2d(decoder_widths[0], num_classes, 1)
        # which proposal crops inference trusts (proposal_scorer.py): fitted after
        # training by ``fit_proposal_scorer``, saved with the weights; forward ignores it
        self.proposal_scorer: Optional[ProposalScorer] = None

        _init_encoder(list(self.features.modules()) + list(self.fc6.modules())
                      + list(self.fc7.modules()))
        decoder = list(self.deconv_fc6.modules()) + list(self.decoder.modules())
        if self.config.decoder_init_std is None:  # He init (the tiny config; see vgg.py)
            _init_decoder_he(decoder)
            _init_gaussian([self.score], DECODER_INIT_STD)
        else:
            _init_gaussian(decoder + [self.score], self.config.decoder_init_std)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[PoolSwitches]]:
        """The conv encoder: (N,3,H,W) -> (pool5 (N,C5,H/32,W/32), the five pools'
        switches, first pool first)."""
        switches: List[PoolSwitches] = []
        for layer in self.features:
            if isinstance(layer, MaxPool2dWithSwitches):
                x, sw = layer(x)
                switches.append(sw)
            else:
                x = layer(x)
        return x, switches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.input_size)
        x, switches = self.encode(x)
        x = self.deconv_fc6(self.fc7(self.fc6(x)))
        for stage, sw, groups in zip(self.decoder, reversed(switches), self.switch_groups):
            x = stage(self.unpool(x, grouped_switches(sw, groups)))
        return self.score(x)

    def set_pool_impl(self, pool_impl: str) -> "DeconvNet":
        """Switch every pool to "ext" or "torch" (same weights, same results)."""
        return set_pool_impl(self, pool_impl)

    def load_vgg16(self, path) -> bool:
        """Encoder (convs, fc6, fc7) from a torchvision vgg16/vgg16_bn file; see vgg.py."""
        return load_vgg16_weights(self, path)

    def meta(self) -> Dict[str, Any]:
        """What checkpoint.load_model needs to rebuild this network."""
        meta = {"kind": "deconvnet", "arch": _arch_meta(self.config),
                "num_classes": self.num_classes, "pool_impl": self.pool_impl,
                "input_size": self.input_size}
        if self.proposal_scorer is not None:
            meta["proposal_scorer"] = {"hidden": self.proposal_scorer.hidden,
                                       "members": len(self.proposal_scorer.nets)}
        return meta

    @property
    def num_parameters(self) -> int:
        return parameter_count(self)

    def extra_repr(self) -> str:
        return (f"arch={self.config.name!r}, num_classes={self.num_classes}, "
                f"input_size={self.input_size}, pool_impl={self.pool_impl!r}, "
                f"parameters={self.num_parameters:,}")


def bilinear_kernel(channels: int, kernel_size: int) -> torch.Tensor:
    """(channels, channels, k, k) transposed-conv weight that upsamples each channel
    bilinearly by k/2 (FCN's "bilinear" filler: channel i maps to channel i only)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = 1 - (torch.arange(kernel_size, dtype=torch.float64) - center).abs() / factor
    filt = (taps[:, None] * taps[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class FCN8s(nn.Module):
    """FCN-8s over the same VGG16 encoder (conv + BN + ReLU, plain max-pools).

    fc6 = k x k conv (k = input_size/32, padded to keep the size), fc7 = 1x1 conv, each
    with BN + ReLU; score_fr, score_pool4, score_pool3 are 1x1 convs (zero-initialised, as
    FCN does); the 8s skip fusion adds 2x-upsampled scores to the pool4 then the pool3
    scores and upsamples 8x, every upsampling a learnable transposed conv initialised
    bilinear. The input is zero-padded to a multiple of 32 and the output cropped back.

    forward(x: (N,3,H,W) float, any H,W >= 1) -> (N,num_classes,H,W).
    """

    def __init__(self, num_classes: int = 21, arch: ArchLike = "vgg16") -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.config = _resolve_arch(arch)
        self.num_classes = num_classes
        self.input_size = self.config.input_size
        widths, k, fc = self.config.widths, self.config.fc6_kernel, self.config.fc_width
        self.features = make_features(self.config, lambda: nn.MaxPool2d(2, 2))
        self.fc6 = ConvBNReLU(widths[-1], fc, k, padding=k // 2)
        self.fc7 = ConvBNReLU(fc, fc, 1)
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(widths[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(widths[2], num_classes, 1)
        self.upscore2 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False)
        self.upscore8 = nn.ConvTranspose2d(num_classes, num_classes, 16, 8, 4, bias=False)

        _init_encoder(list(self.features.modules()) + list(self.fc6.modules())
                      + list(self.fc7.modules()))
        for score in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        with torch.no_grad():
            for up in (self.upscore2, self.upscore_pool4, self.upscore8):
                up.weight.copy_(bilinear_kernel(num_classes, up.kernel_size[0]))

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """The conv encoder: (N,3,H,W) -> (pool5, [pool1..pool5] outputs)."""
        pools = []
        for layer in self.features:
            x = layer(x)
            if isinstance(layer, nn.MaxPool2d):
                pools.append(x)
        return x, pools

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x)
        H, W = x.shape[2:]
        x, pools = self.encode(F.pad(x, (0, -W % 32, 0, -H % 32)))
        h5, w5 = x.shape[2:]
        x = self.fc7(self.fc6(x)[:, :, :h5, :w5])  # an even fc6 kernel overhangs by one
        x = self.upscore2(self.score_fr(x)) + self.score_pool4(pools[3])
        x = self.upscore_pool4(x) + self.score_pool3(pools[2])
        return self.upscore8(x)[:, :, :H, :W].contiguous()

    def load_vgg16(self, path) -> bool:
        """Encoder (convs, fc6, fc7) from a torchvision vgg16/vgg16_bn file; see vgg.py."""
        return load_vgg16_weights(self, path)

    def meta(self) -> Dict[str, Any]:
        """What checkpoint.load_model needs to rebuild this network."""
        return {"kind": "fcn8s", "arch": _arch_meta(self.config),
                "num_classes": self.num_classes, "input_size": self.input_size}

    @property
    def num_parameters(self) -> int:
        return parameter_count(self)

    def extra_repr(self) -> str:
        return (f"arch={self.config.name!r}, num_classes={self.num_classes}, "
                f"parameters={self.num_parameters:,}")
