"""``deconvnet`` (also ``python -m deconvnet_ext``): one command, several subcommands.

Each subcommand lives in the module that owns the work and exposes
``add_cli_arguments(parser)`` and ``run_cli(args) -> int``. Only the module of the chosen
subcommand is imported (startup stays fast, and ``deconvnet --help`` works even if one of
them fails to import).

Mistakes in the user's input (a missing file, a checkpoint of the wrong kind, a
directory that is not a VOC dataset) are reported as one line on stderr with exit code 2,
never a traceback; set DECONVNET_DEBUG=1 to get the traceback anyway.

Every subcommand first lets glibc's malloc keep freed memory for reuse (allocator.py:
CPU training steps ran 15-20% faster); DECONVNET_MALLOC=default keeps glibc's default.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# name -> (module that implements it, one-line help)
SUBCOMMANDS: Dict[str, Tuple[str, str]] = {
    "demo": ("deconvnet_ext.demo",
             "the whole paper on a synthetic (or real) VOC dataset: train, infer, table"),
    "synth": ("deconvnet_ext.data.synthetic",
              "write a synthetic dataset in the VOC2012 layout"),
    "pretrain": ("deconvnet_ext.pretrain",
                 "pre-train the tiny encoder on a separate synthetic set (the demo's "
                 "ImageNet stand-in)"),
    "train": ("deconvnet_ext.train", "train DeconvNet (two stages) or FCN-8s"),
    "fit-scorer": ("deconvnet_ext.proposal_scorer",
                   "fit a DeconvNet checkpoint's proposal scorer (which crops to aggregate)"),
    "predict": ("deconvnet_ext.predict", "segment images with trained checkpoints"),
    "eval": ("deconvnet_ext.evaluate", "mean IU / per-class IoU on a VOC-format split"),
    "bench": ("deconvnet_ext.bench", "benchmark the fused ops against PyTorch"),
    "export": ("deconvnet_ext.export",
               "write a checkpoint's network as a standard-operator ONNX file"),
    "info": ("deconvnet_ext.info",
             "what was built (CUDA, architectures, torch), what runs it, and whether they match"),
}

USAGE_ERROR = 2


def _chosen_subcommand(argv: Sequence[str]) -> Optional[str]:
    for arg in argv:
        if arg in SUBCOMMANDS:
            return arg
        if not arg.startswith("-"):
            return None  # an unknown word: argparse will say so
    return None


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser; only ``selected``'s module is imported to fill its options."""
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="deconvnet",
        description="DeconvNet (Noh, Hong, Han, ICCV 2015) with fused CPU/CUDA ops: "
                    "data, training, instance-wise inference, evaluation, benchmarks.",
        epilog="`deconvnet COMMAND --help` shows a command's options.")
    parser.add_argument("--version", action="version", version=f"deconvnet_ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = _import_subcommand(name, module_name)
            module.add_cli_arguments(sub_parser)
            sub_parser.set_defaults(run=module.run_cli)
    return parser


class _SubcommandUnavailable(Exception):
    pass


def _import_subcommand(name: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise _SubcommandUnavailable(
            f"`deconvnet {name}` is not available: {module_name} cannot be imported "
            f"({exc})") from exc


def _fail(prog: str, message: str) -> int:
    message = " ".join(str(message).split())  # one line, whatever the exception held
    print(f"{prog}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``deconvnet`` script. Returns the exit code."""
    from .errors import Terminated, UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _chosen_subcommand(argv)
    prog = "deconvnet" + (f" {selected}" if selected else "")
    debug = os.environ.get("DECONVNET_DEBUG") == "1"
    try:
        parser = build_parser(selected)
    except _SubcommandUnavailable as exc:
        return _fail(prog, str(exc))
    args = parser.parse_args(argv)  # exits 2 itself on a usage error, 0 on --help
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    # freed tensors stay in the process for reuse: CPU training steps ~15-20% faster
    # (allocator.py; DECONVNET_MALLOC=default opts out)
    from .allocator import keep_freed_memory
    keep_freed_memory()
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        if debug:
            raise
        return _fail(prog, str(exc))
    except OSError as exc:  # FileNotFoundError, PermissionError, IsADirectoryError, ...
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _fail(prog, f"{where}{exc.strerror or exc}")
    except Terminated:  # SIGTERM during a pool of workers (parallel.WorkerPool)
        print(f"{prog}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
