"""Unpool forward: dx.max_unpool2d_with_switches (uint8 switches) against
F.max_unpool2d (int64 indices), its torch.compile, the reference, and the floor
(read the pooled values + switches, write the unpooled map)."""
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference

import harness
from harness import KERNEL, STRIDE


def torch_unpool(values, indices, output_size):
    return F.max_unpool2d(values, indices, KERNEL, STRIDE, output_size=output_size)


def test_unpool_forward(benchmark, pool_case, contender):
    data = harness.pool_data(pool_case)
    out, switches, indices = data.out, data.switches, data.indices
    size = tuple(pool_case.shape[-2:])
    expected = unpool_reference(pool_case)
    sizes = pool_case.nbytes()
    bytes_moved = sizes["output"] + sizes["switches"] + sizes["input"]

    def check(result):
        harness.assert_equal(result, expected, "unpooled map")

    if contender in harness.FLOORS:
        fn, check = harness.floor_function(bytes_moved, pool_case.device, contender), None
    elif contender == "ours":
        fn = lambda: dx.max_unpool2d_with_switches(out, switches, KERNEL, STRIDE, output_size=size)
    elif contender == "torch":
        fn = lambda: torch_unpool(out, indices, size)
    elif contender == "torch_compile":
        compiled_unpool = harness.compiled(torch_unpool, pool_case.id, benchmark.disabled)
        fn = lambda: compiled_unpool(out, indices, size)
    else:
        fn = lambda: reference.max_unpool2d_with_switches(out, switches, KERNEL, STRIDE, output_size=size)
    harness.run_benchmark(benchmark, op="unpool_forward", case_id=pool_case.id, contender=contender,
                          device=pool_case.device, fn=fn, check=check, bytes_moved=bytes_moved)


_EXPECTED: dict = {}


def unpool_reference(case: harness.PoolCase):
    """The reference unpooling of the case's pooled values (cached for one case)."""
    if case not in _EXPECTED:
        _EXPECTED.clear()
        data = harness.pool_data(case)
        _EXPECTED[case] = reference.max_unpool2d_with_switches(
            data.out, data.switches, KERNEL, STRIDE, output_size=tuple(case.shape[-2:]))
    return _EXPECTED[case]
