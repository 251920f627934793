"""The CPU speed targets of interleaved.py in the suite: every case's two contenders
are checked against each other, then timed interleaved (ours, theirs, ours, theirs ...;
three trials) and the ratio, its spread and the target go into the benchmark JSON's
extra_info. With --benchmark-disable (CI) each contender runs once after the check,
so the cases never rot; no speed is asserted."""
import pytest

import interleaved


@pytest.mark.parametrize("name", [t.name for t in interleaved.TARGETS])
def test_interleaved_ratio(benchmark, name, request):
    disabled = request.config.getoption("benchmark_disable", False)
    ours, theirs, check = interleaved.contenders(name)
    check()
    if disabled:  # benchmark() runs ours once when disabled
        benchmark(ours)
        theirs()
        return
    r = interleaved.measure(name)
    benchmark.extra_info.update({k: v for k, v in r.items() if k != "ratios"} |
                                {"ratios": list(r["ratios"])})
    # pytest-benchmark wants one timed call; the interleaved figures are the result
    benchmark.pedantic(ours, rounds=1, iterations=1)
