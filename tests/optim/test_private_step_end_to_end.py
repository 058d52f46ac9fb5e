"""The privacy path end to end: plan -> Poisson sampler -> physical chunks -> clipping -> DPOptimizer.

After the planned steps, the ledger holds exactly the planned event, so the run spent exactly the
planned epsilon; a resumed run continues the same batches and noise.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpscope import clipping, privacy
from dpscope.data.poisson import PoissonSampler, physical_chunks
from dpscope.optim import make_dp_optimizer

N = 40
PLAN = privacy.PrivacyPlan.for_noise(dataset_size=N, expected_batch_size=2, epochs=2, noise_multiplier=1.0,
                                     delta=1e-3, max_grad_norm=1.0)


def _setup(seed: int = 0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    plan = PLAN
    sampler = PoissonSampler(N, plan.sample_rate, seed=seed)
    plan.check_sampler(sampler)
    opt = make_dp_optimizer(dict(model.named_parameters()), plan, kind="sgd", lr=0.1, momentum=0.9, seed=seed)
    return model, plan, sampler, opt


def _epoch(model, plan, sampler, opt, data, stop_after=None):
    inputs, targets = data
    engine = clipping.ClippingEngine(model, "auto")
    loss_fn = lambda out, y: nn.functional.cross_entropy(out, y, reduction="none")  # noqa: E731
    sizes = []
    for indices in sampler.epoch_batches():
        opt.zero_grad()
        for chunk in physical_chunks(indices, 3):
            engine.clipped_grad_sum(loss_fn, inputs[chunk], targets[chunk], plan.clip_rule(), accumulate=True)
        opt.step()
        sizes.append(len(indices))
        if stop_after is not None and len(sizes) == stop_after:
            break
    return sizes


@pytest.mark.slow
def test_planned_run_spends_exactly_the_planned_epsilon_and_resumes_identically():
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(N, 5, generator=generator), torch.randint(0, 3, (N,), generator=generator))
    model, plan, sampler, opt = _setup()
    sizes = _epoch(model, plan, sampler, opt, data) + _epoch(model, plan, sampler, opt, data)
    assert len(sizes) == plan.steps == 40 and 0 in sizes  # an empty batch was a real, noised step
    assert opt.ledger.dp_event() == plan.planned_event()
    assert opt.ledger.epsilon(plan.delta) == plan.epsilon
    expected = [p.detach().clone() for p in model.parameters()]

    model2, plan2, sampler2, opt2 = _setup()
    _epoch(model2, plan2, sampler2, opt2, data, stop_after=13)  # stopped mid-epoch...
    _epoch(model2, plan2, sampler2, opt2, data, stop_after=4)  # ...resumed in-process, stopped again
    checkpoint = (model2.state_dict(), sampler2.state_dict(), opt2.state_dict())
    model3, plan3, sampler3, opt3 = _setup(seed=123)
    model3.load_state_dict(checkpoint[0])
    sampler3.load_state_dict(checkpoint[1])
    opt3.load_state_dict(checkpoint[2])
    _epoch(model3, plan3, sampler3, opt3, data)  # the rest of epoch 1
    _epoch(model3, plan3, sampler3, opt3, data)  # epoch 2
    for got, want in zip(model3.parameters(), expected):
        assert torch.equal(got.detach(), want)
    assert opt3.ledger.steps == 40
