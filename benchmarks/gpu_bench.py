"""The CUDA benchmarks of benchmarks/gpu_check.sh, standalone (no pytest, no
pytest-benchmark: the GPU machine has no package registry).

Timing is interleaved: ours, torch, ours, torch ... (CUDA events around a few calls
each), the ratio of the medians per trial, three trials; the JSON keeps every
trial's ratio (the spread). Figures:
- pool / unpool forward and backward, float32 / float16 / bfloat16, the five
  DeconvNet pool levels at batch 64 (224x224 input), ours vs torch (int64 indices),
  with the achieved bandwidth and its share of the card's measured device-to-device
  copy bandwidth;
- aggregate_proposals K=50, C=21, 224x224 maps into 375x500: ours vs the
  interpolate + paste loop (deconvnet_ext.reference), and the kernel launches of
  one call;
- the vgg16 DeconvNet train step (batch 16, 224x224), ext vs torch pooling: time,
  peak memory, and the profiler's pool + unpool share of the CUDA time.

    python benchmarks/gpu_bench.py --out benchmarks/gpu_bench.json [--budget 150]
    python benchmarks/gpu_bench.py --device cpu --tiny     # a smoke run of the code
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext import reference

ops = torch.ops.deconvnet_ext
POOL_LEVELS = ((64, 224, 224), (128, 112, 112), (256, 56, 56), (512, 28, 28), (512, 14, 14))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Clock:
    def __init__(self, device: str):
        self.device = device

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def time(self, fn, iters: int) -> float:
        """Seconds per call of fn, over iters calls."""
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters


def calibrate(clock: Clock, fn, target_s: float = 0.004) -> int:
    fn()
    clock.sync()
    once = clock.time(fn, 1)
    return max(1, min(200, int(target_s / max(once, 1e-7))))


def interleaved(clock: Clock, ours, theirs, rounds: int = 7, trials: int = 3) -> dict:
    """ours vs theirs, interleaved; ratio = median(theirs) / median(ours) per trial
    (> 1: ours faster)."""
    n_ours, n_theirs = calibrate(clock, ours), calibrate(clock, theirs)
    ratios, t_ours, t_theirs = [], [], []
    for _ in range(trials):
        a, b = [], []
        for _ in range(rounds):
            a.append(clock.time(ours, n_ours))
            b.append(clock.time(theirs, n_theirs))
        ma, mb = statistics.median(a), statistics.median(b)
        t_ours.append(ma)
        t_theirs.append(mb)
        ratios.append(mb / ma)
    return {"ours_s": statistics.median(t_ours), "torch_s": statistics.median(t_theirs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratios": ratios}


def copy_bandwidth(clock: Clock, device: str, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    iters = calibrate(clock, lambda: dst.copy_(src))
    best = min(clock.time(lambda: dst.copy_(src), iters) for _ in range(5))
    return 2 * nbytes / best


def bench_pool(clock: Clock, device: str, batch: int, levels, dtypes, bandwidth: float) -> list:
    rows = []
    for dtype in dtypes:
        for (C, H, W) in levels:
            case = f"{str(dtype).replace('torch.', '')}-{batch}x{C}x{H}x{W}"
            x = torch.randn(batch, C, H, W, device=device, dtype=dtype)
            out, sw = dx.max_pool2d_with_switches(x, 2, 2)
            ref, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            assert torch.equal(out, ref), case
            g = torch.randn_like(out)
            gy = torch.randn_like(x)
            esize = x.element_size()
            n_in, n_out = x.numel(), out.numel()
            k = [2, 2]
            z, one = [0, 0], [1, 1]
            size = [H, W]
            measures = {
                # bytes ours must move: read + write
                "pool_forward": (lambda: ops.max_pool2d_with_switches(x, k, k, z, one, False),
                                 lambda: F.max_pool2d(x, 2, 2, return_indices=True),
                                 n_in * esize + n_out * (esize + 1)),
                "pool_backward": (lambda: ops.max_unpool2d_with_switches(g, sw, k, k, z, one, size),
                                  lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                                      g, x, k, k, z, one, False, idx),
                                  n_out * (esize + 1) + n_in * esize),
                "unpool_forward": (lambda: ops.max_unpool2d_with_switches(out, sw, k, k, z, one, size),
                                   lambda: F.max_unpool2d(out, idx, 2, 2, output_size=size),
                                   n_out * (esize + 1) + n_in * esize),
                "unpool_backward": (lambda: ops.gather_at_switches(gy, sw, k, k, z, one),
                                    lambda: gy.flatten(2).gather(2, idx.flatten(2)).view_as(out),
                                    n_in * esize + n_out * (esize + 1)),
            }
            for name, (ours, theirs, nbytes) in measures.items():
                try:
                    r = interleaved(clock, ours, theirs)
                    r.update(op=name, case=case, bytes=nbytes,
                             ours_bandwidth=nbytes / r["ours_s"],
                             share_of_copy_bandwidth=(nbytes / r["ours_s"]) / bandwidth)
                except Exception as exc:  # one case failing must not stop the others
                    r = {"op": name, "case": case, "error": repr(exc)}
                rows.append(r)
                print(f"  {name:16s} {case:28s} "
                      + (f"x{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) "
                         f"{100 * r['share_of_copy_bandwidth']:.0f}% of copy bw"
                         if "ratio" in r else r["error"]), flush=True)
            del x, out, sw, ref, idx, g, gy
    return rows


def kernel_launches(fn, device: str) -> int:
    if device != "cuda":
        return -1
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and "memcpy" not in e.name.lower() and "memset" not in e.name.lower())


def bench_aggregate(clock: Clock, device: str, K: int, C: int, h: int, H: int, W: int) -> dict:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(K, C, h, h, generator=g)
    x0, y0 = torch.randint(-50, W - 50, (K,), generator=g), torch.randint(-50, H - 50, (K,), generator=g)
    boxes = torch.stack([x0, y0, x0 + torch.randint(60, 300, (K,), generator=g),
                         y0 + torch.randint(60, 300, (K,), generator=g)], 1)
    maps, boxes = maps.to(device), boxes.to(device)
    ours = lambda: ops.aggregate_proposals(maps, boxes, None, [H, W], 1, "max")  # noqa: E731
    theirs = lambda: reference.aggregate_proposals(maps, boxes, (H, W), "max")  # noqa: E731
    torch.testing.assert_close(ours(), theirs(), rtol=1e-4, atol=1e-5)
    r = interleaved(clock, ours, theirs, rounds=5, trials=3)
    r.update(op="aggregate_proposals", case=f"K{K}-C{C}-{h}x{h}-into-{H}x{W}",
             launches_op=kernel_launches(ours, device),
             launches_public=kernel_launches(
                 lambda: dx.aggregate_proposals(maps, boxes, (H, W), "max"), device))
    print(f"  aggregate {r['case']}: x{r['ratio']:.1f} ({r['ratio_min']:.1f}-{r['ratio_max']:.1f}) "
          f"the loop; {r['launches_op']} kernel launch(es) per op call", flush=True)
    return r


def bench_train_step(clock: Clock, device: str, arch: str, batch: int, size: int) -> dict:
    from deconvnet_ext.train import segmentation_loss
    torch.backends.cudnn.benchmark = True
    results = {}
    steps = {}
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, 21, (batch, size, size), generator=gen).to(device)
    for impl in ("ext", "torch"):
        torch.manual_seed(0)
        model = dx.DeconvNet(num_classes=21, arch=arch, pool_impl=impl).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = segmentation_loss(model(images), labels)
            loss.backward()
            opt.step()
        for _ in range(3):
            step()
        clock.sync()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            results[f"peak_bytes_{impl}"] = torch.cuda.max_memory_allocated() - base
            results[f"pool_unpool_share_{impl}"] = pool_share(step)
        steps[impl] = step
    r = interleaved(clock, steps["ext"], steps["torch"], rounds=5, trials=3)
    r.update(results, op="train_step", case=f"{arch}-b{batch}-{size}")
    print(f"  train step {r['case']}: x{r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}); "
          + (f"peak {results['peak_bytes_ext'] / 2**20:.0f} MiB ext vs "
             f"{results['peak_bytes_torch'] / 2**20:.0f} MiB torch; pool+unpool share "
             f"{100 * results['pool_unpool_share_ext']:.1f}% ext, "
             f"{100 * results['pool_unpool_share_torch']:.1f}% torch" if results else ""), flush=True)
    return r


POOL_KERNEL_WORDS = ("for_each_element", "max_pool", "maxpool", "max_unpool", "maxunpool",
                     "unpool", "deconvnet_ext")


def pool_share(step) -> float:
    """Share of one step's CUDA kernel time spent in pool / unpool kernels."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    total = pooled = 0.0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        total += t
        if any(w in e.name.lower() for w in POOL_KERNEL_WORDS):
            pooled += t
    return pooled / total if total else 0.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tiny", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--budget", type=float, default=170.0,
                        help="seconds; sections not started in time are skipped")
    args = parser.parse_args(argv)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device")
        return 0
    t0 = time.monotonic()
    clock = Clock(device)
    summary = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "torch": torch.__version__, "build": dict(dx.build_info()), "sections": {}}
    failed = False

    def section(name, fn):
        nonlocal failed
        if time.monotonic() - t0 > args.budget:
            summary["sections"][name] = {"skipped": "time budget spent"}
            print(f"gpu_bench: {name}: skipped (time budget spent)", flush=True)
            return
        print(f"gpu_bench: {name}", flush=True)
        try:
            summary["sections"][name] = {"result": fn(), "seconds": None}
        except Exception:
            failed = True
            summary["sections"][name] = {"error": traceback.format_exc(limit=5)}
            print(summary["sections"][name]["error"], flush=True)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=1)

    tiny = args.tiny
    bw_box = {}

    def bandwidth():
        bw_box["bw"] = copy_bandwidth(clock, device, (64 << 20) if tiny else (2 << 30))
        return {"copy_bytes_per_s": bw_box["bw"]}

    section("copy_bandwidth", bandwidth)
    bw = bw_box.get("bw", float("nan"))
    levels = ((8, 16, 16), (16, 8, 8)) if tiny else POOL_LEVELS
    section("pool_unpool", lambda: bench_pool(clock, device, 2 if tiny else 64, levels,
                                              DTYPES[:2] if tiny else DTYPES, bw))
    section("aggregate", lambda: bench_aggregate(clock, device, *((5, 3, 16, 60, 80) if tiny
                                                                  else (50, 21, 224, 375, 500))))
    section("train_step", lambda: bench_train_step(clock, device, "tiny" if tiny else "vgg16",
                                                   2 if tiny else 16, 64 if tiny else 224))
    summary["seconds"] = time.monotonic() - t0
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
