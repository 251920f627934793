"""CUDA variants of the pooling op tests: the CUDA kernels against torch's own CUDA
pooling and against the CPU kernels (same shared geometry, so bit-identical), layouts,
dtypes, NaN, ties, bad switches, autograd, opcheck, determinism, errors.
Skipped without a GPU."""
import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference
from pool_cases import (DTYPES, LAYOUTS, PoolCase, assert_bitwise_equal, make_input,
                        sample_cases)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
ops = torch.ops.deconvnet_ext
CASES = sample_cases(24, seed=31)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_pool_unpool_gather_match_cpu_and_torch(case):
    i = CASES.index(case)
    dtype = DTYPES[i % len(DTYPES)]
    layout = LAYOUTS[(i // len(DTYPES)) % len(LAYOUTS)]
    x = make_input((2, 3, *case.size), dtype, layout, seed=i, ties=i % 3 == 0)
    x[x > 1.2] = float("nan")
    k, s, p, d = case.args
    out, sw = dx.max_pool2d_with_switches(x.cuda(), k, s, p, d, case.ceil_mode)
    cpu_out, cpu_sw = dx.max_pool2d_with_switches(x, k, s, p, d, case.ceil_mode)
    assert_bitwise_equal(out.cpu(), cpu_out)
    assert torch.equal(sw.cpu(), cpu_sw)
    ref_out, ref_idx = F.max_pool2d(x.cuda(), k, s, p, d, case.ceil_mode, return_indices=True)
    assert_bitwise_equal(out, ref_out)
    assert torch.equal(dx.switches_to_indices(sw, k, s, p, d, input_size=case.size), ref_idx)
    v = make_input(out.shape, dtype, layout, seed=50 + i)
    y = dx.max_unpool2d_with_switches(v.cuda(), sw, k, s, p, d, output_size=case.size)
    assert_bitwise_equal(y.cpu(), dx.max_unpool2d_with_switches(v, cpu_sw, k, s, p, d,
                                                                output_size=case.size))
    u = make_input(x.shape, dtype, layout, seed=80 + i)
    g = ops.gather_at_switches(u.cuda(), sw, k, s, p, d)
    assert_bitwise_equal(g.cpu(), ops.gather_at_switches(u, cpu_sw, k, s, p, d))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_unpool_equals_max_unpool2d_and_keeps_format(layout):
    x = make_input((2, 8, 16, 38), torch.float32, layout, seed=1, device="cuda")
    out, sw = dx.max_pool2d_with_switches(x, 2)
    y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(16, 38))
    idx = dx.switches_to_indices(sw, 2, input_size=(16, 38))
    assert_bitwise_equal(y, F.max_unpool2d(out, idx, 2, output_size=(16, 38)))
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_overlapping_unpool_is_deterministic_and_matches_reference():
    x = make_input((4, 16, 33, 35), torch.float32, "contiguous", seed=2, ties=True,
                   device="cuda")
    out, sw = dx.max_pool2d_with_switches(x, 3, 1, 1)
    a = dx.max_unpool2d_with_switches(out, sw, 3, 1, 1, output_size=(33, 35))
    b = dx.max_unpool2d_with_switches(out, sw, 3, 1, 1, output_size=(33, 35))
    assert torch.equal(a, b)
    ref = reference.max_unpool2d_with_switches(out.double(), sw, 3, 1, 1, output_size=(33, 35))
    torch.testing.assert_close(a.double(), ref)


def test_bad_switches_select_nothing_and_are_not_checked_on_cuda():
    out, sw = dx.max_pool2d_with_switches(torch.randn(2, 3, 6, 6, device="cuda"), 2)
    bad = sw.clone()
    bad[0, 0, 0, 0] = 200
    y = ops.max_unpool2d_with_switches(out, bad, [2, 2], [2, 2], [0, 0], [1, 1], [6, 6])
    assert y[0, 0, :2, :2].abs().sum() == 0
    assert ops.gather_at_switches(y, bad, [2, 2], [2, 2], [0, 0], [1, 1])[0, 0, 0, 0] == 0
    # The public wrapper does not check switch values on CUDA (that would be a device
    # sync per call): the bad switch selects nothing there, as in the op.
    assert torch.equal(dx.max_unpool2d_with_switches(out, bad, 2, output_size=(6, 6)), y)
    with pytest.raises(ValueError, match="switches"):   # the CPU keeps the clear error
        dx.max_unpool2d_with_switches(out.cpu(), bad.cpu(), 2, output_size=(6, 6))


def test_device_mismatch_names_switches():
    out, sw = dx.max_pool2d_with_switches(torch.randn(2, 3, 6, 6, device="cuda"), 2)
    with pytest.raises((ValueError, RuntimeError), match="switches"):
        ops.max_unpool2d_with_switches(out, sw.cpu(), [2, 2], [2, 2], [0, 0], [1, 1], [6, 6])


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_gradcheck_gradgradcheck_and_opcheck(layout):
    case = PoolCase((3, 2), (2, 2), (1, 1), (1, 2), True, (7, 8))
    args = [list(a) for a in case.args]
    x = make_input((2, 2, *case.size), torch.float64, layout, seed=3,
                   device="cuda").requires_grad_()

    def pool_unpool(t):
        out, sw = dx.max_pool2d_with_switches(t, *case.args, case.ceil_mode)
        return dx.max_unpool2d_with_switches(out * out, sw, *case.args, output_size=case.size)

    assert torch.autograd.gradcheck(pool_unpool, (x,))
    assert torch.autograd.gradgradcheck(pool_unpool, (x,))
    out, sw = ops.max_pool2d_with_switches(x, *args, True)
    torch.library.opcheck(ops.max_pool2d_with_switches, (x, *args, True))
    torch.library.opcheck(ops.max_unpool2d_with_switches,
                          (out.detach().requires_grad_(), sw, *args, list(case.size)))
    torch.library.opcheck(ops.gather_at_switches, (x, sw, *args))


def test_torch_compile_fullgraph_on_cuda():
    def f(x):
        out, sw = dx.max_pool2d_with_switches(x, 2)
        return dx.max_unpool2d_with_switches(out.relu(), sw, 2, output_size=x.shape[-2:])

    x = torch.randn(2, 4, 12, 10, device="cuda")
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x), f(x))
