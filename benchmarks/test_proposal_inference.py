"""End to end: DeconvNet's instance-wise inference of one 375x500 image with 50
proposals (crop + resize, one batched forward, paste back and aggregate by max, softmax):
deconvnet_ext.infer.deconvnet_scores, which aggregates with the fused
dx.aggregate_proposals ("ours"), against the same steps with the per-proposal
F.interpolate + max loop (reference.aggregate_proposals) doing the aggregation.
The tiny DeconvNet on CPU, vgg16 on CUDA. The proposals are fixed random boxes:
the proposal generator is the same for both and is not what is measured."""
import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from deconvnet_ext import reference

import harness
from train_cases import TrainCase, build_model

CONTENDERS = ("ours", "reference")
IMAGE_SIZE = (375, 500)
NUM_PROPOSALS = 50


@dataclass(frozen=True)
class InferenceCase:
    device: str
    arch: str

    @property
    def id(self) -> str:
        return f"{self.device}-{self.arch}-K{NUM_PROPOSALS}-{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"


def inference_cases():
    cuda = InferenceCase("cuda", "vgg16")
    return [pytest.param(InferenceCase("cpu", "tiny"), id=InferenceCase("cpu", "tiny").id),
            pytest.param(cuda, id=cuda.id, marks=[
                pytest.mark.cuda, pytest.mark.skipif(not harness.HAS_CUDA, reason="needs a CUDA device")])]


def import_infer():
    try:
        from deconvnet_ext import infer
    except ImportError as exc:
        pytest.skip(f"deconvnet_ext.infer is not on main yet ({exc})")
    return infer


def loop_scores(infer, model, image: np.ndarray, boxes: torch.Tensor) -> torch.Tensor:
    """deconvnet_scores' steps for one image, aggregating with the reference loop."""
    from deconvnet_ext.data.transforms import image_to_tensor
    device = next(model.parameters()).device
    crops = infer.crop_and_resize(image_to_tensor(image).to(device), boxes, int(model.input_size))
    maps = infer.segment_crops(model, crops)
    return reference.aggregate_proposals(maps, boxes.to(maps.device), image_size=image.shape[:2], mode="max")


@functools.lru_cache(maxsize=1)
def inference_data(case: InferenceCase):
    """(model, image uint8 (H,W,3), boxes (K,4), softmax of the loop's scores)."""
    infer = import_infer()
    model = build_model(TrainCase(case.device, case.arch, 1), "ext").eval()
    gen = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, IMAGE_SIZE + (3,), generator=gen, dtype=torch.uint8).numpy()
    boxes = harness.proposal_boxes(NUM_PROPOSALS, IMAGE_SIZE, gen)
    return model, image, boxes, torch.softmax(loop_scores(infer, model, image, boxes), 0)


@pytest.mark.parametrize("inference_case", inference_cases())
def test_proposal_inference(benchmark, inference_case, contender):
    infer = import_infer()
    model, image, boxes, expected = inference_data(inference_case)
    config = infer.InferenceConfig(max_proposals=NUM_PROPOSALS, aggregation="max")

    if contender == "ours":
        fn = lambda: torch.softmax(infer.deconvnet_scores(model, [image], [boxes], config)[0], 0)
    else:
        fn = lambda: torch.softmax(loop_scores(infer, model, image, boxes), 0)

    def check(probs):
        torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-5)

    harness.run_benchmark(benchmark, op="proposal_inference", case_id=inference_case.id,
                          contender=contender, device=inference_case.device, fn=fn, check=check,
                          bytes_moved=0)
