"""dx.aggregate_proposals (fused CPU / CUDA op) against reference.aggregate_proposals
(the per-proposal F.interpolate + paste loop), plus argument checking, opcheck and
determinism.

Tolerance: the fused op computes the bilinear weights and samples as torch's generic
CPU resize kernel does (csrc/common/bilinear.h); for boxes with bh + bw > 128 that is
bit-exact on CPUs where torch runs its AVX2/AVX512 kernels (tested below), smaller
boxes differ from torch's other resize kernel by a few ulp, hence rtol 1e-5 (float32).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

import deconvnet_ext as dx
from deconvnet_ext import reference
from pool_cases import cpu_loops  # noqa: F401  (autouse: fast and portable CPU loops)

MODES = ("max", "sum", "mean")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float32: dict(rtol=1e-5, atol=2e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def random_boxes(g: torch.Generator, K: int, H: int, W: int, kind: str) -> torch.Tensor:
    """(K, 4) int64 boxes [x0, y0, x1, y1) of one kind of placement/size."""
    def ints(lo, hi):
        return torch.randint(lo, hi, (K,), generator=g)

    if kind == "inside":
        bw, bh = ints(1, W + 1), ints(1, H + 1)
        x0 = (torch.rand(K, generator=g) * (W - bw + 1)).long()
        y0 = (torch.rand(K, generator=g) * (H - bh + 1)).long()
    elif kind == "partly_outside":
        bw, bh = ints(2, 2 * W), ints(2, 2 * H)
        x0, y0 = ints(-W, W), ints(-H, H)
    elif kind == "outside":
        bw, bh = ints(1, W), ints(1, H)
        side = ints(0, 4)
        x0 = torch.where(side == 0, -bw - ints(0, 5), torch.where(side == 1, W + ints(0, 5), ints(0, W)))
        y0 = torch.where(side == 2, -bh - ints(0, 5), torch.where(side == 3, H + ints(0, 5), ints(0, H)))
        # sides 0/1: left / right of the image, sides 2/3: above / below it
    elif kind == "one_pixel":
        bw = torch.ones(K, dtype=torch.long)
        bh = torch.ones(K, dtype=torch.long)
        x0, y0 = ints(-1, W + 1), ints(-1, H + 1)
    elif kind == "mixed":
        bw, bh = ints(1, 3 * W // 2 + 2), ints(1, 3 * H // 2 + 2)
        x0, y0 = ints(-W // 3 - 1, W), ints(-H // 3 - 1, H)
    else:
        raise AssertionError(kind)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], 1)


def run_both(maps, boxes, image_size, mode, image_index=None, num_images=None, device="cpu"):
    out = dx.aggregate_proposals(maps.to(device), boxes.to(device), image_size, mode,
                                 None if image_index is None else image_index.to(device),
                                 num_images)
    ref = reference.aggregate_proposals(maps, boxes, image_size, mode, image_index, num_images)
    return out.cpu(), ref


# (K, C, h, w, H, W, box kind): maps smaller and larger than their boxes (up- and
# down-sampling), odd sizes, C = 1, boxes in / partly out / fully out / 1 pixel.
CASES = [
    (6, 3, 8, 8, 20, 24, "inside"),
    (7, 2, 9, 13, 31, 17, "partly_outside"),
    (5, 3, 11, 7, 15, 19, "outside"),
    (9, 1, 5, 6, 12, 14, "one_pixel"),
    (12, 4, 21, 17, 33, 41, "mixed"),
    (4, 1, 40, 36, 23, 29, "mixed"),       # maps larger than most boxes: downsampling
    (3, 2, 3, 2, 50, 45, "partly_outside"),  # tiny maps: strong upsampling
    (5, 3, 1, 1, 9, 9, "mixed"),             # 1x1 maps
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[f"{c[-1]}-{i}" for i, c in enumerate(CASES)])
def test_matches_reference(case, mode, dtype, device):
    K, C, h, w, H, W, kind = case
    g = torch.Generator().manual_seed(100 + CASES.index(case))
    maps = torch.randn(K, C, h, w, generator=g, dtype=dtype)
    boxes = random_boxes(g, K, H, W, kind)
    out, ref = run_both(maps, boxes, (H, W), mode, device=device)
    assert out.shape == (C, H, W) and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    if kind == "outside":
        assert not out.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_large_boxes_bit_exact_where_torch_uses_fma(mode, device):
    """Boxes with bh + bw > 128 go through torch's generic resize kernel, whose
    rounding the op reproduces exactly (on CPUs where torch runs AVX2/AVX512)."""
    if device == "cpu" and not (dx.build_info()["cpu_avx2_fma"]
                                and os.environ.get("DECONVNET_EXT_DISABLE_AVX2", "0") in ("", "0")
                                and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")):
        pytest.skip("torch's DEFAULT kernels round differently from the op's FMA path")
    if device == "cuda":
        pytest.skip("compared with a tolerance in test_matches_reference")
    g = torch.Generator().manual_seed(7)
    K, C, H, W = 6, 3, 120, 150
    maps = torch.randn(K, C, 37, 53, generator=g)
    x0, y0 = torch.randint(-40, 100, (K,), generator=g), torch.randint(-40, 80, (K,), generator=g)
    boxes = torch.stack([x0, y0, x0 + torch.randint(70, 160, (K,), generator=g),
                         y0 + torch.randint(70, 140, (K,), generator=g)], 1)
    out, ref = run_both(maps, boxes, (H, W), mode, device=device)
    assert torch.equal(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_equals_cpu_bitwise(dtype):
    """Both kernels call the same bilinear functions (csrc/common/bilinear.h) with fused
    multiply-adds and reduce in proposal order: the same bits on both devices."""
    if not dx.build_info()["cpu_avx2_fma"] or os.environ.get("DECONVNET_EXT_DISABLE_AVX2", "0") not in ("", "0"):
        pytest.skip("the CPU takes its unfused path here")
    g = torch.Generator().manual_seed(31)
    K, C, H, W = 12, 3, 70, 90
    maps = torch.randn(K, C, 20, 24, generator=g).to(dtype)
    boxes = random_boxes(g, K, H, W, "mixed")
    index = torch.randint(0, 3, (K,), generator=g)
    for mode in MODES:
        cpu = dx.aggregate_proposals(maps, boxes, (H, W), mode, index, 3)
        cuda = dx.aggregate_proposals(maps.cuda(), boxes.cuda(), (H, W), mode, index.cuda(), 3)
        assert torch.equal(cuda.cpu(), cpu), mode


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_image_index_batches_images(mode, device):
    g = torch.Generator().manual_seed(3)
    K, C, H, W = 11, 3, 26, 30
    maps = torch.randn(K, C, 10, 12, generator=g)
    boxes = random_boxes(g, K, H, W, "mixed")
    image_index = torch.tensor([0, 2, 2, 0, 4, 2, 0, 4, 4, 0, 2])  # images 1 and 3: none
    out, ref = run_both(maps, boxes, (H, W), mode, image_index, 5, device=device)
    assert out.shape == (5, C, H, W)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    assert not out[1].any() and not out[3].any()
    for b in (0, 2, 4):  # each canvas equals the single-image op on its proposals
        sel = image_index == b
        single = dx.aggregate_proposals(maps[sel].to(device), boxes[sel].to(device), (H, W), mode)
        assert torch.equal(out[b], single.cpu())
    # num_images defaults to image_index.max() + 1
    derived = dx.aggregate_proposals(maps.to(device), boxes.to(device), (H, W), mode,
                                     image_index.to(device))
    assert torch.equal(derived.cpu(), out)
    # int32 boxes and image_index are accepted
    narrow = dx.aggregate_proposals(maps.to(device), boxes.int().to(device), (H, W), mode,
                                    image_index.int().to(device), 5)
    assert torch.equal(narrow.cpu(), out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_no_proposals_gives_zeros(mode, device):
    maps = torch.zeros(0, 4, 7, 7, device=device)
    boxes = torch.zeros(0, 4, dtype=torch.long, device=device)
    out = dx.aggregate_proposals(maps, boxes, (5, 6), mode)
    assert out.shape == (4, 5, 6) and not out.any()
    index = torch.zeros(0, dtype=torch.long, device=device)
    out = dx.aggregate_proposals(maps, boxes, (5, 6), mode, index, 3)
    assert out.shape == (3, 4, 5, 6) and not out.any()
    assert dx.aggregate_proposals(maps, boxes, (5, 6), mode, index).shape == (0, 4, 5, 6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_nan_propagates_like_reference(mode, device):
    g = torch.Generator().manual_seed(5)
    K, C, H, W = 6, 2, 30, 34
    maps = torch.randn(K, C, 9, 11, generator=g)
    maps[1, 0, 4, 5] = float("nan")
    maps[4, 1, 0, 0] = float("nan")
    boxes = random_boxes(g, K, H, W, "partly_outside")
    boxes[1] = torch.tensor([-3, 2, 25, 28])   # the NaN lands inside the image
    boxes[4] = torch.tensor([0, 0, 40, 40])
    out, ref = run_both(maps, boxes, (H, W), mode, device=device)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out, ref, equal_nan=True, **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_maps(device):
    g = torch.Generator().manual_seed(11)
    K, C, H, W = 7, 3, 29, 37
    base = torch.randn(K, 2 * C, 15, 13, generator=g)
    boxes = random_boxes(g, K, H, W, "mixed")
    views = {
        "channel_slice": base[:, ::2],
        "transposed": base[:, :C].transpose(2, 3),
        "channels_last": base[:, :C].contiguous(memory_format=torch.channels_last),
    }
    for name, maps in views.items():
        for mode in MODES:
            out = dx.aggregate_proposals(maps.to(device), boxes.to(device), (H, W), mode).cpu()
            contiguous = dx.aggregate_proposals(maps.contiguous().to(device), boxes.to(device),
                                                (H, W), mode).cpu()
            assert torch.equal(out, contiguous), (name, mode)
            ref = reference.aggregate_proposals(maps.contiguous(), boxes, (H, W), mode)
            torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_accumulates_in_float(dtype, device):
    g = torch.Generator().manual_seed(13)
    K, C, H, W = 8, 2, 24, 28
    maps = torch.randn(K, C, 10, 10, generator=g).to(dtype)
    boxes = random_boxes(g, K, H, W, "mixed")
    for mode in MODES:
        out = dx.aggregate_proposals(maps.to(device), boxes.to(device), (H, W), mode).cpu()
        assert out.dtype == dtype
        ref = reference.aggregate_proposals(maps.float(), boxes, (H, W), mode).to(dtype)
        torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_two_runs_are_bitwise_identical(device):
    g = torch.Generator().manual_seed(17)
    K, C, H, W = 40, 5, 90, 110
    maps = torch.randn(K, C, 32, 32, generator=g).to(device)
    boxes = random_boxes(g, K, H, W, "mixed").to(device)
    for mode in MODES:
        a = dx.aggregate_proposals(maps, boxes, (H, W), mode)
        b = dx.aggregate_proposals(maps, boxes, (H, W), mode)
        assert torch.equal(a, b)


def test_thread_count_does_not_change_the_result():
    g = torch.Generator().manual_seed(19)
    K, C, H, W = 20, 1, 70, 80   # C = 1: the planes are split into row bands
    maps = torch.randn(K, C, 24, 24, generator=g)
    boxes = random_boxes(g, K, H, W, "mixed")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dx.aggregate_proposals(maps, boxes, (H, W), "sum")
        torch.set_num_threads(max(threads, 2))
        many = dx.aggregate_proposals(maps, boxes, (H, W), "sum")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(23)
    maps = torch.randn(5, 2, 6, 7, generator=g).to(device)
    boxes = random_boxes(g, 5, 12, 14, "mixed").to(device)
    index = torch.tensor([1, 0, 1, 1, 0], device=device)
    op = torch.ops.deconvnet_ext.aggregate_proposals.default
    for mode in MODES:
        torch.library.opcheck(op, (maps, boxes, None, [12, 14], 1, mode))
        torch.library.opcheck(op, (maps, boxes, index, [12, 14], 2, mode))


def test_forward_works_on_tensors_requiring_grad_but_backward_raises():
    maps = torch.randn(2, 1, 4, 4, requires_grad=True)
    boxes = torch.tensor([[0, 0, 5, 5], [2, 1, 6, 7]])
    out = dx.aggregate_proposals(maps, boxes, (8, 8), "sum")
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="aggregate_proposals has no backward"):
        out.sum().backward()


# ------------------------------------------------------------------ bad input
MAPS = torch.randn(2, 3, 4, 4)
BOXES = torch.tensor([[0, 0, 5, 5], [1, 2, 6, 9]])


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(maps=torch.randn(3, 4, 4)), ValueError, "maps must be 4-d"),
    (dict(maps=torch.ones(2, 3, 4, 4, dtype=torch.long)), TypeError, "maps must be a floating"),
    (dict(maps=torch.randn(2, 3, 0, 4)), ValueError, "maps must have positive"),
    (dict(boxes=BOXES.float()), TypeError, "boxes must be an integer"),
    (dict(boxes=BOXES[:, :3]), ValueError, "boxes must have shape"),
    (dict(boxes=BOXES[:1]), ValueError, "boxes has 1 rows"),
    (dict(boxes=torch.tensor([[0, 0, 5, 5], [3, 2, 3, 9]])), ValueError, "boxes row 1"),
    (dict(boxes=torch.tensor([[0, 4, 5, 1], [1, 2, 6, 9]])), ValueError, "boxes row 0"),
    (dict(boxes=torch.tensor([[0, 0, 5, 5], [1, 2, 6, 2**40]])), ValueError, "boxes row 1"),
    (dict(image_size=(0, 5)), ValueError, "image_size"),
    (dict(image_size=(5,)), ValueError, "image_size"),
    (dict(image_size=5), TypeError, "image_size"),
    (dict(mode="median"), ValueError, "mode"),
    (dict(image_index=torch.tensor([0, 1, 1])), ValueError, "image_index must have shape"),
    (dict(image_index=torch.tensor([0.0, 1.0])), TypeError, "image_index must be an integer"),
    (dict(image_index=torch.tensor([0, 3]), num_images=2), ValueError, "image_index holds 3"),
    (dict(image_index=torch.tensor([-1, 0]), num_images=2), ValueError, "image_index holds -1"),
    (dict(num_images=3), ValueError, "num_images"),
    (dict(image_index=torch.tensor([0, 1]), num_images=1.5), TypeError, "num_images"),
])
def test_bad_input_raises_naming_the_argument(kwargs, error, words):
    args = dict(maps=MAPS, boxes=BOXES, image_size=(8, 9))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        dx.aggregate_proposals(**args)


@pytest.mark.parametrize("args, words", [
    ((MAPS, torch.tensor([[0, 0, 5, 5], [3, 2, 3, 9]]), None, [8, 9], 1, "max"), "boxes row 1"),
    ((MAPS, BOXES, torch.tensor([0, 2]), [8, 9], 2, "max"), "image_index"),
    ((MAPS, BOXES, None, [8, 9], 2, "max"), "num_images"),
    ((MAPS, BOXES, None, [8, 9], 1, "avg"), "mode"),
    ((MAPS, BOXES.double(), None, [8, 9], 1, "max"), "boxes must be an integer"),
    ((MAPS[0], BOXES, None, [8, 9], 1, "max"), "maps must be 4-d"),
])
def test_op_checks_its_arguments_without_the_wrapper(args, words):
    with pytest.raises(RuntimeError, match=words):
        torch.ops.deconvnet_ext.aggregate_proposals(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_boxes_on_another_device_is_refused():
    with pytest.raises(ValueError, match="boxes is on"):
        dx.aggregate_proposals(MAPS.cuda(), BOXES, (8, 9))


PORTABLE_PATH_CHECK = r"""
import torch, deconvnet_ext as dx
from deconvnet_ext import reference
assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
g = torch.Generator().manual_seed(29)
for dtype in (torch.float32, torch.float64):
    maps = torch.randn(6, 2, 37, 53, generator=g, dtype=dtype)
    x0, y0 = torch.randint(-40, 100, (6,), generator=g), torch.randint(-40, 80, (6,), generator=g)
    big = torch.stack([x0, y0, x0 + torch.randint(70, 160, (6,), generator=g),
                       y0 + torch.randint(70, 140, (6,), generator=g)], 1)
    small = torch.stack([x0, y0, x0 + torch.randint(1, 40, (6,), generator=g),
                         y0 + torch.randint(1, 40, (6,), generator=g)], 1)
    for mode in ("max", "sum", "mean"):
        out = dx.aggregate_proposals(maps, big, (120, 150), mode)
        assert torch.equal(out, reference.aggregate_proposals(maps, big, (120, 150), mode)), mode
        out = dx.aggregate_proposals(maps, small, (120, 150), mode)
        ref = reference.aggregate_proposals(maps, small, (120, 150), mode)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=2e-6)
print("ok")
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="the AVX2 / portable split exists on x86-64 only")
def test_portable_path_matches_torch_default_kernels():
    """DECONVNET_EXT_DISABLE_AVX2=1 takes the path of CPUs without AVX2/FMA (plain products);
    it equals torch's own DEFAULT-capability resize, bit for bit on large boxes."""
    env = dict(os.environ, DECONVNET_EXT_DISABLE_AVX2="1", ATEN_CPU_CAPABILITY="default",
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", PORTABLE_PATH_CHECK], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
