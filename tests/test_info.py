"""`deconvnet info`: the build report a user pastes into a bug report."""
import json
import subprocess
import sys

import torch

import deconvnet_ext as dx
from deconvnet_ext import info


def test_report_describes_this_build_and_this_runtime():
    report = info.collect()
    assert report["deconvnet_ext"] == dx.build_info()
    assert report["torch_running"] == torch.__version__
    assert len(report["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available()
                                      else 0)
    if not dx.build_info()["with_cuda"]:
        assert not any(device["covered"] for device in report["devices"])
    text = info.format_report(report)
    assert f"deconvnet_ext {dx.__version__}" in text
    assert ("CPU + CUDA" if dx.build_info()["with_cuda"] else "CPU-only") in text
    assert "a rebuild here would make:" in text


def test_cli_prints_json_and_exits_by_the_problems_found():
    done = subprocess.run([sys.executable, "-m", "deconvnet_ext", "info", "--json"],
                          capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert report["deconvnet_ext"]["version"] == dx.__version__
    assert done.returncode == (1 if report["problems"] else 0), done.stderr
