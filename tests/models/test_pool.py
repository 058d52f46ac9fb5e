"""The channels-last max pooling gives exactly nn.MaxPool2d's outputs and gradients, and the cnn
run channels-last on the CPU computes what it computes in NCHW order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpscope.models import build_model
from dpscope.models.layout import channels_last_on_cpu
from dpscope.models.pool import ChannelsLastMaxPool2d


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((5, 16, 14, 14), 2, 1, 0), ((3, 32, 5, 5), 2, 1, 0), ((4, 3, 9, 7), 3, 2, 1), ((2, 1, 8, 8), 2, 2, 0),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_and_gradients_are_bitwise_those_of_maxpool2d(shape, kernel, stride, padding, dtype):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    upstream = torch.randn_like(nn.MaxPool2d(kernel, stride, padding)(x))
    results = []
    for pool in (nn.MaxPool2d(kernel, stride, padding), ChannelsLastMaxPool2d(kernel, stride, padding)):
        out = pool(x)
        (grad,) = torch.autograd.grad(out, x, upstream)
        results.append((out, grad))
    (want, want_grad), (got, got_grad) = results
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    assert got.is_contiguous()  # the usual NCHW layout downstream


def test_unbatched_input_is_pooled_too():
    x = torch.randn(3, 6, 6)
    assert torch.equal(ChannelsLastMaxPool2d(2, 1)(x), nn.MaxPool2d(2, 1)(x))


def test_ties_route_the_gradient_to_the_same_element():
    torch.manual_seed(1)
    x = torch.randint(0, 2, (6, 16, 14, 14)).float().requires_grad_()  # ties everywhere
    upstream = torch.randn(6, 16, 13, 13)
    grads = [torch.autograd.grad(pool(x), x, upstream)[0]
             for pool in (nn.MaxPool2d(2, 1), ChannelsLastMaxPool2d(2, 1))]
    assert torch.equal(grads[0], grads[1])


def test_per_example_gradients_by_torch_func_go_through_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), ChannelsLastMaxPool2d(2, 1), nn.Flatten(), nn.LazyLinear(2))
    reference = nn.Sequential(model[0], nn.MaxPool2d(2, 1), model[2], model[3])
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 2, (5,))
    model(x)  # materialise the lazy layer
    params = dict(model.named_parameters())

    def per_example(net):
        def loss(p, xi, yi):
            out = torch.func.functional_call(net, p, (xi.unsqueeze(0),))
            return nn.functional.cross_entropy(out, yi.unsqueeze(0))
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)

    got, want = per_example(model), per_example(reference)
    assert all(torch.equal(got[name], want[name]) for name in params)


def test_a_channels_last_input_is_pooled_in_its_own_order():
    x = torch.randn(4, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    out = ChannelsLastMaxPool2d(2, 1)(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.equal(out, nn.MaxPool2d(2, 1)(x.contiguous()))


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_on_cpu_gives_convolutions_an_nhwc_input(channels):
    x = torch.randn(5, channels, 28, 28)
    converted = channels_last_on_cpu(x)
    assert torch.equal(converted, x)
    assert nn.Conv2d(channels, 8, 3)(converted).is_contiguous(memory_format=torch.channels_last)
    assert channels_last_on_cpu(torch.randn(3, 8, 8)).is_contiguous()  # not 4-d: as it was


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 8)])
def test_the_cnn_channels_last_computes_what_it_computes_in_nchw(monkeypatch, channels, size):
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=channels, image_size=size, num_classes=3).double()
    x, y = torch.randn(6, channels, size, size, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def loss_and_grads():
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    got = loss_and_grads()
    monkeypatch.setattr("dpscope.models.cnn.channels_last_on_cpu", lambda t: t)
    want = loss_and_grads()
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=0)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
