"""Bad input to the pooling ops: a Python exception whose message names the argument
(and shows the value), never a crash or a wrong answer."""
import re

import pytest
import torch

import deconvnet_ext as dx
from pool_cases import cpu_loops  # noqa: F401  (autouse: fast and portable CPU loops)

ops = torch.ops.deconvnet_ext


def x4(dtype=torch.float32, shape=(2, 3, 8, 8)):
    return torch.randn(shape).to(dtype)


@pytest.mark.parametrize("call, exc, pattern", [
    (lambda: dx.max_pool2d_with_switches(x4(shape=(8, 8)), 2), ValueError, r"self.*\[8, 8\]"),
    (lambda: dx.max_pool2d_with_switches(x4(shape=(1, 2, 3, 8, 8)), 2), ValueError,
     r"self.*\[1, 2, 3, 8, 8\]"),
    (lambda: dx.max_pool2d_with_switches(x4(torch.int32), 2), TypeError, r"self.*Int"),
    (lambda: dx.max_pool2d_with_switches(torch.zeros(2, 3, 8, 8, dtype=torch.bool), 2),
     TypeError, r"self.*Bool"),
    (lambda: dx.max_pool2d_with_switches(x4(), 0), ValueError, r"kernel_size.*\[0, 0\]"),
    (lambda: dx.max_pool2d_with_switches(x4(), 2, 0), ValueError, r"stride.*\[0, 0\]"),
    (lambda: dx.max_pool2d_with_switches(x4(), 2, 2, 0, (1, 0)), ValueError,
     r"dilation.*\[1, 0\]"),
    (lambda: dx.max_pool2d_with_switches(x4(), 2, 2, 2), ValueError, r"padding.*\[2, 2\]"),
    (lambda: dx.max_pool2d_with_switches(x4(), 2, 2, -1), ValueError, r"padding.*\[-1, -1\]"),
    (lambda: dx.max_pool2d_with_switches(x4(shape=(1, 1, 20, 20)), 17), ValueError,
     r"kernel_size.*\[17, 17\].*289"),
    (lambda: dx.max_pool2d_with_switches(x4(shape=(1, 1, 20, 20)), (8, 33)), ValueError,
     r"kernel_size.*\[8, 33\].*264"),
    (lambda: dx.max_pool2d_with_switches(x4(shape=(2, 3, 2, 2)), 3), ValueError,
     r"\(2, 2\).*too small.*kernel_size"),
    (lambda: dx.max_pool2d_with_switches(x4(), (2, 2, 2)), ValueError, r"kernel_size.*\(2, 2, 2\)"),
], ids=["rank2", "rank5", "int", "bool", "kernel0", "stride0", "dilation0", "padding_big",
        "padding_negative", "window289", "window264", "too_small", "kernel_triple"])
def test_pool_bad_arguments(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_non_integer_window_arguments():
    with pytest.raises(TypeError, match=r"kernel_size=2\.0"):
        dx.max_pool2d_with_switches(x4(), 2.0)


def test_window_of_256_is_accepted():
    x = x4(shape=(1, 2, 16, 16))
    out, sw = dx.max_pool2d_with_switches(x, 16)
    assert int(sw.max()) <= 255 and torch.equal(out, x.amax(dim=(-2, -1), keepdim=True))


def pool2(shape=(2, 3, 8, 8)):
    x = torch.randn(shape)
    return dx.max_pool2d_with_switches(x, 2)


@pytest.mark.parametrize("make, exc, pattern", [
    (lambda o, s: (o, s.long()), TypeError, r"switches.*Long"),
    (lambda o, s: (o, s[:, :2]), ValueError, r"switches.*\[2, 2, 4, 4\]"),
    (lambda o, s: (o, s[0]), ValueError, r"switches.*\[3, 4, 4\]"),
    (lambda o, s: (o, s.to("meta")), ValueError, r"switches.*meta"),
    (lambda o, s: (o.to("meta"), s), ValueError, r"switches.*cpu"),
    (lambda o, s: (o.int(), s), TypeError, r"self.*Int"),
])
def test_unpool_bad_tensors(make, exc, pattern):
    out, sw = pool2()
    v, s = make(out, sw)
    with pytest.raises(exc, match=pattern):
        dx.max_unpool2d_with_switches(v, s, 2, output_size=(8, 8))


@pytest.mark.parametrize("output_size, pattern", [
    ((20, 8), r"output_size.*\(20, 8\)"),
    ((8, 3), r"output_size.*\(8, 3\)"),
    ((0, 8), r"output_size.*\(0, 8\)"),
    ((8,), r"output_size.*\(8,\)"),
    ((2, 4, 8, 8), r"output_size.*\(2, 4, 8, 8\)"),
    (None, r"output_size"),
])
def test_unpool_impossible_output_size(output_size, pattern):
    out, sw = pool2()
    with pytest.raises(ValueError, match=pattern):
        dx.max_unpool2d_with_switches(out, sw, 2, output_size=output_size)


def test_unpool_odd_sizes_that_pooling_can_give_are_accepted():
    out, sw = pool2((2, 3, 9, 9))  # floor: 4x4; 8x8 and 9x9 both pool to it
    for size in ((8, 8), (9, 9), (8, 9)):
        assert dx.max_unpool2d_with_switches(out, sw, 2, output_size=size).shape[-2:] == size
    y = dx.max_unpool2d_with_switches(out, sw, 2, output_size=(7, 7))  # ceil_mode gives 4x4
    assert y.shape[-2:] == (7, 7)


@pytest.mark.parametrize("bad_value", [4, 17, 255])
def test_unpool_switch_values_outside_the_window(bad_value):
    out, sw = pool2()
    sw = sw.clone()
    sw[1, 2, 3, 0] = bad_value
    with pytest.raises(ValueError, match=rf"switches.*{bad_value}.*\(2, 2\)"):
        dx.max_unpool2d_with_switches(out, sw, 2, output_size=(8, 8))


@pytest.mark.parametrize("make, exc, pattern", [
    (lambda y, s: (y, s.float()), TypeError, r"switches.*Float"),
    (lambda y, s: (y[:1], s), ValueError, r"switches.*\[2, 3, 4, 4\].*self.*\[1, 3, 8, 8\]"),
    (lambda y, s: (y[:, :, :3], s), ValueError, r"self's spatial size.*\(3, 8\)"),
    (lambda y, s: (y.to("meta"), s), ValueError, r"switches.*cpu"),
])
def test_gather_bad_tensors(make, exc, pattern):
    out, sw = pool2()
    y = torch.randn(2, 3, 8, 8)
    y, s = make(y, sw)
    with pytest.raises(exc, match=pattern):
        ops.gather_at_switches(y, s, [2, 2], [2, 2], [0, 0], [1, 1])


def test_meta_tensors_give_shapes():
    x = torch.empty(2, 3, 9, 7, device="meta")
    out, sw = dx.max_pool2d_with_switches(x, 3, 2, 1, 1, True)
    assert out.device.type == "meta" and out.shape == sw.shape == (2, 3, 5, 4)
    assert sw.dtype == torch.uint8
    y = dx.max_unpool2d_with_switches(out, sw, 3, 2, 1, 1, output_size=(9, 7))
    assert y.shape == (2, 3, 9, 7)
