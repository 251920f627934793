"""Pool forward + backward (the training step's cost of one pooling): the gradient
of dx.max_pool2d_with_switches (an unpool at the switches) against autograd through
F.max_pool2d(return_indices=True), its torch.compile, the reference, and the floor
(forward: read input, write output + switches; backward: read the output's gradient
+ switches, write the input's gradient)."""
import functools

import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference

import harness
from harness import KERNEL, STRIDE


def torch_pool_values(x):
    return F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)[0]


@functools.lru_cache(maxsize=1)
def backward_data(case: harness.PoolCase):
    """(leaf input, gradient of the output, reference input gradient)."""
    data = harness.pool_data(case)
    x = data.x.detach().requires_grad_()
    grad_out = harness.random_like(data.out, seed=1)
    out, _ = reference.max_pool2d_with_switches(x, KERNEL, STRIDE)
    (expected,) = torch.autograd.grad(out, x, grad_out)
    return x, grad_out, expected


def check_max_pool_gradient(grad_in, x, grad_out) -> None:
    """A rival's gradient is right when each window's gradient sums to the output's
    and sits only on the window's max (any of them, where there are ties: CUDA's and
    inductor's choice among equal maxima need not be the reference's)."""
    out = F.max_pool2d(x, KERNEL, STRIDE)
    window_sums = F.avg_pool2d(grad_in.float(), KERNEL, STRIDE) * (KERNEL * KERNEL)
    harness.assert_equal(window_sums, grad_out.float(), "input gradient summed over each window")
    at_max = x == F.interpolate(out, scale_factor=STRIDE, mode="nearest")
    assert bool(((grad_in == 0) | at_max).all()), "input gradient off the window's max"


def forward_backward(pool_values, x, grad_out):
    def run():
        out = pool_values(x)
        return torch.autograd.grad(out, x, grad_out)[0]
    return run


def test_pool_forward_backward(benchmark, pool_case, contender):
    x, grad_out, expected = backward_data(pool_case)
    sizes = pool_case.nbytes()
    bytes_moved = 2 * (sizes["input"] + sizes["output"] + sizes["switches"])

    def check(grad_in):
        if contender in ("ours", "reference"):
            harness.assert_equal(grad_in, expected, "input gradient")
        else:
            check_max_pool_gradient(grad_in, x.detach(), grad_out)

    if contender in harness.FLOORS:
        fn, check = harness.floor_function(bytes_moved, pool_case.device, contender), None
    elif contender == "ours":
        fn = forward_backward(lambda t: dx.max_pool2d_with_switches(t, KERNEL, STRIDE)[0], x, grad_out)
    elif contender == "torch":
        fn = forward_backward(torch_pool_values, x, grad_out)
    elif contender == "torch_compile":
        fn = forward_backward(harness.compiled(torch_pool_values, pool_case.id, benchmark.disabled),
                              x, grad_out)
    else:
        fn = forward_backward(lambda t: reference.max_pool2d_with_switches(t, KERNEL, STRIDE)[0],
                              x, grad_out)
    harness.run_benchmark(benchmark, op="pool_forward_backward", case_id=pool_case.id,
                          contender=contender, device=pool_case.device, fn=fn, check=check,
                          bytes_moved=bytes_moved)
