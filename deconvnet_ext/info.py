"""``deconvnet info``: what was built, what runs it, and whether they match.

The first thing to paste into a bug report: the build (CUDA kernels or not, the
architectures, the torch it was compiled against, the CPU path), the torch running now,
every visible GPU and whether the build has code for it, and what a rebuild on this
machine would choose (deconvnet_ext.build_config) — so a CPU-only build on a GPU
machine, or a build for the wrong GPU, says so itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch

from . import build_config
from ._extension import build_info


def collect() -> dict:
    """Everything ``deconvnet info`` prints, as a dict (JSON-serialisable)."""
    built = build_info()
    report = {
        "deconvnet_ext": built,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_running": torch.__version__,
        "torch_running_cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "devices": [],
        "problems": [],
    }
    problems = report["problems"]
    if built["torch_version"] != torch.__version__.split("+")[0]:
        problems.append(f"built against torch {built['torch_version']} but running "
                        f"{torch.__version__}: rebuild (pip install --no-build-isolation .)")
    if built.get("torch_cuda_version", "") != (torch.version.cuda or ""):
        problems.append(f"built against a torch with CUDA {built.get('torch_cuda_version') or 'none'}"
                        f" but running one with CUDA {torch.version.cuda or 'none'}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = torch.cuda.get_device_capability(i)
            device = {"index": i, "name": torch.cuda.get_device_name(i),
                      "capability": f"{cap[0]}.{cap[1]}"}
            if built["with_cuda"]:
                device["covered"], device["how"] = build_config.arch_list_covers(
                    built["cuda_arch_list"], cap)
                if not device["covered"]:
                    problems.append(f"GPU {i} ({device['name']}, sm_{cap[0]}{cap[1]}) has no code "
                                    f"in this build ({built['cuda_arch_list']}): rebuild with "
                                    f"TORCH_CUDA_ARCH_LIST={cap[0]}.{cap[1]}")
            else:
                device["covered"], device["how"] = False, "this build has no CUDA kernels"
            report["devices"].append(device)
        if not built["with_cuda"]:
            problems.append("a GPU is visible but this build has no CUDA kernels: the ops "
                            "raise on CUDA tensors; rebuild with a matching CUDA toolkit")
    try:
        choice = build_config.choose(os.environ, torch)
        report["rebuild_would_choose"] = choice.summary()
    except build_config.BuildConfigError as exc:
        report["rebuild_would_choose"] = f"error: {exc}"
    return report


def format_report(report: dict) -> str:
    built = report["deconvnet_ext"]
    lines = [
        f"deconvnet_ext {built['version']}",
        f"  build:    {'CPU + CUDA' if built['with_cuda'] else 'CPU-only'}"
        + (f", architectures {built['cuda_arch_list']}" if built["with_cuda"] else ""),
        f"  built against torch {built['torch_version']}"
        + (f" (CUDA {built['torch_cuda_version']})" if built.get("torch_cuda_version") else
           " (no CUDA)"),
        f"  CPU path: {'AVX2/FMA' if built['cpu_avx2_fma'] else 'portable (no AVX2/FMA on this CPU)'}",
        f"running: Python {report['python']}, torch {report['torch_running']}"
        + (f" (CUDA {report['torch_running_cuda']})" if report["torch_running_cuda"] else
           " (CPU build)"),
        f"  {report['platform']}, {report['cpu_count']} usable cores, "
        f"{report['torch_threads']} torch threads",
    ]
    if report["devices"]:
        for d in report["devices"]:
            mark = "ok" if d["covered"] else "NOT COVERED"
            lines.append(f"  GPU {d['index']}: {d['name']} (sm {d['capability']}): {mark}, "
                         f"{d['how']}")
    else:
        lines.append("  GPUs: none visible")
    lines.append(f"a rebuild here would make: {report['rebuild_would_choose']}")
    if report["problems"]:
        lines.append("problems:")
        lines += [f"  - {p}" for p in report["problems"]]
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `deconvnet info`."""
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when the build does not match what runs it."""
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 1 if report["problems"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_cli(argparse.Namespace(json="--json" in sys.argv)))
