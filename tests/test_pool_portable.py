"""The CPU fast paths (AVX2 / blocked loops, the separable aggregation) give the same
bits as the portable loops, which run the element functions of csrc/common/ that the
CUDA kernels run. The runtime switch (deconvnet_ext._extension.portable_cpu_loops)
selects the path; DECONVNET_EXT_DISABLE_AVX2=1 turns the portable loops on at start."""
import os
import subprocess
import sys

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext._extension import _C, portable_cpu_loops
from pool_cases import DTYPES, LAYOUTS, assert_bitwise_equal, make_input, sample_cases

ops = torch.ops.deconvnet_ext

# (shape, layout, dtype, kernel, stride, padding, dilation, ceil_mode): the 2x2 NCHW
# and channels_last float32 AVX2 paths, the blocked general path, tails, NaN.
CASES = [
    ((2, 5, 16, 38), "contiguous", torch.float32, 2, 2, 0, 1, False),
    ((2, 5, 9, 37), "contiguous", torch.float32, 2, 2, 0, 1, True),
    ((2, 37, 9, 10), "channels_last", torch.float32, 3, 2, 1, 1, True),
    ((2, 3, 9, 75), "contiguous", torch.float32, 3, 2, 1, 1, False),
    ((2, 3, 9, 57), "contiguous", torch.float64, 3, 1, 1, 2, False),
    ((2, 19, 8, 12), "channels_last", torch.float16, 2, 2, 0, 1, False),
    ((3, 16, 40), "contiguous", torch.bfloat16, 2, 2, 0, 1, False),
    ((2, 70, 6, 6), "channels_last", torch.float32, 2, 2, 0, 1, False),
]
CASES += [((2, 3, *c.size), LAYOUTS[i % 3], DTYPES[i % 4], c.kernel, c.stride, c.padding,
           c.dilation, c.ceil_mode) for i, c in enumerate(sample_cases(24, seed=11, max_size=40))]


def inputs(case, seed=3):
    shape, layout, dtype = case[:3]
    x = make_input(shape, dtype, layout, seed=seed, ties=seed % 2 == 0)
    x[x > 1.4] = float("nan")
    with portable_cpu_loops(False):
        out, sw = dx.max_pool2d_with_switches(x, *case[3:])
    v = make_input(out.shape, dtype, layout, seed=seed + 1)
    bad = sw.clone()
    position = torch.arange(bad.numel()).view(bad.shape)
    bad[position % 5 == 0] = 255   # outside every window
    bad[position % 7 == 0] = 1     # maybe in the padding
    return x, v, sw, bad


def run_all(x, v, sw, bad, case):
    k, s, p, d, c = case[3:]
    pair = [list(a) if isinstance(a, tuple) else [a, a] for a in (k, s, p, d)]
    out, sw_out = dx.max_pool2d_with_switches(x, k, s, p, d, c)
    size = list(x.shape[-2:])
    return [out, sw_out,
            ops.max_unpool2d_with_switches(v, sw, *pair, size),
            ops.max_unpool2d_with_switches(v, bad, *pair, size),
            ops.gather_at_switches(x, sw, *pair),
            ops.gather_at_switches(x, bad, *pair)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-k{c[3]}s{c[4]}p{c[5]}d{c[6]}{'c' if c[7] else ''}".replace(" ", "").replace("torch.", ""))
def test_fast_paths_equal_the_portable_loops_bitwise(case):
    x, v, sw, bad = inputs(case, seed=CASES.index(case))
    with portable_cpu_loops(False):
        fast = run_all(x, v, sw, bad, case)
    with portable_cpu_loops(True):
        portable = run_all(x, v, sw, bad, case)
    for a, b in zip(fast, portable):
        assert a.stride() == b.stride()
        if a.dtype == torch.uint8:
            assert torch.equal(a, b)
        else:
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("kind", ["float32", "float64", "float16", "bfloat16-batched"])
def test_aggregation_fast_path_equals_the_portable_loop_bitwise(kind):
    g = torch.Generator().manual_seed(5)
    dtype = getattr(torch, kind.split("-")[0])
    K, C, H, W = 9, 3, 60, 75
    maps = torch.randn(K, C, 13, 17, generator=g).to(dtype)
    maps[0, 0, 3, 4] = float("nan")
    x0, y0 = torch.randint(-30, 70, (K,), generator=g), torch.randint(-30, 55, (K,), generator=g)
    boxes = torch.stack([x0, y0, x0 + torch.randint(1, 90, (K,), generator=g),
                         y0 + torch.randint(1, 80, (K,), generator=g)], 1)
    boxes[1] = torch.tensor([-500, -400, -300, -200])  # far outside the image
    index = torch.randint(0, 3, (K,), generator=g) if "batched" in kind else None
    for mode in ("max", "sum", "mean"):
        with portable_cpu_loops(False):
            fast = dx.aggregate_proposals(maps, boxes, (H, W), mode, index, None)
        with portable_cpu_loops(True):
            portable = dx.aggregate_proposals(maps, boxes, (H, W), mode, index, None)
        assert_bitwise_equal(fast, portable)


def test_the_switch_is_restored_and_the_env_var_turns_it_on():
    before = _C._portable_loops()
    with portable_cpu_loops(True):
        assert _C._portable_loops()
        with portable_cpu_loops(False):
            assert not _C._portable_loops()
        assert _C._portable_loops()
    assert _C._portable_loops() == before
    env = dict(os.environ, DECONVNET_EXT_DISABLE_AVX2="1")
    done = subprocess.run([sys.executable, "-c",
                           "from deconvnet_ext._extension import _C; print(_C._portable_loops())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr[-2000:]
