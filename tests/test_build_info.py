import os

import torch

import deconvnet_ext as dx


def test_build_info_reports_the_build():
    info = dx.build_info()
    assert info["version"] == dx.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    if os.environ.get("DECONVNET_EXT_CUDA") == "1":
        assert info["with_cuda"]
        assert info["cuda_arch_list"]


def test_ops_are_registered():
    for name in ("max_pool2d_with_switches", "max_unpool2d_with_switches",
                 "gather_at_switches", "aggregate_proposals"):
        assert hasattr(torch.ops.deconvnet_ext, name), name
