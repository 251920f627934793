"""deconvnet_ext.nn.MaxPool2d / MaxUnpool2d / convert_pooling against torch's own modules,
on small models written the ways public SegNet-style code uses them (pooling_patterns.py):
module types, state_dict keys, outputs (torch.equal, train and eval), input and parameter
gradients, bytes saved for backward, and torch.compile."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import deconvnet_ext as dx
from deconvnet_ext.nn import MaxPool2d, MaxUnpool2d, PoolSwitches, convert_pooling
from pooling_patterns import (PATTERNS, CeilModeSegNet, PerStageSegNet, SharedPoolSegNet,
                              saved_for_backward, torch_and_converted)
from test_train_support import one_thread  # noqa: F401 (fixture)


def _pooling_modules(model):
    return [(name, m) for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, (nn.MaxPool2d, nn.MaxUnpool2d))]


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_converted_types_and_state_dict_keys(name):
    model, converted, _ = torch_and_converted(name)
    before, after = _pooling_modules(model), _pooling_modules(converted)
    assert [n for n, _ in before] == [n for n, _ in after]
    for (_, old), (_, new) in zip(before, after):
        if isinstance(old, nn.MaxUnpool2d) or old.return_indices:
            assert type(new) in (MaxPool2d, MaxUnpool2d)
            assert isinstance(new, type(old))  # still a torch.nn.MaxPool2d / MaxUnpool2d
            for attr in ("kernel_size", "stride", "padding", "dilation", "ceil_mode"):
                assert getattr(new, attr, None) == getattr(old, attr, None), attr
        else:
            assert type(new) is nn.MaxPool2d  # a plain pool stays torch's
    assert list(converted.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value)


def test_a_reused_module_stays_one_instance():
    model = convert_pooling(SharedPoolSegNet())
    assert type(model.pool) is MaxPool2d and type(model.unpool) is MaxUnpool2d
    seq = nn.Sequential(model.pool, nn.ReLU(), model.pool)
    shared = nn.MaxUnpool2d(2)
    tree = nn.ModuleDict({"a": nn.Sequential(shared), "b": nn.ModuleList([shared, shared])})
    convert_pooling(tree)
    assert tree["a"][0] is tree["b"][0] is tree["b"][1]
    assert type(tree["a"][0]) is MaxUnpool2d
    assert seq[0] is seq[2]


def test_root_module_mode_hooks_and_plain_pools():
    pool = nn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True).eval()
    calls = []
    pool.register_forward_hook(lambda m, args, out: calls.append(type(m)))
    new = convert_pooling(pool)
    assert type(new) is MaxPool2d and not new.training and new.ceil_mode
    new(torch.randn(1, 1, 6, 6))
    assert calls == [MaxPool2d]
    plain = nn.MaxPool2d(2)
    assert convert_pooling(plain) is plain

    class MyPool(nn.MaxPool2d):  # a subclass: its forward may differ, left alone
        pass

    mine = MyPool(2, return_indices=True)
    assert convert_pooling(mine) is mine


def _forward_backward(model, x, train):
    model.train(train)
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    weight = torch.linspace(-1.0, 1.0, y.numel()).view_as(y)
    (y * weight).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_outputs_and_gradients_bit_identical(name, train, one_thread):
    model, converted, x = torch_and_converted(name)
    y_t, gx_t, g_t = _forward_backward(model, x, train)
    y_c, gx_c, g_c = _forward_backward(converted, x, train)
    assert y_c.shape == y_t.shape == (x.shape[0], y_t.shape[1], *x.shape[-2:])
    assert torch.equal(y_c, y_t)
    assert torch.equal(gx_c, gx_t)
    assert g_c.keys() == g_t.keys()
    for key in g_t:
        assert torch.equal(g_c[key], g_t[key]), key
    if train:  # BatchNorm's running statistics moved the same way
        for key, value in model.state_dict().items():
            assert torch.equal(converted.state_dict()[key], value), key


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_less_memory_saved_for_backward(name):
    model, converted, x = torch_and_converted(name)
    theirs, ours = saved_for_backward(model, x), saved_for_backward(converted, x)
    assert ours.total < theirs.total
    assert ours.unique < theirs.unique  # distinct storages: what autograd keeps alive


def test_pool_alone_saves_one_byte_per_output():
    x = torch.randn(2, 4, 16, 16)
    theirs = saved_for_backward(nn.MaxPool2d(2, return_indices=True), x)
    ours = saved_for_backward(MaxPool2d(2, return_indices=True), x)
    outputs = 2 * 4 * 8 * 8
    assert theirs.total == x.numel() * 4 + outputs * 8  # the input and int64 indices
    assert ours.total == outputs  # uint8 switches only


def test_switches_carry_the_pool_and_give_torch_indices():
    x = torch.randn(2, 3, 9, 7)
    pool = MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)
    out, switches = pool(x)
    ref_out, ref_idx = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert isinstance(switches, PoolSwitches) and switches.switches.dtype == torch.uint8
    assert switches.input_size == (9, 7) and switches.kernel_size == (3, 3)
    assert switches.stride == (2, 2) and switches.padding == (1, 1)
    assert switches.shape == switches.size() == out.shape and switches.size(1) == 3
    assert torch.equal(out, ref_out)
    assert torch.equal(switches.indices(), ref_idx)
    assert torch.equal(dx.switches_to_indices(switches.switches, 3, 2, 1,
                                              input_size=switches.input_size), ref_idx)
    assert torch.equal(pool.eval()(x)[0], ref_out)
    pool.return_indices = False
    assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1, ceil_mode=True))  # torch's too


def test_unbatched_and_a_torch_fallback_window():
    x = torch.randn(3, 12, 10)  # (C, H, W)
    out, sw = MaxPool2d(2, return_indices=True)(x)
    ref, idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, ref)
    assert torch.equal(MaxUnpool2d(2)(out, sw), F.max_unpool2d(ref, idx, 2))
    # a window over 256 elements: torch's pool, torch's indices, the same results
    x = torch.randn(1, 2, 34, 34)
    out, sw = MaxPool2d(17, return_indices=True)(x)
    ref, idx = F.max_pool2d(x, 17, return_indices=True)
    assert sw.pool_impl == "torch" and torch.equal(sw.indices(), idx)
    assert torch.equal(MaxUnpool2d(17)(out, sw), F.max_unpool2d(ref, idx, 17))


def test_unpool_takes_torch_indices_too():
    x = torch.randn(2, 3, 8, 8)
    out, idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(MaxUnpool2d(2)(out, idx), nn.MaxUnpool2d(2)(out, idx))
    assert torch.equal(MaxUnpool2d(2)(out, idx, output_size=(8, 8)),
                       nn.MaxUnpool2d(2)(out, idx, output_size=(8, 8)))


def test_output_size_forms():
    x = torch.randn(2, 3, 9, 8)
    out, sw = MaxPool2d(2, return_indices=True)(x)
    t_out, t_idx = F.max_pool2d(x, 2, return_indices=True)
    unpool = MaxUnpool2d(2)
    expected = F.max_unpool2d(t_out, t_idx, 2, output_size=(9, 8))
    for size in (None, (9, 8), [9, 8], x.size(), x.size()[-2:]):
        assert torch.equal(unpool(out, sw, output_size=size), expected), size
    # another size torch accepts: torch's placement and checks, exactly
    assert torch.equal(unpool(out, sw, output_size=(8, 8)),
                       F.max_unpool2d(t_out, t_idx, 2, output_size=(8, 8)))
    with pytest.raises(ValueError, match="output_size"):
        unpool(out, sw, output_size=(20, 8))
    with pytest.raises(ValueError, match="output_size"):
        unpool(out, sw, output_size=(1, 2, 3, 9, 8))


def test_no_size_where_torch_guesses_wrong():
    """ceil_mode on an odd height: torch's unpool(x, idx) guesses 10 rows (5 pooled rows
    * 2) where the input had 9; the converted model restores the 9, so its output shape
    differs from the torch model's (the 9 rows match, torch's extra row is zeros)."""
    x = torch.randn(2, 3, 9, 8)
    t_pool, t_unpool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True), nn.MaxUnpool2d(2)
    c_pool, c_unpool = convert_pooling(copy.deepcopy(t_pool)), convert_pooling(copy.deepcopy(t_unpool))
    y_t = t_unpool(*t_pool(x))
    y_c = c_unpool(*c_pool(x))
    assert y_t.shape == (2, 3, 10, 8) and y_c.shape == x.shape
    assert torch.equal(y_t[:, :, :9], y_c) and not y_t[:, :, 9:].any()
    # floor mode on an odd height: torch guesses 8 rows (and drops the 9th's maxima
    # into an error or the wrong place); the converted unpool restores 9
    y_c = c_unpool(*MaxPool2d(2, return_indices=True)(x))
    assert y_c.shape == x.shape


def test_dilation_unpools_where_torch_cannot():
    """Kernel 2, stride 3, dilation 2 on 14x11: torch's unpool refuses the true size (its
    guess ignores dilation); the converted one restores it, values at the maxima."""
    x = torch.randn(1, 2, 14, 11)
    out, sw = MaxPool2d(2, 3, dilation=2, return_indices=True)(x)
    t_out, t_idx = F.max_pool2d(x, 2, 3, dilation=2, return_indices=True)
    with pytest.raises(ValueError, match="output_size"):
        nn.MaxUnpool2d(2, 3)(t_out, t_idx, output_size=x.size())
    y = MaxUnpool2d(2, 3)(out, sw, output_size=x.size())
    expected = torch.zeros(1, 2, 14 * 11).scatter_(2, t_idx.flatten(2), t_out.flatten(2))
    assert torch.equal(y, expected.view_as(x))
    assert torch.equal(MaxUnpool2d(2, 3)(out, sw), y)  # no size: the true one
    assert torch.equal(y, dx.reference.max_unpool2d_with_switches(
        out, sw.switches, 2, 3, 0, 2, output_size=(14, 11)))


def test_switches_where_torch_wants_indices_say_so():
    class FunctionalUnpool(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = nn.MaxPool2d(2, 2, return_indices=True)

        def forward(self, x):
            x, idx = self.pool(x)
            return F.max_unpool2d(x, idx, 2, 2)

    model = FunctionalUnpool()
    x = torch.randn(1, 2, 8, 8)
    model(x)  # torch's indices: fine
    convert_pooling(model)
    with pytest.raises(TypeError, match=r"max_unpool2d\(\).*int64 indices.*indices\(\).*"
                                        r"switches_to_indices"):
        model(x)
    _, sw = model.pool(x)
    with pytest.raises(TypeError, match="PoolSwitches"):
        torch.gather(x, 1, sw)
    # and the way out the message names
    y = F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2)
    out, sw = model.pool(x)
    assert torch.equal(F.max_unpool2d(out, sw.indices(), 2, 2), y)


@pytest.mark.slow  # ~15 s of inductor compile on 2 cores
def test_torch_compile_fullgraph_of_a_converted_model(one_thread):
    torch.manual_seed(0)
    model = convert_pooling(CeilModeSegNet()).eval()
    x = torch.randn(2, 3, 11, 9)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        expected = model(x)
        got = compiled(x)
    assert got.shape == expected.shape == (2, 3, 11, 9)
    torch.testing.assert_close(got, expected)


def test_convert_pooling_on_the_library_models_changes_nothing():
    net = dx.DeconvNet(num_classes=3, arch="tiny")
    keys = list(net.state_dict())
    assert convert_pooling(net) is net and list(net.state_dict()) == keys
    fcn = dx.FCN8s(num_classes=3, arch="tiny")
    assert convert_pooling(fcn) is fcn
    assert all(type(m) is nn.MaxPool2d for m in fcn.modules() if isinstance(m, nn.MaxPool2d))


def test_per_stage_model_converted_matches_on_a_second_size():
    torch.manual_seed(1)
    model = PerStageSegNet().eval()
    converted = convert_pooling(copy.deepcopy(model))
    x = torch.randn(1, 3, 17, 6)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
