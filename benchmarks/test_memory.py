"""Memory, not time: (1) bytes of uint8 switches vs torch's int64 indices at each
pool of the 224x224 DeconvNet, from the ops' own outputs (on the meta device: shapes
and dtypes, no data); (2) a DeconvNet training step's memory with pool_impl="ext" vs
"torch": the bytes autograd saves for backward (exact, any device), and the step's
peak allocation (CPU: summed from torch.profiler's allocation events; CUDA:
torch.cuda.max_memory_allocated). Results go to harness.RECORDS -> the JSON's
"deconvnet_ext" section -> RESULTS.md."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deconvnet_ext as dx

import harness
from harness import KERNEL, POOL_LEVELS_224, STRIDE
from train_cases import TrainCase, batch, build_model, train_cases, train_step


@pytest.mark.parametrize("batch_size", [16, 64])
@pytest.mark.parametrize("level", range(len(POOL_LEVELS_224)), ids=lambda i: f"pool{i + 1}")
def test_switch_vs_index_bytes(level, batch_size):
    x = torch.empty((batch_size,) + POOL_LEVELS_224[level], device="meta")
    out, switches = dx.max_pool2d_with_switches(x, KERNEL, STRIDE)
    _, indices = F.max_pool2d(x, KERNEL, STRIDE, return_indices=True)
    assert switches.dtype == torch.uint8 and switches.shape == out.shape
    assert indices.dtype == torch.int64 and indices.shape == out.shape
    harness.RECORDS.append({
        "kind": "switch_bytes", "level": f"pool{level + 1}", "batch": batch_size,
        "input_shape": list(x.shape), "output_shape": list(out.shape),
        "switch_bytes": switches.numel() * switches.element_size(),
        "index_bytes": indices.numel() * indices.element_size(),
    })


class SavedBytes:
    """Context manager counting the bytes of the distinct storages autograd saves
    for backward inside it (activations, switches or indices, the weights convs keep)."""

    def __enter__(self):
        self.storages = {}

        def pack(t: torch.Tensor):
            storage = t.untyped_storage()
            self.storages[storage._cdata] = storage.nbytes()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())


def cpu_peak_bytes(step) -> int:
    """Peak of the bytes allocated during step() above what was live before it,
    from the profiler's allocation/free events in time order."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def cuda_peak_bytes(step) -> int:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("train_case", train_cases())
def test_train_step_memory(train_case: TrainCase):
    results = {}
    for pool_impl in ("ext", "torch"):
        model = build_model(train_case, pool_impl)
        images, labels = batch(train_case, model.input_size)
        step = train_step(model, images, labels)
        if train_case.device == "cuda":
            step()   # warm-up: cuDNN workspaces, allocator pools
        with SavedBytes() as saved:
            peak = cuda_peak_bytes(step) if train_case.device == "cuda" else cpu_peak_bytes(step)
        results[pool_impl] = {"saved_for_backward_bytes": saved.nbytes, "peak_step_bytes": peak}
        del model, step
    # What the switches themselves save: 7 bytes per pooled output, five pools.
    size, pooled = build_model(train_case, "torch").input_size, 0
    widths = dx.model.get_arch(train_case.arch).widths
    for level, width in enumerate(widths):
        side = size >> (level + 1)
        pooled += train_case.batch * width * side * side
    harness.RECORDS.append({"kind": "train_step_memory", "case": train_case.id, **{
        f"{impl}_{k}": v for impl, r in results.items() for k, v in r.items()},
        "index_saving_bytes": pooled * 7})
    # The switches are 1 byte where torch keeps 8: the ext step must save less.
    assert results["ext"]["saved_for_backward_bytes"] < results["torch"]["saved_for_backward_bytes"]


@pytest.mark.parametrize("batch_size", [16])
def test_vgg16_saved_bytes_on_meta(batch_size):
    """The paper's vgg16 DeconvNet at 224x224: bytes saved for backward with each
    pool_impl, traced on the meta device (no compute, any machine)."""
    case = TrainCase("meta", "vgg16", batch_size)
    results = {}
    for pool_impl in ("ext", "torch"):
        model = build_model(case, pool_impl)
        images = torch.empty(batch_size, 3, model.input_size, model.input_size, device="meta")
        with SavedBytes() as saved:
            model(images)
        results[pool_impl] = saved.nbytes
    harness.RECORDS.append({"kind": "vgg16_saved_bytes", "case": case.id,
                            "ext_saved_for_backward_bytes": results["ext"],
                            "torch_saved_for_backward_bytes": results["torch"]})
    assert results["ext"] < results["torch"]
