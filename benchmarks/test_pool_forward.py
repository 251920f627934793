"""Pool forward: dx.max_pool2d_with_switches (uint8 switches) against
F.max_pool2d(return_indices=True) (int64 indices), its torch.compile, the reference
and the memory floor (read the input, write the output and the switches)."""
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference

import harness
from harness import KERNEL, STRIDE


def torch_pool(x):
    return F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)


def check_switches(data: harness.PoolData, case: harness.PoolCase):
    def check(result):
        out, switches = result
        harness.assert_equal(out, data.out, "pooled values")
        harness.assert_equal(switches, data.switches, "switches")
        assert out.is_contiguous(memory_format=case.memory_format), "output lost the input's memory format"
    return check


def check_indices(data: harness.PoolData):
    def check(result):
        out, indices = result
        harness.assert_equal(out, data.out, "pooled values")
        # Any index of a window's max is right (ties): the value it names is the max.
        picked = data.x.flatten(2).gather(2, indices.flatten(2)).view_as(out)
        harness.assert_equal(picked, out, "value at the returned indices")
    return check


def test_pool_forward(benchmark, pool_case, contender):
    data = harness.pool_data(pool_case)
    x = data.x
    sizes = pool_case.nbytes()
    bytes_moved = sizes["input"] + sizes["output"] + sizes["switches"]
    if contender in harness.FLOORS:
        fn, check = harness.floor_function(bytes_moved, pool_case.device, contender), None
    elif contender == "ours":
        fn, check = lambda: dx.max_pool2d_with_switches(x, KERNEL, STRIDE), check_switches(data, pool_case)
    elif contender == "torch":
        fn, check = lambda: torch_pool(x), check_indices(data)
    elif contender == "torch_compile":
        compiled_pool = harness.compiled(torch_pool, pool_case.id, benchmark.disabled)
        fn, check = lambda: compiled_pool(x), check_indices(data)
    else:
        fn = lambda: reference.max_pool2d_with_switches(x, KERNEL, STRIDE)
        check = check_switches(data, pool_case)
    harness.run_benchmark(benchmark, op="pool_forward", case_id=pool_case.id, contender=contender,
                          device=pool_case.device, fn=fn, check=check, bytes_moved=bytes_moved,
                          switch_bytes=sizes["switches"], index_bytes=sizes["indices"])
