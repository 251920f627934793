"""deconvnet_ext: fused switch max-pool, switch unpool and proposal aggregation for
DeconvNet (Noh, Hong, Han, ICCV 2015), as torch.ops custom ops with autograd, plus the
paper's DeconvNet and FCN-8s models.

    import deconvnet_ext as dx
    out, sw = dx.max_pool2d_with_switches(x, 2, 2)          # sw: uint8 switches
    y = dx.max_unpool2d_with_switches(out, sw, 2, 2, output_size=x.shape[-2:])
    agg = dx.aggregate_proposals(maps, boxes, image_size=(H, W), mode="max")
"""
from ._version import __version__
from ._extension import build_info
from . import reference
from .ops import max_pool2d_with_switches, max_unpool2d_with_switches, switches_to_indices
from .aggregation import aggregate_proposals
from .model import DeconvNet, FCN8s
from .export import export_onnx
from .allocator import keep_freed_memory

__all__ = [
    "__version__",
    "build_info",
    "reference",
    "max_pool2d_with_switches",
    "max_unpool2d_with_switches",
    "switches_to_indices",
    "aggregate_proposals",
    "DeconvNet",
    "FCN8s",
    "export_onnx",
    "keep_freed_memory",
]
