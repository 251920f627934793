"""Fixtures shared by the inference tests."""
import pytest
import torch

import deconvnet_ext as dx

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def tiny_deconvnet():
    torch.manual_seed(0)
    model = dx.DeconvNet(num_classes=NUM_CLASSES, arch="tiny").eval()
    # The score layer starts at std 0.01 (scores of ~1e-3, nearly flat); widen it alone so
    # the maps differ clearly between pixels and proposals. (Scaling every conv instead
    # grows the scores geometrically with depth, to ~1e7, where torch's own conv rounding
    # under different batch groupings exceeds any sensible relative tolerance.)
    with torch.no_grad():
        model.score.weight.mul_(300.0)
        model.score.bias.mul_(300.0)
    return model


@pytest.fixture(scope="module")
def tiny_fcn():
    torch.manual_seed(1)
    model = dx.FCN8s(num_classes=NUM_CLASSES, arch="tiny").eval()
    with torch.no_grad():
        for p in model.parameters():  # FCN's score layers start at zero: give them values
            p.add_(0.05 * torch.randn_like(p))
    return model
