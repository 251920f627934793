"""Unpool backward (the decoder's gradient): the gradient of
dx.max_unpool2d_with_switches (a gather at the switches) against autograd through
F.max_unpool2d, its torch.compile and the reference. Only the backward is timed: the
forward graph is built once and its backward rerun (retain_graph). Floor: read the
unpooled map's gradient + switches, write the pooled values' gradient."""
import functools

import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference

import harness
from harness import KERNEL, STRIDE


@functools.lru_cache(maxsize=1)
def backward_data(case: harness.PoolCase):
    """(leaf pooled values, gradient of the unpooled map, reference values gradient)."""
    data = harness.pool_data(case)
    values = data.out.detach().requires_grad_()
    size = tuple(case.shape[-2:])
    y = reference.max_unpool2d_with_switches(values, data.switches, KERNEL, STRIDE, output_size=size)
    grad_y = harness.random_like(y, seed=2)
    (expected,) = torch.autograd.grad(y, values, grad_y)
    return values, grad_y, expected


def torch_unpool(values, indices, output_size):
    return F.max_unpool2d(values, indices, KERNEL, STRIDE, output_size=output_size)


def backward_only(y, values, grad_y):
    return lambda: torch.autograd.grad(y, values, grad_y, retain_graph=True)[0]


def test_unpool_backward(benchmark, pool_case, contender):
    data = harness.pool_data(pool_case)
    values, grad_y, expected = backward_data(pool_case)
    size = tuple(pool_case.shape[-2:])
    sizes = pool_case.nbytes()
    bytes_moved = sizes["input"] + sizes["switches"] + sizes["output"]

    def check(result):
        harness.assert_equal(result, expected, "pooled values gradient")

    if contender in harness.FLOORS:
        fn, check = harness.floor_function(bytes_moved, pool_case.device, contender), None
    elif contender == "ours":
        y = dx.max_unpool2d_with_switches(values, data.switches, KERNEL, STRIDE, output_size=size)
        fn = backward_only(y, values, grad_y)
    elif contender == "torch":
        fn = backward_only(torch_unpool(values, data.indices, size), values, grad_y)
    elif contender == "torch_compile":
        compiled_unpool = harness.compiled(torch_unpool, pool_case.id, benchmark.disabled)
        try:
            y = compiled_unpool(values, data.indices, size)
        except Exception as exc:  # noqa: BLE001 - a compile failure skips this contender
            harness.skip_compile_failure(exc)
        fn = backward_only(y, values, grad_y)
    else:
        y = reference.max_unpool2d_with_switches(values, data.switches, KERNEL, STRIDE, output_size=size)
        fn = backward_only(y, values, grad_y)
    harness.run_benchmark(benchmark, op="unpool_backward", case_id=pool_case.id, contender=contender,
                          device=pool_case.device, fn=fn, check=check, bytes_moved=bytes_moved)
