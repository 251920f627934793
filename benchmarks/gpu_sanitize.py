"""A short script for compute-sanitizer (memcheck, racecheck): every op forward and
backward on the device, with the inputs most likely to go out of bounds: switches
outside their window (255) or pointing into the padding, boxes far outside the
image, empty tensors, a huge-ish input, every dtype and both layouts.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/gpu_sanitize.py
    python benchmarks/gpu_sanitize.py --device cpu      # the same calls on the CPU

Exit status 0 when every call ran and every result checked out (the sanitizer adds
its own verdict). --quick: smaller inputs (racecheck is slow).
"""
from __future__ import annotations

import argparse
import sys

import torch

import deconvnet_ext as dx
from deconvnet_ext import reference

ops = torch.ops.deconvnet_ext


def pool_round(device: str, dtype: torch.dtype, channels_last: bool, shape, k, s, p, d,
               ceil_mode: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(device).requires_grad_(x.numel() > 0)
    out, sw = dx.max_pool2d_with_switches(x, k, s, p, d, ceil_mode)
    if x.requires_grad:
        out.sum().backward()                       # pool backward = unpool
    pair = lambda a: [a, a] if isinstance(a, int) else list(a)  # noqa: E731
    args = [pair(k), pair(s if s is not None else k), pair(p), pair(d)]
    size = list(x.shape[-2:])
    bad = sw.clone()
    if bad.numel():
        flat = torch.arange(bad.numel(), device=device).view(bad.shape)
        bad[flat % 3 == 0] = 255                   # outside every window
        bad[flat % 5 == 0] = 0                     # may sit in the padding
        bad[flat % 7 == 0] = args[0][0] * args[0][1] - 1
    v = torch.randn(out.shape, device=device, dtype=dtype).requires_grad_(out.numel() > 0)
    for switches in (sw, bad):
        y = ops.max_unpool2d_with_switches(v, switches, *args, size)
        gathered = ops.gather_at_switches(y, switches, *args)
        if v.requires_grad:
            (y.float().sum() + gathered.float().sum()).backward()  # unpool bwd = gather
    if device == "cuda":
        torch.cuda.synchronize()


def aggregate_round(device: str, dtype: torch.dtype, K: int, C: int, h: int, w: int,
                    H: int, W: int, batched: bool) -> None:
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(K, C, h, w, generator=g).to(dtype)
    x0 = torch.randint(-3 * W, 3 * W, (K,), generator=g)
    y0 = torch.randint(-3 * H, 3 * H, (K,), generator=g)
    boxes = torch.stack([x0, y0, x0 + torch.randint(1, 2 * W, (K,), generator=g),
                         y0 + torch.randint(1, 2 * H, (K,), generator=g)], 1)
    if K:
        boxes[0] = torch.tensor([-(1 << 29), -(1 << 29), -(1 << 29) + 5, -(1 << 29) + 7])
        boxes[-1] = torch.tensor([(1 << 29), 2, (1 << 29) + 3, 9])
    index = torch.randint(0, 3, (K,), generator=g) if batched else None
    for mode in ("max", "sum", "mean"):
        out = dx.aggregate_proposals(maps.to(device), boxes.to(device), (H, W), mode,
                                     None if index is None else index.to(device),
                                     3 if batched else None)
        if dtype == torch.float64 and K and K <= 8:
            ref = reference.aggregate_proposals(maps, boxes, (H, W), mode, index,
                                                3 if batched else None)
            torch.testing.assert_close(out.cpu(), ref)
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize: no CUDA device")
        return 0
    big = (2, 8, 64, 96) if args.quick else (4, 64, 224, 224)
    calls = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for channels_last in (False, True):
            for shape, k, s, p, d, ceil_mode in (
                    ((2, 3, 9, 11), 2, 2, 0, 1, True),
                    ((2, 3, 9, 11), 3, 2, 1, 2, True),
                    ((2, 5, 7, 6), (3, 2), (1, 2), (1, 0), (1, 2), False),
                    ((3, 7, 8), 2, None, 0, 1, False),      # 3-d input
                    ((0, 3, 8, 8), 2, 2, 0, 1, False),      # empty batch
                    ((2, 0, 8, 8), 2, 2, 0, 1, False),      # no channels
                    ((1, 1, 1, 1), 1, 1, 0, 1, False),
                    ((1, 2, 3, 3), (16, 16), 1, 8, 1, True),  # 256-tap window
            ):
                pool_round(device, dtype, channels_last, shape, k, s, p, d, ceil_mode)
                calls += 1
        pool_round(device, dtype, dtype == torch.float16, big, 2, 2, 0, 1, False)
        calls += 1
    for dtype in (torch.float32, torch.float16, torch.float64):
        for K, C, h, w, H, W, batched in ((7, 3, 11, 9, 20, 24, False), (6, 2, 5, 4, 13, 17, True),
                                          (0, 3, 4, 4, 8, 8, False), (1, 1, 1, 1, 1, 1, False)):
            aggregate_round(device, dtype, K, C, h, w, H, W, batched)
            calls += 1
    K, C = (5, 3) if args.quick else (50, 21)
    aggregate_round(device, torch.float32, K, C, 56 if args.quick else 224,
                    56 if args.quick else 224, 75 if args.quick else 375,
                    100 if args.quick else 500, False)
    calls += 1
    print(f"gpu_sanitize: {calls} rounds of op calls (forward and backward) on {device}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
