"""Shared machinery of the benchmark suite (benchmarks/test_*.py).

Every benchmark times one *contender* on one *case*; the pytest-benchmark group
"<op>[<case id>]" puts all contenders of a case side by side:

    ours           deconvnet_ext's public op (dx.*)
    torch          the plain PyTorch call a user would write (int64 indices)
    torch_compile  torch.compile of that same call: compiled once per case, the
                   compile kept out of the timing
    reference      deconvnet_ext.reference, the pure-PyTorch twin
    floor          a uint8 copy moving as many bytes as the op must read + write
                   (torch's copy_, on all threads)
    floor_memcpy   the same copy by numpy's single-threaded memcpy (CPU only); the
                   report's floor is the faster of the two

Each benchmark first checks its contender's result against the reference (so the
suite never times a wrong answer), then times it. It records in benchmark.extra_info
the fields deconvnet_ext.bench reads to write RESULTS.md: op, case, contender,
bytes_moved. Non-timing measurements (bytes of switches, peak memory) go into
RECORDS, which conftest.py writes into the JSON under "deconvnet_ext".
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import pytest
import torch

# The five max-pool inputs of the 224x224 VGG16 DeconvNet, as (C, H, W).
POOL_LEVELS_224 = ((64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28), (512, 14, 14))
HEADLINE_SHAPE = (16, 64, 112, 112)   # issue 3's speed target
SMALL_SHAPE = (2, 16, 32, 32)
KERNEL, STRIDE = 2, 2                 # DeconvNet's pooling

SHAPE_SETS = ("quick", "full")
CONTENDERS = ("ours", "torch", "torch_compile", "reference", "floor", "floor_memcpy")
FLOORS = ("floor", "floor_memcpy")

# Measurements that are not timings: {"kind": ..., ...} dicts, written into the JSON.
RECORDS: list = []

HAS_CUDA = torch.cuda.is_available()
_NEEDS_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class PoolCase:
    """One input of a pool/unpool benchmark: (N, C, H, W) on `device`, NCHW or
    channels_last, pooled 2x2 stride 2."""
    device: str
    dtype: torch.dtype
    channels_last: bool
    shape: tuple

    @property
    def id(self) -> str:
        layout = "cl" if self.channels_last else "nchw"
        return f"{self.device}-{dtype_name(self.dtype)}-{layout}-{'x'.join(map(str, self.shape))}"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def out_shape(self) -> tuple:
        n, c, h, w = self.shape
        return (n, c, (h - KERNEL) // STRIDE + 1, (w - KERNEL) // STRIDE + 1)

    def nbytes(self) -> dict:
        """Bytes of the input, the pooled output and its switches (1 byte each)."""
        elem = torch.empty((), dtype=self.dtype).element_size()
        n_in, n_out = _numel(self.shape), _numel(self.out_shape)
        return {"input": n_in * elem, "output": n_out * elem, "switches": n_out, "indices": n_out * 8}


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def pool_shapes(device: str, shape_set: str) -> list:
    """The shapes a pool/unpool group runs: quick = the headline + a small one;
    full = also the five DeconvNet levels at batch 16 (and 64 on CUDA)."""
    if shape_set not in SHAPE_SETS:
        raise ValueError(f"shape_set must be one of {SHAPE_SETS}, got {shape_set!r}")
    shapes = [HEADLINE_SHAPE, SMALL_SHAPE]
    if shape_set == "full":
        batches = (16,) if device == "cpu" else (16, 64)
        shapes += [(b,) + level for b in batches for level in POOL_LEVELS_224]
    return shapes


def pool_cases(shape_set: str) -> list:
    """pytest params: float32 on CPU; float32/float16/bfloat16 on CUDA (skipped
    without a GPU); NCHW and channels_last."""
    params = []
    for device, dtypes in (("cpu", (torch.float32,)),
                           ("cuda", (torch.float32, torch.float16, torch.bfloat16))):
        for dtype in dtypes:
            for shape in pool_shapes(device, shape_set):
                for channels_last in (False, True):
                    case = PoolCase(device, dtype, channels_last, tuple(shape))
                    marks = [pytest.mark.cuda, _NEEDS_CUDA] if device == "cuda" else []
                    params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@dataclass
class PoolData:
    """A case's input and the reference pooling of it (shared by the four op groups)."""
    x: torch.Tensor            # (N,C,H,W) in the case's layout
    out: torch.Tensor          # reference pooled values
    switches: torch.Tensor     # reference uint8 switches
    indices: torch.Tensor      # torch's int64 indices for the same pooling


@functools.lru_cache(maxsize=1)
def pool_data(case: PoolCase) -> PoolData:
    """Deterministic random input for `case` (cached: consecutive tests share it)."""
    from deconvnet_ext import reference
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=gen).to(case.device, case.dtype)
    x = x.contiguous(memory_format=case.memory_format)
    out, switches = reference.max_pool2d_with_switches(x, KERNEL, STRIDE)
    _, indices = torch.nn.functional.max_pool2d(x, KERNEL, STRIDE, return_indices=True)
    return PoolData(x, out, switches, indices)


def random_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    """Deterministic randn with t's shape, dtype, device and memory format."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(t.shape, generator=gen).to(t.device, t.dtype)
    fmt = torch.channels_last if (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
                                  and not t.is_contiguous()) else torch.contiguous_format
    return r.contiguous(memory_format=fmt)


def proposal_boxes(num_proposals: int, image_size: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """(K,4) int64 [x0,y0,x1,y1) boxes like proposals with context: from 1/8 of the
    image to all of it, some reaching past its border."""
    H, W = int(image_size[0]), int(image_size[1])
    boxes = []
    for _ in range(num_proposals):
        w = int(torch.randint(max(2, W // 8), W + 1, (1,), generator=gen))
        h = int(torch.randint(max(2, H // 8), H + 1, (1,), generator=gen))
        x0 = int(torch.randint(-(W // 16), W - w + W // 16 + 1, (1,), generator=gen))
        y0 = int(torch.randint(-(H // 16), H - h + H // 16 + 1, (1,), generator=gen))
        boxes.append((x0, y0, x0 + w, y0 + h))
    return torch.tensor(boxes, dtype=torch.int64)


# --------------------------------------------------------------------------- compile
def _fresh_function(fn: Callable, tag: str) -> Callable:
    """A copy of `fn` with its own code object. Dynamo caches compiled graphs per
    code object, so each copy gets its own cache: one static graph per case, no
    recompile limit, no guard chain shared between cases."""
    name = f"{fn.__name__}__{tag}".replace("-", "_").replace(".", "_")
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


_COMPILED: dict = {}


def compiled(fn: Callable, case_key: str, disabled: bool) -> Callable:
    """torch.compile(fn) for one case, cached. When timing, the graph is static and
    specialised to the case. With --benchmark-disable (nothing is timed; CI runs
    every benchmark once), one dynamic-shape graph per function and layout serves
    every shape, which keeps CI's compile time bounded."""
    key = (fn.__module__, fn.__qualname__, case_key if not disabled else "dynamic-" + _layout_of(case_key))
    if key not in _COMPILED:
        tag = key[2]
        _COMPILED[key] = torch.compile(_fresh_function(fn, tag), dynamic=bool(disabled), fullgraph=True)
    return _COMPILED[key]


def _layout_of(case_key: str) -> str:
    parts = case_key.split("-")
    return "-".join(parts[:3])   # device-dtype-layout


def skip_compile_failure(exc: Exception) -> None:
    """torch.compile could not build this contender here (no C++ compiler, an
    unsupported op, ...): skip it and say why."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    pytest.skip(f"torch.compile failed here: {type(exc).__name__}: {first[:300]}")


# --------------------------------------------------------------------------- floor
@functools.lru_cache(maxsize=1)
def _floor_buffers(nbytes: int, device: str):
    src = torch.zeros(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)   # fault both buffers' pages in before any timing
    return src, dst


def floor_function(bytes_moved: int, device: str, kind: str = "floor") -> Callable:
    """A copy of bytes_moved / 2 bytes: it reads and writes bytes_moved bytes in
    all, the traffic the op itself cannot avoid (read inputs, write outputs).
    kind "floor": torch's copy_ (all threads; on CUDA a device-to-device copy);
    "floor_memcpy": numpy's copyto, glibc's memcpy on one thread (CPU only)."""
    if kind not in FLOORS:
        raise ValueError(f"kind must be one of {FLOORS}, got {kind!r}")
    src, dst = _floor_buffers(max(1, bytes_moved // 2), device)
    if kind == "floor":
        return lambda: dst.copy_(src)
    if not device.startswith("cpu"):
        pytest.skip("floor_memcpy is the CPU's memcpy; on CUDA the floor is torch's device copy")
    import numpy as np
    src_np, dst_np = src.numpy(), dst.numpy()
    return lambda: np.copyto(dst_np, src_np)


# --------------------------------------------------------------------------- run
def _synchronized(fn: Callable, device: str) -> Callable:
    if device.startswith("cuda"):
        def run():
            result = fn()
            torch.cuda.synchronize()
            return result
        return run
    return fn


def run_benchmark(benchmark, *, op: str, case_id: str, contender: str, device: str,
                  fn: Callable, check: Optional[Callable[[Any], None]],
                  bytes_moved: int, **extra: Any) -> None:
    """Check `fn`'s result once with `check`, then time `fn` under `benchmark`.

    Timed mode: one untimed call (it compiles a torch.compile contender and warms
    caches), the check, then pytest-benchmark's rounds. With --benchmark-disable,
    benchmark(fn) is a single call, whose result is checked."""
    benchmark.group = f"{op}[{case_id}]"
    benchmark.extra_info.update(op=op, case=case_id, contender=contender, device=device,
                                bytes_moved=int(bytes_moved), **extra)
    timed = _synchronized(fn, device)
    try:
        result = benchmark(timed) if benchmark.disabled else timed()
    except Exception as exc:  # noqa: BLE001
        if contender == "torch_compile":
            skip_compile_failure(exc)
        raise
    if check is not None:
        check(result)
    del result
    if not benchmark.disabled:
        benchmark(timed)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Bit-for-bit equality (NaN == NaN), with a message naming what differs."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---- interleaved timing: on a shared machine only interleaved ratios mean anything ----

def interleaved_ratio(ours: Callable, theirs: Callable, *, device: str = "cpu",
                      rounds: int = 9, trials: int = 3, target_s: float = 0.02) -> dict:
    """Times ours, theirs, ours, theirs ... (`rounds` rounds of a calibrated number of
    calls each), takes the ratio of the medians median(theirs) / median(ours) (> 1:
    ours faster) per trial, over `trials` trials. Returns the median ratio, its
    spread (min, max, every trial's ratio) and the median seconds per call."""
    import statistics
    import time

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def per_call(fn, n):
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t0) / n

    def calls_for(fn):
        fn()
        once = per_call(fn, 3)
        return max(1, int(target_s / max(once, 1e-9)))

    n_ours, n_theirs = calls_for(ours), calls_for(theirs)
    ratios, t_ours, t_theirs = [], [], []
    for _ in range(trials):
        a, b = [], []
        for _ in range(rounds):
            a.append(per_call(ours, n_ours))
            b.append(per_call(theirs, n_theirs))
        t_ours.append(statistics.median(a))
        t_theirs.append(statistics.median(b))
        ratios.append(t_theirs[-1] / t_ours[-1])
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratios": ratios,
            "ours_s": statistics.median(t_ours), "theirs_s": statistics.median(t_theirs)}


def format_ratio(r: dict) -> str:
    return (f"x{r['ratio']:.3f} (trials {', '.join(f'{v:.3f}' for v in r['ratios'])}; "
            f"ours {1e6 * r['ours_s']:.1f} us, theirs {1e6 * r['theirs_s']:.1f} us per call)")
