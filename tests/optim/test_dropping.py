"""Random gradient dropping: data-independent, reproducible masks; dropped coordinates stay put."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from dpscope.errors import ConfigError
from dpscope.optim import DPOptimizer, random_drop_rule


def test_masks_depend_only_on_seed_and_step_and_keep_the_fraction():
    shapes = {"w": torch.Size([100, 50]), "b": torch.Size([50])}
    rule, same = random_drop_rule(shapes, 0.3, seed=1), random_drop_rule(shapes, 0.3, seed=1)
    assert all(torch.equal(rule(7)[k], same(7)[k]) for k in shapes)
    assert not torch.equal(rule(7)["w"], rule(8)["w"])
    kept = int(rule(0)["w"].sum())
    assert stats.binomtest(kept, 5000, 0.3).pvalue > 1e-3


def test_dropped_coordinates_get_neither_gradient_nor_noise():
    param = torch.nn.Parameter(torch.zeros(1000))
    rule = random_drop_rule({"w": param.shape}, 0.25, seed=0)
    opt = DPOptimizer(torch.optim.SGD([param], lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0,
                      sample_rate=0.1, dataset_size=100, param_names={"w": param}, drop_rule=rule)
    param.grad = torch.ones(1000)
    opt.step()
    keep = rule(0)["w"]
    assert (param.detach()[~keep] == 0).all() and (param.detach()[keep] != 0).all()


def test_keep_fraction_outside_unit_interval_is_refused():
    with pytest.raises(ConfigError, match="keep_fraction"):
        random_drop_rule({"w": torch.Size([3])}, 0.0)
