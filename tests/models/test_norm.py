"""BatchNorm -> GroupNorm replacement and the DP-compatibility check."""

import pytest
import torch
from torch import nn

from dpscope.errors import ConfigError
from dpscope.models import assert_dp_compatible, group_count, replace_batchnorm


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 48, 3),
        nn.BatchNorm2d(48),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(48, 6, 1), nn.BatchNorm2d(6, affine=False)),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 20),
        nn.BatchNorm1d(20),
        nn.Linear(20, 2),
    )


@pytest.mark.parametrize("channels,groups", [(64, 32), (48, 16), (24, 8), (20, 4), (6, 2), (7, 1), (512, 32)])
def test_group_count_is_largest_power_of_two_up_to_32_dividing_channels(channels, groups):
    assert group_count(channels) == groups


def test_replace_batchnorm_names_every_replaced_module_and_leaves_none():
    model = _bn_model()
    with pytest.raises(ConfigError, match=r"1, 3\.1, 6"):
        assert_dp_compatible(model)
    assert replace_batchnorm(model) == ["1", "3.1", "6"]
    assert_dp_compatible(model)
    assert [m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)] == [16, 2, 4]
    assert replace_batchnorm(model) == []


def test_replaced_norm_keeps_the_affine_part_and_normalises_per_example():
    model = _bn_model()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-1.0, 1.0)
    scale, shift = model[1].weight.clone(), model[1].bias.clone()
    replace_batchnorm(model)
    norm = model[1]
    assert norm.affine and torch.equal(norm.weight, scale) and torch.equal(norm.bias, shift)
    assert not model[3][1].affine
    x = torch.randn(5, 48, 6, 6)
    # independent reference: GroupNorm written out by hand, 16 groups of 3 channels
    grouped = x.reshape(5, 16, -1)
    mean, var = grouped.mean(-1, keepdim=True), grouped.var(-1, unbiased=False, keepdim=True)
    standardised = ((grouped - mean) / torch.sqrt(var + 1e-5)).reshape_as(x)
    expected = standardised * scale[:, None, None] + shift[:, None, None]
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_replaced_model_trains_forward_on_batches_of_one():
    model = _bn_model()
    replace_batchnorm(model)
    assert model.train()(torch.randn(1, 3, 6, 6)).shape == (1, 2)


def test_model_that_is_itself_batchnorm_is_refused():
    with pytest.raises(ConfigError, match="itself is a BatchNorm"):
        replace_batchnorm(nn.BatchNorm2d(8))
    with pytest.raises(ConfigError, match="<root>"):
        assert_dp_compatible(nn.BatchNorm2d(8))
