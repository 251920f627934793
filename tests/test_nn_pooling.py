"""The switch pooling modules: "ext" (uint8 switches, dx ops) and "torch"
(F.max_pool2d indices) give the same outputs and gradients, and unpool restores the
pooled input's exact size."""
import pytest
import torch
import torch.nn.functional as F

from deconvnet_ext.nn import MaxPool2dWithSwitches, MaxUnpool2dWithSwitches, set_pool_impl
from test_train_support import one_thread  # noqa: F401 (fixture)


def _pool_unpool(x, pool_impl, size=2):
    pool = MaxPool2dWithSwitches(size, size, pool_impl=pool_impl)
    unpool = MaxUnpool2dWithSwitches(size, size)
    x = x.detach().clone().requires_grad_(True)
    out, sw = pool(x)
    y = unpool(out * 3.0, sw)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return out, sw, y, x.grad


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 9), (3, 5, 6)])
def test_ext_and_torch_agree_outputs_and_gradients(shape):
    torch.manual_seed(0)
    # ReLU'd input: many tied zeros inside windows, as in the network
    x = F.relu(torch.randn(shape))
    out_e, sw_e, y_e, g_e = _pool_unpool(x, "ext")
    out_t, sw_t, y_t, g_t = _pool_unpool(x, "torch")
    assert sw_e.switches.dtype == torch.uint8 and sw_t.switches.dtype == torch.int64
    torch.testing.assert_close(out_e, F.max_pool2d(x, 2, 2), rtol=0, atol=0)
    torch.testing.assert_close(out_e, out_t, rtol=0, atol=0)
    torch.testing.assert_close(y_e, y_t, rtol=0, atol=0)
    torch.testing.assert_close(g_e, g_t, rtol=0, atol=0)
    assert y_e.shape == x.shape  # odd sizes: the unpool restores the pool's input size


def test_unpool_places_values_at_the_max():
    x = torch.tensor([[[[1., 5., 0., 2.], [3., 4., 9., 1.]]]])
    for impl in ("ext", "torch"):
        out, sw = MaxPool2dWithSwitches(2, 2, pool_impl=impl)(x)
        y = MaxUnpool2dWithSwitches(2, 2)(out, sw)
        expected = torch.tensor([[[[0., 5., 0., 0.], [0., 0., 9., 0.]]]])
        torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_set_pool_impl_and_bad_names():
    pool = MaxPool2dWithSwitches(2, 2)
    seq = torch.nn.Sequential(pool)
    set_pool_impl(seq, "torch")
    assert pool.pool_impl == "torch"
    with pytest.raises(ValueError, match="pool_impl"):
        MaxPool2dWithSwitches(2, 2, pool_impl="cudnn")
    with pytest.raises(ValueError, match="pool_impl"):
        set_pool_impl(seq, "fast")
    with pytest.raises(TypeError, match="switches"):
        MaxUnpool2dWithSwitches(2, 2)(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
