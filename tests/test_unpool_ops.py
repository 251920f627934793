"""max_unpool2d_with_switches and gather_at_switches: F.max_unpool2d where windows do
not overlap, reference.py's adjoint where they do, the adjoint identity, bad switches
selecting nothing, autograd, opcheck, determinism and torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference
from pool_cases import cpu_loops  # noqa: F401  (autouse: fast and portable CPU loops)
from pool_cases import (DTYPES, LAYOUTS, PoolCase, assert_bitwise_equal, make_input,
                        sample_cases)

CASES = sample_cases(30, seed=7)
ops = torch.ops.deconvnet_ext


def pooled(case: PoolCase, dtype=torch.float64, layout="contiguous", seed=0, batch=(2, 3)):
    x = make_input((*batch, *case.size), dtype, layout, seed=seed)
    out, sw = dx.max_pool2d_with_switches(x, *case.args, case.ceil_mode)
    return x, out, sw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [
    PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (16, 38)),
    PoolCase((2, 2), (2, 2), (0, 0), (1, 1), True, (7, 9)),
    PoolCase((3, 2), (3, 3), (1, 1), (1, 1), False, (11, 10)),
], ids=str)
def test_equals_max_unpool2d_where_windows_do_not_overlap(case, dtype, layout):
    x, out, sw = pooled(case, dtype, layout, seed=1, batch=(2, 19))
    v = make_input(out.shape, dtype, layout, seed=2)  # any values, not just the maxima
    k, s, p, d = case.args
    y = dx.max_unpool2d_with_switches(v, sw, k, s, p, d, output_size=case.size)
    idx = dx.switches_to_indices(sw, k, s, p, d, input_size=case.size)
    assert_bitwise_equal(y, F.max_unpool2d(v, idx, k, s, p, output_size=case.size))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference_adjoint_over_sampled_grid(case):
    i = CASES.index(case)
    layout = LAYOUTS[i % len(LAYOUTS)]
    x, out, sw = pooled(case, torch.float64, layout, seed=i)
    v = make_input(out.shape, torch.float64, layout, seed=100 + i)
    k, s, p, d = case.args
    y = dx.max_unpool2d_with_switches(v, sw, k, s, p, d, output_size=case.size)
    torch.testing.assert_close(y, reference.max_unpool2d_with_switches(
        v, sw, k, s, p, d, output_size=case.size), rtol=1e-12, atol=1e-12)
    u = make_input(x.shape, torch.float64, layout, seed=200 + i)
    g = ops.gather_at_switches(u, sw, k, s, p, d)
    assert torch.equal(g, reference.gather_at_switches(u, sw, k, s, p, d))
    # The adjoint identity <unpool(v), u> == <v, gather(u)>.
    torch.testing.assert_close((y * u).sum(), (v * g).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_overlapping_windows_sum_contributions(dtype):
    # Stride 1: a repeated max is picked by several windows and its location sums them.
    case = PoolCase((3, 3), (1, 1), (1, 1), (1, 1), False, (9, 10))
    x, out, sw = pooled(case, dtype, "contiguous", seed=3)
    y = dx.max_unpool2d_with_switches(out, sw, *case.args, output_size=case.size)
    ref = reference.max_unpool2d_with_switches(out.double(), sw, *case.args,
                                               output_size=case.size)
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2)
    assert (y != 0).sum() < y.numel()


def test_3d_and_empty_inputs():
    case = PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (8, 8))
    _, out, sw = pooled(case, torch.float32, seed=4, batch=(3,))
    y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(8, 8))
    y4 = dx.max_unpool2d_with_switches(out[None], sw[None], 2, output_size=(1, 3, 8, 8))
    assert y.shape == (3, 8, 8) and torch.equal(y, y4[0])
    g = ops.gather_at_switches(y, sw, [2, 2], [2, 2], [0, 0], [1, 1])
    assert g.shape == (3, 4, 4) and torch.equal(g, out)
    for batch in ((0, 3), (2, 0)):
        _, out, sw = pooled(case, torch.float32, batch=batch)
        y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(8, 8))
        assert y.shape == (*batch, 8, 8)
        assert ops.gather_at_switches(y, sw, [2, 2], [2, 2], [0, 0], [1, 1]).shape == out.shape


def test_unpool_of_pool_keeps_only_the_maxima():
    case = PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (10, 12))
    x, out, sw = pooled(case, torch.float32, seed=5)
    y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(10, 12))
    assert torch.equal(y[y != 0], x[y != 0])
    assert int((y != 0).sum()) == out.numel()  # random input: no zero maxima
    assert torch.equal(ops.gather_at_switches(y, sw, [2, 2], [2, 2], [0, 0], [1, 1]), out)


def test_switches_outside_the_window_select_nothing_in_the_kernels():
    case = PoolCase((2, 2), (2, 2), (0, 0), (1, 1), False, (6, 6))
    _, out, sw = pooled(case, torch.float32, seed=6)
    bad = sw.clone()
    bad[0, 0, 0, 0] = 4
    bad[1, 2, 1, 2] = 255
    y = ops.max_unpool2d_with_switches(out, bad, [2, 2], [2, 2], [0, 0], [1, 1], [6, 6])
    assert torch.equal(y, reference.max_unpool2d_with_switches(out, bad, 2, 2,
                                                               output_size=(6, 6)))
    assert y[0, 0, :2, :2].abs().sum() == 0 and y[1, 2, 2:4, 4:6].abs().sum() == 0
    g = ops.gather_at_switches(y, bad, [2, 2], [2, 2], [0, 0], [1, 1])
    assert g[0, 0, 0, 0] == 0 and g[1, 2, 1, 2] == 0
    with pytest.raises(ValueError, match="switches"):
        dx.max_unpool2d_with_switches(out, bad, 2, output_size=(6, 6))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [(16, 38), (9, 37)])
def test_gather_on_wide_rows_with_bad_switches(layout, size):
    # 2x2/stride 2 float32 rows of 16+ windows take the AVX2 gather; bad switches
    # (>= 4) must give 0 there as in the scalar tail and the reference.
    x = make_input((2, 5, *size), torch.float32, layout, seed=14)
    x[x > 1.8] = float("nan")
    out, sw = dx.max_pool2d_with_switches(x, 2)
    sw = sw.clone()
    position = torch.arange(sw.numel()).view(sw.shape)
    sw[position % 7 == 0] = 4
    sw[position % 11 == 0] = 255
    u = make_input(x.shape, torch.float32, layout, seed=15)
    u[u < -1.8] = float("nan")
    assert_bitwise_equal(ops.gather_at_switches(u, sw, [2, 2], [2, 2], [0, 0], [1, 1]),
                         reference.gather_at_switches(u, sw, 2, 2))
    x[x.isnan()] = 0
    out, sw = dx.max_pool2d_with_switches(x, 2)
    assert_bitwise_equal(ops.gather_at_switches(x, sw, [2, 2], [2, 2], [0, 0], [1, 1]), out)


def test_two_runs_are_bitwise_identical():
    case = PoolCase((3, 3), (1, 2), (1, 1), (1, 1), False, (33, 35))
    _, out, sw = pooled(case, torch.float32, seed=8, batch=(4, 16))
    for v, s in ((out, sw), (out.contiguous(memory_format=torch.channels_last),
                             sw.contiguous(memory_format=torch.channels_last))):
        a = dx.max_unpool2d_with_switches(v, s, *case.args, output_size=case.size)
        b = dx.max_unpool2d_with_switches(v, s, *case.args, output_size=case.size)
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", [
    PoolCase((2, 2), (2, 2), (0, 0), (1, 1), True, (7, 6)),
    PoolCase((3, 3), (1, 2), (1, 1), (1, 2), False, (7, 8)),
], ids=str)
@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_gradcheck_and_gradgradcheck(case, layout):
    _, out, sw = pooled(case, torch.float64, layout, seed=9, batch=(2, 2))
    v = make_input(out.shape, torch.float64, layout, seed=10).requires_grad_()
    u = make_input((2, 2, *case.size), torch.float64, layout, seed=11).requires_grad_()

    def unpool(t):
        return dx.max_unpool2d_with_switches(t, sw, *case.args, output_size=case.size)

    def gather(t):
        return ops.gather_at_switches(t, sw, *[list(a) for a in case.args])

    assert torch.autograd.gradcheck(unpool, (v,))
    assert torch.autograd.gradgradcheck(unpool, (v,))
    assert torch.autograd.gradcheck(gather, (u,))
    assert torch.autograd.gradgradcheck(gather, (u,))


@pytest.mark.parametrize("layout", ("contiguous", "channels_last"))
def test_opcheck(layout):
    case = PoolCase((3, 2), (2, 2), (1, 0), (1, 2), True, (9, 8))
    x, out, sw = pooled(case, torch.float64, layout, seed=12)
    args = [list(a) for a in case.args]
    torch.library.opcheck(ops.max_unpool2d_with_switches,
                          (out.requires_grad_(), sw, *args, list(case.size)))
    torch.library.opcheck(ops.gather_at_switches, (x.requires_grad_(), sw, *args))
    torch.library.opcheck(ops.max_unpool2d_with_switches,
                          (out[0].detach(), sw[0], *args, list(case.size)))


class PoolUnpool(torch.nn.Module):
    """A DeconvNet stage in miniature: conv, switch pool, unpool, conv."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.dec = torch.nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        out, sw = dx.max_pool2d_with_switches(torch.relu(self.enc(x)), 2, 2)
        y = dx.max_unpool2d_with_switches(out, sw, 2, 2, output_size=x.shape[-2:])
        return self.dec(y)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = PoolUnpool()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 12, 10, requires_grad=True)
    expected = model(x)
    (gx_expected,) = torch.autograd.grad(expected.sum(), x)
    actual = compiled(x)
    (gx_actual,) = torch.autograd.grad(actual.sum(), x)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(gx_actual, gx_expected)


@pytest.mark.slow
def test_torch_compile_fullgraph_inductor_forward_and_backward():
    def pool_unpool(x):
        out, sw = dx.max_pool2d_with_switches(x, 2)
        return dx.max_unpool2d_with_switches(out * 2, sw, 2, output_size=x.shape[-2:])

    x = torch.randn(2, 4, 12, 10, requires_grad=True)
    actual = torch.compile(pool_unpool, fullgraph=True)(x)
    (g_actual,) = torch.autograd.grad(actual.sum(), x)
    expected = pool_unpool(x)
    (g_expected,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    torch.testing.assert_close(g_actual, g_expected, rtol=0, atol=0)
