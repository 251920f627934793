"""The portable (non-AVX2) CPU loops of pool, unpool and gather give the same bits as
the AVX2 ones: a child process with DECONVNET_EXT_DISABLE_AVX2=1 runs the ops on the
same inputs."""
import os
import subprocess
import sys

import torch

import deconvnet_ext as dx
from pool_cases import assert_bitwise_equal, make_input

# (shape, layout, dtype, kernel, stride, padding, dilation, ceil_mode): the 2x2 NCHW
# and channels_last float32 AVX2 paths, the blocked general path, tails, NaN.
CASES = [
    ((2, 5, 16, 38), "contiguous", torch.float32, 2, 2, 0, 1, False),
    ((2, 5, 9, 37), "contiguous", torch.float32, 2, 2, 0, 1, True),
    ((2, 37, 9, 10), "channels_last", torch.float32, 3, 2, 1, 1, True),
    ((2, 3, 9, 75), "contiguous", torch.float32, 3, 2, 1, 1, False),
    ((2, 3, 9, 57), "contiguous", torch.float64, 3, 1, 1, 2, False),
    ((2, 19, 8, 12), "channels_last", torch.float16, 2, 2, 0, 1, False),
]

CHILD = r"""
import sys, torch, deconvnet_ext as dx
sys.path.insert(0, sys.argv[2])
from test_pool_portable import CASES, inputs
results = []
for case in CASES:
    x, v = inputs(case)
    k, s, p, d, c = case[3:]
    out, sw = dx.max_pool2d_with_switches(x, k, s, p, d, c)
    y = dx.max_unpool2d_with_switches(v, sw, k, s, p, d, output_size=x.shape[-2:])
    g = torch.ops.deconvnet_ext.gather_at_switches(x, sw, *[[a, a] for a in (k, s, p, d)])
    results.append((out, sw, y, g))
torch.save(results, sys.argv[1])
"""


def inputs(case):
    shape, layout, dtype = case[:3]
    x = make_input(shape, dtype, layout, seed=3)
    x[x > 1.4] = float("nan")
    out, _ = dx.max_pool2d_with_switches(x, *case[3:])
    return x, make_input(out.shape, dtype, layout, seed=4)


def test_portable_loops_match_the_avx2_loops(tmp_path):
    path = tmp_path / "portable.pt"
    env = dict(os.environ, DECONVNET_EXT_DISABLE_AVX2="1")
    subprocess.run([sys.executable, "-c", CHILD, str(path), os.path.dirname(__file__)],
                   env=env, check=True, timeout=300)
    portable = torch.load(path)
    for case, (out_p, sw_p, y_p, g_p) in zip(CASES, portable):
        x, v = inputs(case)
        k, s, p, d, c = case[3:]
        out, sw = dx.max_pool2d_with_switches(x, k, s, p, d, c)
        y = dx.max_unpool2d_with_switches(v, sw, k, s, p, d, output_size=x.shape[-2:])
        assert_bitwise_equal(out_p, out)
        assert torch.equal(sw_p, sw)
        assert_bitwise_equal(y_p, y)
        g = torch.ops.deconvnet_ext.gather_at_switches(x, sw, *[[a, a] for a in (k, s, p, d)])
        assert_bitwise_equal(g_p, g)
