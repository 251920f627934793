"""pytest configuration of the benchmark suite: the --bench-shapes option, the
case x contender parametrization, and the machine/measurement fields added to
pytest-benchmark's JSON (read by `deconvnet bench` to write RESULTS.md)."""
from __future__ import annotations

import os
import platform

import pytest
import torch

import harness


_LOAD_AT_START = None


def pytest_sessionstart(session) -> None:
    global _LOAD_AT_START
    _LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deconvnet_ext benchmarks")
    group.addoption("--bench-shapes", choices=harness.SHAPE_SETS, default="full",
                    help="quick: the headline shape and a small one; full (default): also "
                         "the five pool levels of the 224x224 DeconvNet")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Cases first, contenders second: pytest then runs every contender of one case
    # back to back, so the cached inputs (harness.pool_data) are built once per case.
    shape_set = metafunc.config.getoption("bench_shapes")
    if "pool_case" in metafunc.fixturenames:
        metafunc.parametrize("pool_case", harness.pool_cases(shape_set))
    if "contender" in metafunc.fixturenames:
        contenders = getattr(metafunc.module, "CONTENDERS", harness.CONTENDERS)
        metafunc.parametrize("contender", contenders)


def pytest_collection_modifyitems(session, config, items: list) -> None:
    # Run benchmarks case by case (not file by file, not contender by contender), so
    # each case's inputs and reference results (cached for one case at a time, e.g.
    # harness.pool_data, shared by the four pool/unpool groups) are built once.
    # A case is the test's "*_case" parameter; tests without one keep their order.
    order = {}

    def key(item):
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        cases = [v for k, v in params.items() if k.endswith("_case")]
        if not cases:
            return (1, 0)
        return (0, order.setdefault(cases[0], len(order)))

    items.sort(key=key)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if harness.HAS_CUDA else None,
        "loadavg_at_start": _LOAD_AT_START,
    }
    try:
        import deconvnet_ext
        info["deconvnet_ext_build"] = deconvnet_ext.build_info()
    except Exception as exc:  # noqa: BLE001 - describe the machine even when the build is broken
        info["deconvnet_ext_build"] = f"unavailable: {exc}"
    return info


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    machine_info["deconvnet_ext"] = machine_summary()


def pytest_benchmark_update_json(config, benchmarks, output_json: dict) -> None:
    output_json["deconvnet_ext"] = {
        "shape_set": config.getoption("bench_shapes"),
        "records": list(harness.RECORDS),
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
