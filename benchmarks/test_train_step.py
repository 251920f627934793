"""End to end: one DeconvNet training step with deconvnet_ext's pools/unpools
(pool_impl="ext", "ours") against torch's own (pool_impl="torch"): the tiny net on
CPU, the paper's vgg16 at 224x224, batch 16, on CUDA. Same weights, same batch; the
first step's loss must agree before anything is timed."""
import functools

import pytest
import torch

import harness
from train_cases import POOL_IMPL_OF, batch, build_model, train_cases, train_step

CONTENDERS = ("ours", "torch")


@functools.lru_cache(maxsize=1)
def first_step_loss(case):
    """The first step's loss with torch's pooling: what both contenders must give."""
    model = build_model(case, "torch")
    images, labels = batch(case, model.input_size)
    return train_step(model, images, labels)()


@pytest.mark.parametrize("train_case", train_cases())
def test_train_step(benchmark, train_case, contender):
    model = build_model(train_case, POOL_IMPL_OF[contender])
    images, labels = batch(train_case, model.input_size)
    expected = first_step_loss(train_case)

    def check(loss):
        if train_case.device == "cuda":
            # Two models may get different cuDNN (TF32) convolution algorithms.
            torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
        else:
            torch.testing.assert_close(loss, expected)

    harness.run_benchmark(benchmark, op="train_step", case_id=train_case.id, contender=contender,
                          device=train_case.device, fn=train_step(model, images, labels),
                          check=check, bytes_moved=0, pool_impl=POOL_IMPL_OF[contender],
                          input_size=model.input_size)


# torch's unpool backward is a plain aten::gather (nothing else in the step gathers).
POOL_EVENT_KEYS = ("max_pool2d", "max_unpool2d", "gather_at_switches", "maxpool", "maxunpool", "aten::gather")


@pytest.mark.parametrize("train_case", train_cases())
def test_train_step_pool_share(train_case):
    """Share of a training step's time spent in pooling and unpooling (forward and
    backward), from torch.profiler's self times (CPU ops on CPU, kernels on CUDA)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if train_case.device == "cuda" else [])
    record = {"kind": "pool_share", "case": train_case.id}
    for contender, pool_impl in POOL_IMPL_OF.items():
        model = build_model(train_case, pool_impl)
        images, labels = batch(train_case, model.input_size)
        step = train_step(model, images, labels)
        step()   # warm-up outside the profile
        with profile(activities=activities) as prof:
            step()
            if train_case.device == "cuda":
                torch.cuda.synchronize()
        attr = "self_device_time_total" if train_case.device == "cuda" else "self_cpu_time_total"
        events = prof.key_averages()
        total = sum(getattr(e, attr, 0) for e in events)
        pooling = sum(getattr(e, attr, 0) for e in events
                      if any(k in e.key.lower() for k in POOL_EVENT_KEYS))
        assert total > 0, f"the profiler recorded no {attr}"
        record[f"{pool_impl}_pool_share"] = pooling / total
        record[f"{pool_impl}_pool_us"] = pooling
        record[f"{pool_impl}_total_us"] = total
    harness.RECORDS.append(record)
