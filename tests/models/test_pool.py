"""The channels-last max pooling gives exactly nn.MaxPool2d's outputs and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
