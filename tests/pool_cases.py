"""Shared cases and helpers of the pooling op tests (test_pool_*.py, test_unpool_*.py).

The configuration grid of the issue (kernel 1..5, stride 1..3, padding up to half the
kernel, dilation 1..2, ceil_mode, odd sizes, dtypes, layouts) is sampled with a fixed
seed rather than walked in full, so the suite stays fast on 2 cores.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Tuple

import pytest
import torch

from deconvnet_ext._extension import portable_cpu_loops

CPU_LOOPS = ("fast", "portable")


@pytest.fixture(params=CPU_LOOPS, autouse=True)
def cpu_loops(request):
    """Runs each test of a module that imports this fixture twice: through the CPU
    ops' fast paths (AVX2 / blocked loops) and through their portable loops (a
    parallel_for over the element functions of csrc/common/, which the CUDA kernels
    run): the whole op sweep checks the GPU's logic on the CPU."""
    with portable_cpu_loops(request.param == "portable"):
        yield request.param


DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "strided_view")
_INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64,
             torch.float16: torch.int16, torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class PoolCase:
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    ceil_mode: bool
    size: Tuple[int, int]

    @property
    def args(self):
        return self.kernel, self.stride, self.padding, self.dilation

    def __str__(self) -> str:
        return (f"k{self.kernel}s{self.stride}p{self.padding}d{self.dilation}"
                f"{'ceil' if self.ceil_mode else 'floor'}{self.size}").replace(" ", "")


def pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def output_shape(case: PoolCase) -> Tuple[int, int]:
    return tuple(pooled_size(case.size[a], case.kernel[a], case.stride[a], case.padding[a],
                             case.dilation[a], case.ceil_mode) for a in range(2))


def has_empty_window(case: PoolCase) -> bool:
    """True when some window lies wholly in the padding along an axis (tiny inputs with
    dilation). torch then reports an index outside its window, which its flat-index
    form cannot be decoded back from, so reference.indices_to_switches is ambiguous."""
    for a in range(2):
        k, s, p, d = case.kernel[a], case.stride[a], case.padding[a], case.dilation[a]
        for o in range(output_shape(case)[a]):
            if not any(0 <= o * s - p + t * d < case.size[a] for t in range(k)):
                return True
    return False


def sample_cases(n: int, seed: int, max_size: int = 13) -> List[PoolCase]:
    """n valid configurations (non-empty output), drawn with a fixed seed."""
    rng = random.Random(seed)
    cases: List[PoolCase] = []
    while len(cases) < n:
        k = (rng.randint(1, 5), rng.randint(1, 5))
        case = PoolCase(kernel=k, stride=(rng.randint(1, 3), rng.randint(1, 3)),
                        padding=(rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2)),
                        dilation=(rng.randint(1, 2), rng.randint(1, 2)),
                        ceil_mode=rng.random() < 0.5,
                        size=(rng.randint(1, max_size), rng.randint(1, max_size)))
        if min(output_shape(case)) > 0:
            cases.append(case)
    return cases


def make_input(shape, dtype: torch.dtype, layout: str, seed: int, device="cpu",
               ties: bool = False) -> torch.Tensor:
    """Random input of `shape` in the given memory layout: "contiguous",
    "channels_last" (4-d only; 3-d stays contiguous) or "strided_view" (every other
    column of a wider tensor: neither). ties=True draws small integers so windows
    hold equal values."""
    g = torch.Generator().manual_seed(seed)
    wide = list(shape)
    if layout == "strided_view":
        wide[-1] = 2 * shape[-1]
    x = torch.randn(wide, generator=g, dtype=torch.float64)
    if ties:
        x = (x * 2).round()
    x = x.to(dtype=dtype, device=device)
    if layout == "strided_view":
        x = x[..., ::2]
    elif layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype and bits (NaN where NaN; the payload may be any NaN)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    a, e = actual.contiguous(), expected.contiguous()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), "NaN positions differ"
    view = _INT_VIEW[a.dtype]
    assert torch.equal(a[~nan_a].view(view), e[~nan_e].view(view)), \
        f"values differ: max |diff| {(a.double() - e.double()).abs().nan_to_num().max()}"
