"""PLACEHOLDER: DeconvNet and FCN-8s (issue 4)."""
import torch.nn as nn


class DeconvNet(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("DeconvNet is not written yet")


class FCN8s(nn.Module):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("FCN8s is not written yet")
