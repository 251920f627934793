"""The op library's CPU speed targets (issue 11), each timed interleaved: ours, theirs,
ours, theirs ... (harness.interleaved_ratio: ratio of medians per trial, three trials,
the median ratio and its spread). Blocked timing -- every round of one contender, then
the other -- drifted 6x-23x within an hour on this shared machine; interleaved ratios
held within about 10%.

    python benchmarks/interleaved.py [--threads N] [--only NAME ...] [--json FILE]

prints one markdown row per target (ratio, spread, ms per call of each side, met or
not). `test_interleaved.py` runs every case once (checks only) in the suite.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import deconvnet_ext as dx  # noqa: E402
from deconvnet_ext import reference  # noqa: E402

POOL_SHAPE = (16, 64, 112, 112)  # issue 3's headline pool input
SMALL_SHAPE = (2, 16, 32, 32)


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    theirs: str
    target: float  # ratio theirs / ours to reach (> 1: ours faster)


TARGETS = (
    Target("pool_nchw", f"pool forward {POOL_SHAPE} float32 NCHW", "F.max_pool2d(return_indices)", 10.0),
    Target("pool_cl", f"pool forward {POOL_SHAPE} float32 channels_last", "F.max_pool2d(return_indices)", 1.15),
    Target("unpool_nchw", f"unpool forward of {POOL_SHAPE} float32 NCHW", "F.max_unpool2d", 2.0),
    Target("unpool_cl", f"unpool forward of {POOL_SHAPE} float32 channels_last", "F.max_unpool2d", 2.0),
    Target("aggregate", "aggregation K=50 C=21 224x224 maps into 375x500 (max)",
           "reference loop (F.interpolate + max)", 8.0),
    Target("small_fwd_bwd", f"pool -> unpool forward + backward {SMALL_SHAPE}",
           "F.max_pool2d + F.max_unpool2d", 1.0),
    Target("train_step", "tiny DeconvNet train step, batch 8 of 64x64 crops",
           "the same net with torch's pooling", 1.05),
)
BY_NAME = {t.name: t for t in TARGETS}


def _pool_input(memory_format=torch.contiguous_format) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(*POOL_SHAPE, generator=gen).contiguous(memory_format=memory_format)


def contenders(name: str) -> Tuple[Callable, Callable, Callable[[], None]]:
    """(ours, theirs, check): two zero-argument calls to time and a check that they
    compute the same thing (raises if not)."""
    if name in ("pool_nchw", "pool_cl"):
        fmt = torch.channels_last if name == "pool_cl" else torch.contiguous_format
        x = _pool_input(fmt)
        ours = lambda: dx.max_pool2d_with_switches(x, 2, 2)
        theirs = lambda: F.max_pool2d(x, 2, 2, return_indices=True)

        def check():
            (a, _), (b, _) = ours(), theirs()
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        return ours, theirs, check
    if name in ("unpool_nchw", "unpool_cl"):
        fmt = torch.channels_last if name == "unpool_cl" else torch.contiguous_format
        x = _pool_input(fmt)
        out, switches = dx.max_pool2d_with_switches(x, 2, 2)
        _, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        size = x.shape[-2:]
        ours = lambda: dx.max_unpool2d_with_switches(out, switches, 2, 2, output_size=size)
        theirs = lambda: F.max_unpool2d(out, indices, 2, 2, output_size=size)

        def check():
            torch.testing.assert_close(ours(), theirs(), rtol=0, atol=0)
        return ours, theirs, check
    if name == "aggregate":
        gen = torch.Generator().manual_seed(3)
        maps = torch.randn(50, 21, 224, 224, generator=gen)
        boxes = harness.proposal_boxes(50, (375, 500), gen)
        ours = lambda: dx.aggregate_proposals(maps, boxes, image_size=(375, 500), mode="max")
        theirs = lambda: reference.aggregate_proposals(maps, boxes, (375, 500), mode="max")

        def check():  # bilinear weights computed in another order may round differently
            torch.testing.assert_close(ours(), theirs(), rtol=1e-5, atol=1e-5)
        return ours, theirs, check
    if name == "small_fwd_bwd":
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(*SMALL_SHAPE, generator=gen).requires_grad_()
        g = torch.randn(*SMALL_SHAPE, generator=gen)
        size = x.shape[-2:]

        def ours():
            out, sw = dx.max_pool2d_with_switches(x, 2, 2)
            dx.max_unpool2d_with_switches(out, sw, 2, 2, output_size=size).backward(g)

        def theirs():
            out, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            F.max_unpool2d(out, idx, 2, 2, output_size=size).backward(g)

        def check():
            x.grad = None
            ours()
            mine = x.grad.clone()
            x.grad = None
            theirs()
            torch.testing.assert_close(mine, x.grad, rtol=0, atol=0)
            x.grad = None
        return ours, theirs, check
    if name == "train_step":
        import train_cases
        case = train_cases.TrainCase("cpu", "tiny", 8)
        steps = {}
        for side, impl in (("ours", "ext"), ("theirs", "torch")):
            model = train_cases.build_model(case, impl)
            images, labels = train_cases.batch(case, model.input_size)
            steps[side] = train_cases.train_step(model, images, labels)

        def check():  # same seed-0 weights, same batch: the first losses agree
            a = train_cases.build_model(case, "ext")
            b = train_cases.build_model(case, "torch")
            images, labels = train_cases.batch(case, a.input_size)
            la = train_cases.train_step(a, images, labels)()
            lb = train_cases.train_step(b, images, labels)()
            torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
        return steps["ours"], steps["theirs"], check
    raise KeyError(name)


def measure(name: str, rounds: int = 9, trials: int = 3, target_s: float = 0.02) -> dict:
    ours, theirs, check = contenders(name)
    check()
    r = harness.interleaved_ratio(ours, theirs, rounds=rounds, trials=trials, target_s=target_s)
    t = BY_NAME[name]
    r.update(name=name, what=t.what, theirs_is=t.theirs, target=t.target,
             met=r["ratio"] >= t.target, threads=torch.get_num_threads())
    return r


def markdown(rows) -> str:
    lines = ["| target | theirs | ratio (median of 3 trials) | spread | ours ms | theirs ms | goal | met |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['theirs_is']} | {r['ratio']:.2f}x | "
                     f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}x | {1e3 * r['ours_s']:.3f} | "
                     f"{1e3 * r['theirs_s']:.3f} | >= {r['target']:g}x | "
                     f"{'yes' if r['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--only", nargs="*", choices=sorted(BY_NAME), default=None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for t in TARGETS:
        if args.only and t.name not in args.only:
            continue
        rows.append(measure(t.name, rounds=args.rounds, trials=args.trials))
        print(f"{t.name}: {harness.format_ratio(rows[-1])}", file=sys.stderr, flush=True)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
