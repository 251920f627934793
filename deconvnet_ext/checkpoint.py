"""Checkpoints: written atomically, read as data (``torch.load(weights_only=True)``),
never as code.

A checkpoint is a dict::

    {"format": "deconvnet_ext.checkpoint", "version": 1,
     "meta": {"kind": "deconvnet" | "fcn8s", "arch": str, "num_classes": int, ...},
     "model": state_dict, ...training state (optimizer, scheduler, step, RNG states)...}

``load_model(path)`` rebuilds the network from ``meta`` alone.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn as nn

from .errors import UserError

FORMAT = "deconvnet_ext.checkpoint"
VERSION = 1
PathLike = Union[str, Path]


class CheckpointError(UserError):
    """A checkpoint or weight file that is missing, truncated, foreign or inconsistent.
    The message names the file."""


def read_weights_file(path: PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, with any failure
    (missing, truncated, pickled code, not a torch file) turned into a CheckpointError
    that names ``path`` and says it was expected to hold ``what``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure mode gets the same clear message
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read {what}: truncated, corrupt, or not a weights-only torch "
            f"file ({type(exc).__name__}: {detail})") from exc


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def model_meta(model: nn.Module) -> Dict[str, Any]:
    """What ``load_model`` needs to rebuild ``model``: kind, arch, num_classes, pool_impl."""
    model = _unwrap(model)
    if not hasattr(model, "meta"):
        raise TypeError(f"model must be a DeconvNet or FCN8s (with .meta()), got {type(model).__name__}")
    return model.meta()


def save_checkpoint(path: PathLike, model: nn.Module, meta: Optional[Dict[str, Any]] = None,
                    **training_state: Any) -> Path:
    """Write ``model``'s weights, ``meta`` (default: ``model.meta()``) and any extra
    ``training_state`` entries (tensors, numbers, strings, state dicts) to ``path``.

    Atomic: the data goes to a temporary file in the same directory, is flushed to disk,
    then renamed over ``path`` (``os.replace``), so a crash leaves the old file or the
    new one, never half of one. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _unwrap(model)
    payload = {"format": FORMAT, "version": VERSION,
               "meta": dict(meta if meta is not None else model_meta(model)),
               "model": model.state_dict()}
    for key in training_state:
        if key in payload:
            raise ValueError(f"training_state key {key!r} is reserved")
    payload.update(training_state)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (weights only, onto the CPU).
    Raises CheckpointError naming ``path`` if it is missing, truncated, or foreign."""
    payload = read_weights_file(path, "deconvnet_ext checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a deconvnet_ext checkpoint "
                              f"(no 'format': {FORMAT!r} entry)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r} "
                              f"is not supported (expected {VERSION})")
    meta = payload.get("meta")
    if not isinstance(meta, dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks its 'meta' or 'model' entry")
    return payload


def build_model(meta: Dict[str, Any], pool_impl: Optional[str] = None) -> nn.Module:
    """A freshly initialised DeconvNet or FCN8s as ``meta`` describes it."""
    from .model import DeconvNet, FCN8s  # model imports vgg imports this module

    kinds = {"deconvnet": DeconvNet, "fcn8s": FCN8s}
    kind = meta.get("kind")
    if kind not in kinds:
        raise ValueError(f"meta['kind'] must be one of {sorted(kinds)}, got {kind!r}")
    kwargs = {"num_classes": int(meta["num_classes"]), "arch": meta["arch"]}
    if kind == "deconvnet":
        kwargs["pool_impl"] = pool_impl or meta.get("pool_impl", "ext")
    model = kinds[kind](**kwargs)
    if kind == "deconvnet" and meta.get("proposal_scorer"):
        from .proposal_scorer import ProposalScorer
        spec = meta["proposal_scorer"]
        model.proposal_scorer = ProposalScorer(kwargs["num_classes"], int(spec["hidden"]),
                                               int(spec.get("members", 1)))
    return model


def load_model(path: PathLike, pool_impl: Optional[str] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild the network saved in ``path`` and load its weights.

    Returns (model in eval mode on the CPU, meta). ``pool_impl`` overrides the saved
    pooling implementation (DeconvNet only). Raises CheckpointError naming the file
    when it is unreadable or its weights do not fit the network its meta describes."""
    payload = load_checkpoint(path)
    meta = payload["meta"]
    try:
        model = build_model(meta, pool_impl)
        model.load_state_dict(payload["model"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not match the model its meta describes "
                              f"({meta!r}): {str(exc).strip().splitlines()[0]}") from exc
    return model.eval(), meta
