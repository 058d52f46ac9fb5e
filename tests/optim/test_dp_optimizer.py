"""The DP optimizer adds N(0, (sigma C)^2) once per step, divides by q N, and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from dpscope import privacy
from dpscope.callbacks import StepReport
from dpscope.errors import ConfigError
from dpscope.optim import DPOptimizer, make_dp_optimizer

SIGMA, C = 1.3, 0.7


def _noise_of_one_step(secure: bool = False, seed: int = 0, size: int = 20_000) -> torch.Tensor:
    """With a zero sum, q N = 1 and SGD lr 1, the update is exactly minus the noise."""
    param = torch.nn.Parameter(torch.zeros(size, dtype=torch.float64))
    opt = DPOptimizer(torch.optim.SGD([param], lr=1.0), noise_multiplier=SIGMA, max_grad_norm=C,
                      sample_rate=0.01, dataset_size=100, seed=seed, secure_rng=secure)
    param.grad = torch.zeros_like(param)
    opt.step()
    return -param.detach().clone()


@pytest.mark.parametrize("secure", [False, True])
def test_noise_std_is_sigma_times_c_by_ks_test(secure):
    noise = _noise_of_one_step(secure=secure).numpy()
    # secure draws are fresh each run: 1e-6 keeps a false alarm to one run in a million
    # a frozen distribution's cdf: scipy 1.18 no longer passes `args` on to "norm" (TypeError)
    assert stats.kstest(noise, stats.norm(0, SIGMA * C).cdf).pvalue > 1e-6
    for wrong in (2 / 3, 3 / 2):
        assert stats.kstest(noise, stats.norm(0, wrong * SIGMA * C).cdf).pvalue < 1e-12


def test_seeded_noise_is_reproducible_and_secure_noise_is_not():
    assert torch.equal(_noise_of_one_step(seed=5), _noise_of_one_step(seed=5))
    assert not torch.equal(_noise_of_one_step(seed=5), _noise_of_one_step(seed=6))
    assert not torch.equal(_noise_of_one_step(secure=True, seed=5), _noise_of_one_step(secure=True, seed=5))


def test_divides_by_expected_batch_size_not_the_realised_one():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = DPOptimizer(torch.optim.SGD([param], lr=0.5), noise_multiplier=0.0, max_grad_norm=1.0,
                      sample_rate=0.04, dataset_size=250)  # q N = 10
    realised = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # 3 examples, not 10
    param.grad = realised.sum(0)
    opt.step()
    assert torch.allclose(param.detach(), -0.5 * realised.sum(0) / 10)


def test_missing_grad_is_a_zero_sum_that_still_gets_noise_and_frozen_params_are_skipped():
    used, unused = torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(5))
    frozen = torch.nn.Parameter(torch.zeros(5), requires_grad=False)
    opt = DPOptimizer(torch.optim.SGD([used, unused, frozen], lr=1.0), noise_multiplier=1.0,
                      max_grad_norm=1.0, sample_rate=0.1, dataset_size=100)
    used.grad = torch.ones(5)
    opt.step()
    assert (unused.detach() != 0).all()  # noised although no example touched it
    assert (frozen.detach() == 0).all()
    report = StepReport(step=1, epoch=0, batch_size=0, loss=float("nan"))
    opt.fill_report(report)
    assert report.noise_std == pytest.approx(1.0) and report.max_grad_norm == 1.0
    assert report.clipped_sum_norms == {"param0": pytest.approx(5**0.5), "param1": 0.0}


def test_every_step_is_recorded_in_the_ledger_with_mid_run_changes():
    param = torch.nn.Parameter(torch.zeros(2))
    opt = DPOptimizer(torch.optim.SGD([param], lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                      sample_rate=0.01, dataset_size=1000)
    for step in range(5):
        if step == 3:
            opt.noise_multiplier = 2.0
        param.grad = None
        opt.step()
    assert opt.ledger.segments == [(0.01, 1.0, 3), (0.01, 2.0, 2)]


def _model_and_optimizer(kind: str, seed: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    plan = privacy.PrivacyPlan.for_noise(dataset_size=200, expected_batch_size=8, epochs=1,
                                         noise_multiplier=1.0, max_grad_norm=1.0)
    opt = make_dp_optimizer(dict(model.named_parameters()), plan, kind=kind, lr=0.1, momentum=0.9, seed=seed)
    return model, opt


def _train(model, opt, steps):
    for step in range(steps):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.1 * (step + 1))  # stands in for a clipped sum
        opt.step()


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_resume_from_state_dict_reproduces_the_run_exactly(kind):
    model, opt = _model_and_optimizer(kind, seed=3)
    _train(model, opt, 6)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = _model_and_optimizer(kind, seed=3)
    _train(model, opt, 3)
    checkpoint = ({k: v.clone() for k, v in model.state_dict().items()}, opt.state_dict())
    resumed_model, resumed_opt = _model_and_optimizer(kind, seed=99)
    resumed_model.load_state_dict(checkpoint[0])
    resumed_opt.load_state_dict(checkpoint[1])
    for step in range(3, 6):
        for p in resumed_model.parameters():
            p.grad = torch.full_like(p, 0.1 * (step + 1))
        resumed_opt.step()
    for got, want in zip(resumed_model.parameters(), expected):
        assert torch.equal(got.detach(), want)
    assert resumed_opt.ledger.steps == 6


def test_lr_scheduler_drives_the_wrapped_optimizer():
    model, opt = _model_and_optimizer("sgd", seed=0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, 1)
    scheduler.step()
    assert opt.original_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_lr_scheduler_still_drives_the_wrapped_optimizer_after_a_resume(kind):
    model, opt = _model_and_optimizer(kind, seed=0)
    _train(model, opt, 2)
    resumed_model, resumed = _model_and_optimizer(kind, seed=0)
    resumed.load_state_dict(opt.state_dict())
    scheduler = torch.optim.lr_scheduler.StepLR(resumed, step_size=1, gamma=0.5)
    _train(resumed_model, resumed, 1)
    scheduler.step()
    assert resumed.original_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert resumed.state is resumed.original_optimizer.state


def test_unknown_optimizer_kind_and_closure_are_refused():
    plan = privacy.PrivacyPlan.for_noise(dataset_size=200, expected_batch_size=8, epochs=1,
                                         noise_multiplier=1.0, max_grad_norm=1.0)
    with pytest.raises(ConfigError, match="optimizer"):
        make_dp_optimizer([torch.nn.Parameter(torch.zeros(1))], plan, kind="lamb", lr=0.1)
    _, opt = _model_and_optimizer("sgd", seed=0)
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_a_step_without_fresh_clipped_sums_is_refused():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = DPOptimizer(torch.optim.SGD([param], lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                      sample_rate=0.1, dataset_size=100)
    param.grad = torch.ones(3)
    opt.step()
    with pytest.raises(RuntimeError, match="zero_grad"):
        opt.step()  # .grad is still the noised update of the last step
    assert opt.ledger.steps == 1
    opt.zero_grad()
    opt.step()
    assert opt.ledger.steps == 2
