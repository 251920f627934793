"""max_pool2d_with_switches against torch.nn.functional.max_pool2d and reference.py:
values bit for bit (NaN included), switches = torch's argmax (ties, NaN), layouts,
dtypes, 3-d / empty inputs, autograd, opcheck, determinism."""
import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference
from pool_cases import cpu_loops  # noqa: F401  (autouse: fast and portable CPU loops)
from pool_cases import (DTYPES, LAYOUTS, PoolCase, assert_bitwise_equal, has_empty_window,
                        make_input, sample_cases)

CASES = sample_cases(36, seed=3)


def check_against_torch(x: torch.Tensor, case: PoolCase) -> None:
    k, s, p, d = case.args
    out, sw = dx.max_pool2d_with_switches(x, k, s, p, d, case.ceil_mode)
    ref_out, ref_idx = F.max_pool2d(x, k, s, p, d, case.ceil_mode, return_indices=True)
    assert_bitwise_equal(out, ref_out)
    assert sw.dtype == torch.uint8 and sw.shape == out.shape
    # torch's indices are the first max in window order (or the last NaN), like ours.
    assert torch.equal(dx.switches_to_indices(sw, k, s, p, d, input_size=x.shape[-2:]), ref_idx)
    if not has_empty_window(case):
        assert torch.equal(sw, reference.max_pool2d_with_switches(x, k, s, p, d,
                                                                  case.ceil_mode)[1])


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch_over_sampled_grid(case):
    i = CASES.index(case)
    dtype = DTYPES[i % len(DTYPES)]
    layout = LAYOUTS[(i // len(DTYPES)) % len(LAYOUTS)]
    x = make_input((2, 3, *case.size), dtype, layout, seed=i)
    check_against_torch(x, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_deconvnet_pool_all_dtypes_and_layouts(dtype, layout):
    # 2x2 / stride 2 has an AVX2 path (NCHW float32); odd sizes exercise its tails.
    for size in ((16, 38), (7, 9), (9, 37)):
        for ceil_mode in (False, True):
            case = PoolCase((2, 2), (2, 2), (0, 0), (1, 1), ceil_mode, size)
            check_against_torch(make_input((2, 5, *size), dtype, layout, seed=1), case)


@pytest.mark.parametrize("case", [
    PoolCase((3, 3), (1, 1), (1, 1), (1, 1), False, (9, 57)),
    PoolCase((3, 3), (2, 2), (1, 1), (1, 1), True, (9, 75)),
    PoolCase((5, 4), (3, 3), (2, 2), (2, 1), True, (14, 110)),
    PoolCase((2, 3), (1, 1), (0, 1), (1, 2), False, (5, 41)),
    PoolCase((1, 1), (1, 2), (0, 0), (1, 1), False, (3, 64)),
], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_wide_rows_take_the_blocked_path(case, dtype):
    # Rows of 16+ interior windows run through the vectorized block loop.
    x = make_input((2, 3, *case.size), dtype, "contiguous", seed=13, ties=dtype == torch.float16)
    x[x > 1.5] = float("nan")
    check_against_torch(x, case)


@pytest.mark.parametrize("case", [
    PoolCase((2, 2), (2, 2), (0, 0), (1, 1), True, (7, 9)),
    PoolCase((3, 3), (2, 1), (1, 1), (1, 2), False, (8, 9)),
    PoolCase((4, 5), (3, 2), (2, 2), (2, 1), True, (11, 10)),
], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_channels_last_with_many_channels(case, dtype):
    # 37 channels: two 16-channel vector steps and a scalar tail per pixel.
    x = make_input((2, 37, *case.size), dtype, "channels_last", seed=17, ties=True)
    x[x > 2.5] = float("nan")
    check_against_torch(x, case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_take_the_first_in_window_order(dtype):
    for case in sample_cases(8, seed=11):
        x = make_input((2, 3, *case.size), dtype, "contiguous", seed=5, ties=True)
        check_against_torch(x, case)
    x = torch.zeros(1, 1, 4, 4, dtype=dtype)
    out, sw = dx.max_pool2d_with_switches(x, 2)
    assert torch.equal(sw, torch.zeros_like(sw))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.float16), ids=str)
def test_nan_wins_its_window_like_torch(dtype, layout):
    for i, case in enumerate(sample_cases(8, seed=21) + [
            PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (8, 36))]):
        x = make_input((2, 4, *case.size), dtype, layout, seed=i)
        x[x > 0.7] = float("nan")  # often several NaNs in one window: torch keeps the last
        x[x < -1.5] = float("-inf")
        check_against_torch(x, case)


def test_all_minus_inf_window_reports_its_first_tap():
    x = torch.full((1, 2, 5, 5), float("-inf"))
    case = PoolCase((3, 3), (2, 2), (1, 1), (1, 1), True, (5, 5))
    check_against_torch(x, case)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_3d_input_matches_4d(layout):
    x = make_input((3, 11, 10), torch.float32, layout, seed=2)
    out, sw = dx.max_pool2d_with_switches(x, 3, 2, 1, 1, True)
    out4, sw4 = dx.max_pool2d_with_switches(x.unsqueeze(0), 3, 2, 1, 1, True)
    assert out.shape == sw.shape == (3, 6, 6)
    assert torch.equal(out, out4[0]) and torch.equal(sw, sw4[0])
    assert_bitwise_equal(out, F.max_pool2d(x, 3, 2, 1, 1, True))


def test_output_keeps_the_memory_format():
    x = make_input((2, 8, 10, 10), torch.float32, "channels_last", seed=0)
    out, sw = dx.max_pool2d_with_switches(x, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert sw.is_contiguous(memory_format=torch.channels_last)
    out, sw = dx.max_pool2d_with_switches(x.contiguous(), 2)
    assert out.is_contiguous() and sw.is_contiguous()


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8), (0, 8, 8)])
def test_empty_batch_or_channels(shape):
    x = torch.randn(shape)
    out, sw = dx.max_pool2d_with_switches(x, 2)
    assert out.shape == sw.shape == (*shape[:-2], 4, 4)
    assert out.numel() == 0
    if shape[0] == 0 and len(shape) == 4:
        assert out.shape == F.max_pool2d(x, 2).shape


def test_int_and_pair_arguments_like_functional():
    x = make_input((2, 3, 12, 13), torch.float32, "contiguous", seed=4)
    a = dx.max_pool2d_with_switches(x, 3, None, 1, 1)
    b = dx.max_pool2d_with_switches(x, (3, 3), (3, 3), [1, 1], (1,))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], F.max_pool2d(x, 3, padding=1))


def test_two_runs_are_bitwise_identical():
    x = make_input((4, 16, 33, 35), torch.float32, "contiguous", seed=8)
    for layout_x in (x, x.contiguous(memory_format=torch.channels_last)):
        a = dx.max_pool2d_with_switches(layout_x, 3, 2, 1)
        b = dx.max_pool2d_with_switches(layout_x, 3, 2, 1)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("case", [
    PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (6, 7)),
    PoolCase((3, 2), (1, 2), (1, 1), (2, 1), True, (7, 6)),
], ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_gradcheck_and_gradgradcheck(case, layout):
    x = make_input((2, 2, *case.size), torch.float64, layout, seed=6).requires_grad_()

    def pooled(t):
        return dx.max_pool2d_with_switches(t, *case.args, case.ceil_mode)[0]

    assert torch.autograd.gradcheck(pooled, (x,))
    assert torch.autograd.gradgradcheck(pooled, (x,))


def test_backward_matches_torch():
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", seed=9).requires_grad_()
    out, _ = dx.max_pool2d_with_switches(x, 3, 2, 1, 1, True)
    g = torch.randn_like(out)
    (mine,) = torch.autograd.grad(out, x, g)
    (theirs,) = torch.autograd.grad(F.max_pool2d(x, 3, 2, 1, 1, True), x, g)
    torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_opcheck(layout):
    x = make_input((2, 3, 9, 8), torch.float64, layout, seed=1).requires_grad_()
    for args in (([2, 2], [2, 2], [0, 0], [1, 1], False), ([3, 3], [2, 1], [1, 1], [1, 2], True)):
        torch.library.opcheck(torch.ops.deconvnet_ext.max_pool2d_with_switches, (x, *args))
    torch.library.opcheck(torch.ops.deconvnet_ext.max_pool2d_with_switches,
                          (x[0].detach(), [2, 2], [2, 2], [0, 0], [1, 1], False))


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (1, 3, 4, 4), (2, 3, 1, 1)])
def test_opcheck_on_layouts_with_ambiguous_strides(shape):
    # Size-1 dims make contiguous and channels_last strides coincide in part; the fake
    # kernels must still give exactly the strides the real kernels allocate.
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    args = ([1, 1], [1, 1], [0, 0], [1, 1])
    torch.library.opcheck(torch.ops.deconvnet_ext.max_pool2d_with_switches, (x, *args, False))
    out, sw = torch.ops.deconvnet_ext.max_pool2d_with_switches(x, *args, False)
    torch.library.opcheck(torch.ops.deconvnet_ext.max_unpool2d_with_switches,
                          (out, sw, *args, list(shape[-2:])))


def test_autograd_is_registered_in_cpp():
    # csrc/autograd.cpp: the Autograd dispatch key, no Python on the autograd path.
    for op in ("max_pool2d_with_switches", "max_unpool2d_with_switches", "gather_at_switches"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"deconvnet_ext::{op}", "Autograd")
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    out, sw = dx.max_pool2d_with_switches(x, 2)
    y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(4, 4))
    assert "CppNode" in out.grad_fn.name() and "CppNode" in y.grad_fn.name()
    assert not sw.requires_grad
