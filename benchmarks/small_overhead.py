"""Per-call overhead: a small pool -> unpool forward + backward, (2, 16, 32, 32)
float32, ext ops vs torch's own (max_pool2d with indices + max_unpool2d), interleaved
(ours, torch, ours, torch ...), ratio of medians, three trials (harness.interleaved_ratio).

    python benchmarks/small_overhead.py [--device cpu|cuda] [--shape 2 16 32 32]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import deconvnet_ext as dx  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=4, default=[2, 16, 32, 32])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x = torch.randn(*args.shape, device=args.device, requires_grad=True)
    size = x.shape[-2:]
    g = torch.randn_like(x)

    def ours():
        out, sw = dx.max_pool2d_with_switches(x, 2, 2)
        y = dx.max_unpool2d_with_switches(out, sw, 2, 2, output_size=size)
        y.backward(g)

    def theirs():
        out, idx = F.max_pool2d(x, 2, 2, return_indices=True)
        y = F.max_unpool2d(out, idx, 2, 2, output_size=size)
        y.backward(g)

    r = harness.interleaved_ratio(ours, theirs, device=args.device)
    print(json.dumps(r) if args.json else
          f"pool->unpool fwd+bwd {tuple(args.shape)} {args.device}, "
          f"{torch.get_num_threads()} threads: {harness.format_ratio(r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
