"""allocator.keep_freed_memory: glibc keeps freed blocks for reuse, so a CPU training
step stops faulting in fresh pages for its activations; the arithmetic is unchanged."""
import json
import os
import platform
import subprocess
import sys

import pytest

import deconvnet_ext as dx
from deconvnet_ext import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Tiny-DeconvNet training steps in a fresh process: minor page faults over the last
# MEASURED steps, after WARMUP steps that fault in what is allocated once (oneDNN's
# caches, the optimizer state, glibc's arena growth; ~2.5k faults seen in one CI run
# after 3 steps), and the trained weights.
PROBE = r"""
import json, resource, sys
WARMUP, MEASURED = 6, 20
import torch
import deconvnet_ext as dx
applied = dx.keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(1)
net = dx.DeconvNet(num_classes=21, arch="tiny")
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 21, (8, 64, 64))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
for _ in range(WARMUP):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(MEASURED):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
weights = torch.cat([p.detach().flatten() for p in net.parameters()])
print(json.dumps({"applied": applied, "faults": faults, "weights": weights.tolist()}))
"""


def _probe(malloc_env):
    env = dict(os.environ)
    env.pop(allocator.ENV_VAR, None)
    if malloc_env is not None:
        env[allocator.ENV_VAR] = malloc_env
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_training_steps_stop_faulting_and_train_the_same_weights():
    kept, default = _probe(None), _probe("default")
    assert kept["applied"] is True and default["applied"] is False
    # 8 x 32 x 64 x 64 float maps are 4 MiB = 1024 pages each; glibc's default unmaps
    # and re-faults them every step (~74k faults in 5 steps measured), kept: ~100
    # once warm
    assert default["faults"] > 5000
    assert kept["faults"] * 20 < default["faults"]
    assert kept["weights"] == default["weights"]  # bit for bit


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_freed_memory_applies_and_can_be_repeated(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    assert dx.keep_freed_memory() is True
    assert dx.keep_freed_memory() is True


@pytest.mark.parametrize("value", ["default", "DEFAULT", " default "])
def test_the_environment_variable_keeps_glibcs_default(monkeypatch, value):
    monkeypatch.setenv(allocator.ENV_VAR, value)
    assert dx.keep_freed_memory() is False


def test_not_applied_off_glibc(monkeypatch):
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert dx.keep_freed_memory() is False


def test_the_deconvnet_command_applies_it_before_its_subcommand(monkeypatch, capsys):
    from deconvnet_ext import cli
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("kept") or True)
    assert cli.main(["info"]) == 0
    assert calls == ["kept"]
