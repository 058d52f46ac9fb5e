"""One example, however enormous its gradient, moves the noiseless DP update by at most C / (q N).

This is the sensitivity the Gaussian noise is calibrated to, checked end to end: clipping engine
(every strategy, every clip rule) -> DPOptimizer with sigma = 0 -> SGD.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpscope import clipping, privacy
from dpscope.optim import DPOptimizer

C, SAMPLE_RATE, DATASET_SIZE = 0.5, 0.04, 100  # q N = 4
BOUND = C / (SAMPLE_RATE * DATASET_SIZE)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4)).double()


def _clip_rules(model: nn.Module):
    names = [name for name, _ in model.named_parameters()]
    return {
        "flat": clipping.FlatClip(C),
        "per_layer": clipping.PerLayerClip(privacy.equal_per_layer_split(C, names)),
        "automatic": clipping.AutoClip(C),
        "automatic_large_stability": clipping.AutoClip(C, stability=1.0),
    }


def _loss(outputs, targets):
    return nn.functional.cross_entropy(outputs, targets, reduction="none")


def _noiseless_update(strategy, rule_name, inputs, targets) -> torch.Tensor:
    model = _model()
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0,
                      max_grad_norm=C, sample_rate=SAMPLE_RATE, dataset_size=DATASET_SIZE)
    rule = _clip_rules(model)[rule_name]
    assert rule.sensitivity == pytest.approx(C)
    clipping.ClippingEngine(model, strategy).clipped_grad_sum(_loss, inputs, targets, rule)
    opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before


@pytest.mark.parametrize("rule_name", ["flat", "per_layer", "automatic", "automatic_large_stability"])
@pytest.mark.parametrize("strategy", clipping.STRATEGIES)
def test_planted_enormous_example_moves_update_at_most_c_over_qn(strategy, rule_name):
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(5, 1, 6, 6, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3, 0])
    planted = 1e6 * torch.randn(1, 1, 6, 6, generator=generator, dtype=torch.float64)
    with_planted = _noiseless_update(strategy, rule_name, torch.cat([inputs, planted]),
                                     torch.cat([targets, targets[:1]]))
    without = _noiseless_update(strategy, rule_name, inputs, targets)
    alone = _noiseless_update(strategy, rule_name, planted, targets[:1])
    assert torch.linalg.vector_norm(with_planted - without) <= BOUND * (1 + 1e-9)
    assert torch.linalg.vector_norm(alone) <= BOUND * (1 + 1e-9)
    assert torch.linalg.vector_norm(alone) > 0.5 * BOUND  # the planted gradient really was clipped, not lost
