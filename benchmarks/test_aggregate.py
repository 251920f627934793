"""Proposal aggregation: dx.aggregate_proposals (fused resize + paste + max, no
(K,C,H,W) intermediate) against the per-proposal F.interpolate + max loop
(deconvnet_ext.reference.aggregate_proposals, which is also what plain PyTorch code
does), and the floor (read the K maps, write the image's score map).

No torch.compile contender: the loop's shapes change with every proposal's box, and
compiling its step recompiled for nearly every box here (guards on the clipped box
geometry), a minute of compiles for 50 proposals and never a steady state to time.
"""
from dataclasses import dataclass

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext import reference

import harness

CONTENDERS = ("ours", "reference", "floor", "floor_memcpy")


@dataclass(frozen=True)
class AggregateCase:
    """K score maps (K,C,h,w) of proposal crops, aggregated into an (H,W) image."""
    device: str
    num_proposals: int
    num_classes: int
    map_size: int
    image_size: tuple

    @property
    def id(self) -> str:
        h, w = self.image_size
        return (f"{self.device}-float32-K{self.num_proposals}-C{self.num_classes}-"
                f"{self.map_size}x{self.map_size}-into-{h}x{w}")


# Issue 3's target: 50 proposals, 21 classes, 224x224 maps, a 375x500 VOC image.
HEADLINE = dict(num_proposals=50, num_classes=21, map_size=224, image_size=(375, 500))
SMALL = dict(num_proposals=8, num_classes=3, map_size=32, image_size=(60, 80))


def aggregate_cases():
    params = []
    for device in ("cpu", "cuda"):
        for sizes in (HEADLINE, SMALL):
            case = AggregateCase(device, **sizes)
            marks = [pytest.mark.cuda, pytest.mark.skipif(not harness.HAS_CUDA, reason="needs a CUDA device")] \
                if device == "cuda" else []
            params.append(pytest.param(case, id=case.id, marks=marks))
    return params


_DATA: dict = {}


def aggregate_data(case: AggregateCase):
    """(maps, boxes, reference result), cached for one case."""
    if case not in _DATA:
        _DATA.clear()
        gen = torch.Generator().manual_seed(3)
        maps = torch.randn(case.num_proposals, case.num_classes, case.map_size, case.map_size,
                           generator=gen).to(case.device)
        boxes = harness.proposal_boxes(case.num_proposals, case.image_size, gen).to(case.device)
        expected = reference.aggregate_proposals(maps, boxes, case.image_size, mode="max")
        _DATA[case] = (maps, boxes, expected)
    return _DATA[case]


@pytest.mark.parametrize("agg_case", aggregate_cases())
def test_aggregate_proposals(benchmark, agg_case, contender):
    maps, boxes, expected = aggregate_data(agg_case)
    out_bytes = agg_case.num_classes * agg_case.image_size[0] * agg_case.image_size[1] * 4
    bytes_moved = maps.numel() * maps.element_size() + boxes.numel() * 8 + out_bytes

    def check(result):
        # Bilinear weights computed in another order may round differently.
        torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)

    if contender in harness.FLOORS:
        fn, check = harness.floor_function(bytes_moved, agg_case.device, contender), None
    elif contender == "ours":
        fn = lambda: dx.aggregate_proposals(maps, boxes, image_size=agg_case.image_size, mode="max")
    else:
        fn = lambda: reference.aggregate_proposals(maps, boxes, agg_case.image_size, mode="max")
    harness.run_benchmark(benchmark, op="aggregate_proposals", case_id=agg_case.id, contender=contender,
                          device=agg_case.device, fn=fn, check=check, bytes_moved=bytes_moved)
