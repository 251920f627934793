"""ONNX export: ``dx.export_onnx(model, example_input, path)`` and ``deconvnet export
--checkpoint CK --out model.onnx``.

DeconvNet, FCN-8s and any model converted with ``deconvnet_ext.nn.convert_pooling`` (or
still on torch's MaxPool2d/MaxUnpool2d) export to standard ONNX operators only, which
stock onnxruntime runs:

* ``deconvnet_ext::max_pool2d_with_switches`` -> ``MaxPool`` with its Indices output;
  ONNX's indices (flat over the whole N*C*H*W input) become the uint8 switches with a
  few integer ops (Mod by H*W, Div/Mod by W, minus each window's origin). ``ceil_mode``
  is written as explicit bottom/right padding in floor mode, which gives torch's output
  size exactly (torch also drops a last window that would start in the padding);
* ``deconvnet_ext::max_unpool2d_with_switches`` -> the switches back to flat per-plane
  positions, then ``ScatterElements(reduction="add")`` into zeros: the op's adjoint
  semantics (overlapping windows sum), padding and dilation included;
* ``aten::max_unpool2d`` (torch's unpool, which onnxscript's library does not translate)
  -> ``ScatterElements`` of torch's flat indices.

The exporter is torch.onnx's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
the default since torch 2.9; needs onnx and onnxscript: ``pip install
"deconvnet_ext[onnx]"``) with those three entries in its ``custom_translation_table``.
The batch dimension is dynamic by default; height and width are fixed at the example's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence, Union

import torch
import torch.nn as nn

from .errors import UserError
from .ops import _pooled_size

PathLike = Union[str, Path]
_ONNX_EXTRA = 'pip install "deconvnet_ext[onnx]"'


def _require_onnx_exporter() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: {_ONNX_EXTRA}")


def _static_hw(value, what: str):
    shape = value.shape
    H, W = shape[-2], shape[-1]
    if not isinstance(H, int) or not isinstance(W, int):
        raise ValueError(f"ONNX export of {what} needs a static height and width, got "
                         f"{shape}; only the batch dimension can be dynamic")
    return H, W, len(shape)


def translation_table() -> Dict[Callable, Callable]:
    """``custom_translation_table`` entries for torch.onnx.export(dynamo=True) that
    write the switch pooling ops (and torch's unpool) as standard ONNX operators."""
    _require_onnx_exporter()
    import numpy as np
    from onnxscript import ir
    from onnxscript import opset18 as op

    def const(array) -> "ir.Value":
        return op.Constant(value=ir.tensor(np.asarray(array, dtype=np.int64)))

    def window_origins(oH: int, oW: int, stride, padding):
        h0 = (np.arange(oH) * stride[0] - padding[0]).reshape(oH, 1)
        w0 = (np.arange(oW) * stride[1] - padding[1]).reshape(1, oW)
        return const(h0), const(w0)

    def scatter_planes(values, positions, H: int, W: int, rank: int, reduction: str):
        """zeros (..., H*W) with values scattered at flat positions h*W+w per plane."""
        planes = op.Shape(values, start=0, end=rank - 2)
        flat = op.Concat(planes, const([H * W]), axis=0)
        zeros = op.Expand(op.CastLike(op.Constant(value_float=0.0), values), flat)
        y = op.ScatterElements(zeros, op.Reshape(positions, flat_shape(planes, rank)),
                               op.Reshape(values, flat_shape(planes, rank)),
                               axis=-1, reduction=reduction)
        return op.Reshape(y, op.Concat(planes, const([H, W]), axis=0))

    def flat_shape(planes, rank: int):
        return op.Concat(planes, const([-1]), axis=0)

    def max_pool2d_with_switches(x, kernel_size, stride, padding, dilation, ceil_mode):
        H, W, rank = _static_hw(x, "max_pool2d_with_switches")
        (kH, kW), (sH, sW), (pH, pW), (dH, dW) = kernel_size, stride, padding, dilation
        oH = _pooled_size(H, kH, sH, pH, dH, bool(ceil_mode))
        oW = _pooled_size(W, kW, sW, pW, dW, bool(ceil_mode))
        # floor mode with the bottom/right padding that gives torch's (ceil) output size
        eH = max(0, (oH - 1) * sH + dH * (kH - 1) + 1 - (H + 2 * pH))
        eW = max(0, (oW - 1) * sW + dW * (kW - 1) + 1 - (W + 2 * pW))
        if rank == 3:
            x = op.Unsqueeze(x, const([0]))
        out, flat = op.MaxPool(x, kernel_shape=[kH, kW], strides=[sH, sW],
                               dilations=[dH, dW], pads=[pH, pW, pH + eH, pW + eW],
                               ceil_mode=0, storage_order=0)
        if rank == 3:
            out, flat = op.Squeeze(out, const([0])), op.Squeeze(flat, const([0]))
        local = op.Mod(flat, const(H * W))            # ONNX: flat over N*C*H*W
        h, w = op.Div(local, const(W)), op.Mod(local, const(W))
        h0, w0 = window_origins(oH, oW, stride, padding)
        i = op.Div(op.Sub(h, h0), const(dH))
        j = op.Div(op.Sub(w, w0), const(dW))
        switches = op.Cast(op.Add(op.Mul(i, const(kW)), j), to=ir.DataType.UINT8)
        return out, switches

    def max_unpool2d_with_switches(x, switches, kernel_size, stride, padding, dilation,
                                   output_size):
        oH, oW, rank = _static_hw(switches, "max_unpool2d_with_switches")
        (kH, kW), (dH, dW) = kernel_size, dilation
        H, W = int(output_size[0]), int(output_size[1])
        s = op.Cast(switches, to=ir.DataType.INT64)
        h0, w0 = window_origins(oH, oW, stride, padding)
        h = op.Add(h0, op.Mul(op.Div(s, const(kW)), const(dH)))
        w = op.Add(w0, op.Mul(op.Mod(s, const(kW)), const(dW)))
        zero = const(0)
        valid = op.And(op.And(op.Less(s, const(kH * kW)),
                              op.And(op.GreaterOrEqual(h, zero), op.Less(h, const(H)))),
                       op.And(op.GreaterOrEqual(w, zero), op.Less(w, const(W))))
        positions = op.Where(valid, op.Add(op.Mul(h, const(W)), w), zero)
        values = op.Where(valid, x, op.CastLike(op.Constant(value_float=0.0), x))
        return scatter_planes(values, positions, H, W, rank, "add")

    def max_unpool2d(x, indices, output_size):
        rank = len(x.shape)
        H, W = int(output_size[0]), int(output_size[1])
        return scatter_planes(x, indices, H, W, rank, "none")

    ext = torch.ops.deconvnet_ext
    return {
        ext.max_pool2d_with_switches.default: max_pool2d_with_switches,
        ext.max_unpool2d_with_switches.default: max_unpool2d_with_switches,
        torch.ops.aten.max_unpool2d.default: max_unpool2d,
    }


def custom_domain_nodes(path: PathLike) -> list:
    """(domain, op_type) of every node of the ONNX file outside the standard domains
    (nested graphs and local functions included)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found = []

    def walk(graph):
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                found.append((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    for function in model.functions:
        found.append((function.domain, function.name))
    return found


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: PathLike,
                dynamic_batch: bool = True, opset_version: int = 18) -> Path:
    """Write ``model`` (eval mode; restored afterwards) to the ONNX file ``path`` with
    standard operators only, and return ``path``.

    example_input: (N, C, H, W) float; the file takes any batch size (``dynamic_batch``,
    input name "input", output name "output") at this H and W. An example of batch 1 is
    traced as a batch of 2 (torch.export fixes a dimension of size 1). Raises
    ImportError naming the ``[onnx]`` extra when onnx or onnxscript is missing,
    RuntimeError if the file would hold a node outside the standard ONNX domain.
    """
    _require_onnx_exporter()
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise ValueError("example_input must be a tensor with a batch dimension, got "
                         f"{type(example_input).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_input.detach()
    if dynamic_batch and example.shape[0] == 1:
        example = torch.cat([example, example])
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, custom_translation_table=translation_table(),
                dynamic_shapes=dynamic_shapes, input_names=["input"], output_names=["output"],
                opset_version=opset_version, optimize=True, verbose=False)
        # One file up to ~1.8 GB of weights (the vgg16 DeconvNet is ~1 GB); beyond that
        # ONNX's 2 GB protobuf limit needs the weights in an external data file.
        program.save(str(path), external_data=params_bytes > 1_800_000_000)
    finally:
        model.train(was_training)
    foreign = custom_domain_nodes(path)
    if foreign:
        raise RuntimeError(f"{path}: the exported graph holds non-standard nodes {foreign}")
    return path


def run_onnxruntime(path: PathLike, x: torch.Tensor) -> torch.Tensor:
    """The ONNX file's output on ``x`` with onnxruntime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


# ---- deconvnet export ----

def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `deconvnet export`."""
    parser.add_argument("--checkpoint", required=True,
                        help="a DeconvNet or FCN-8s checkpoint from `deconvnet train`")
    parser.add_argument("--out", required=True, help="the ONNX file to write")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input height and width the file takes (default: the "
                             "network's input size, e.g. 224x224 for vgg16, 64x64 for tiny)")
    parser.add_argument("--static-batch", type=int, default=None, metavar="N",
                        help="fix the batch size at N (default: any batch size)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the file with onnxruntime against PyTorch")


def run_cli(args: argparse.Namespace) -> int:
    """Export the checkpoint's network; check it with onnxruntime when installed."""
    from .checkpoint import load_model

    if args.static_batch is not None and args.static_batch < 1:
        raise UserError(f"--static-batch must be >= 1, got {args.static_batch}")
    if args.size is not None and min(args.size) < 1:
        raise UserError(f"--size must be positive, got {args.size}")
    try:
        _require_onnx_exporter()
    except ImportError as exc:
        raise UserError(str(exc)) from exc
    model, meta = load_model(args.checkpoint)
    H, W = args.size or (model.input_size, model.input_size)
    if meta["kind"] == "deconvnet" and (H < model.input_size or W < model.input_size):
        raise UserError(f"--size {H} {W}: this DeconvNet needs at least "
                        f"{model.input_size}x{model.input_size}")
    batch = args.static_batch or 2
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(batch, 3, H, W, generator=generator)
    path = export_onnx(model, example, args.out, dynamic_batch=args.static_batch is None)
    print(f"wrote {path} ({meta['kind']}, input (N, 3, {H}, {W}), "
          f"batch {'any' if args.static_batch is None else batch})")
    if args.no_check:
        return 0
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        print(f"not checked: onnxruntime is not installed ({_ONNX_EXTRA})")
        return 0
    check = example if args.static_batch else torch.randn(batch + 1, 3, H, W,
                                                          generator=generator)
    with torch.no_grad():
        expected = model(check)
    error = (run_onnxruntime(path, check) - expected).abs().max().item()
    scale = expected.abs().max().item()
    print(f"onnxruntime vs PyTorch on a batch of {check.shape[0]}: max abs error {error:.2e} "
          f"(outputs up to {scale:.3g})")
    # float32 convolutions of two libraries differ by ~1e-5 of the output's scale, so
    # the bar is 1e-4, relative to the outputs where they exceed 1
    limit = 1e-4 * max(1.0, scale)
    if not error <= limit:
        print(f"{path}: onnxruntime differs from PyTorch by {error:.2e} (> {limit:.1e})",
              file=sys.stderr)
        return 1
    return 0
