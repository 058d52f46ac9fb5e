"""Calibration lands within 1 % below the target, never above; step budgets are exact."""

from __future__ import annotations

import pytest

from dpscope import privacy
from dpscope.errors import PrivacyError


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("target,q,steps", [(0.5, 0.01, 500), (2.0, 0.004, 2000), (8.0, 0.05, 400)])
def test_calibrated_noise_spends_within_one_percent_below_target(accountant, target, q, steps):
    sigma = privacy.noise_multiplier_for(target, 1e-5, q, steps, accountant)
    spent = privacy.epsilon_spent(sigma, q, steps, 1e-5, accountant)
    assert 0.99 * target <= spent <= target


def test_calibration_for_a_loose_target_still_within_budget():
    sigma = privacy.noise_multiplier_for(200.0, 1e-5, 0.1, 10, "rdp")
    assert privacy.epsilon_spent(sigma, 0.1, 10, 1e-5, "rdp") <= 200.0


@pytest.mark.parametrize("target,delta,word", [(0.0, 1e-5, "epsilon"), (-1.0, 1e-5, "epsilon"),
                                                (1.0, 0.0, "delta"), (1.0, 1.5, "delta")])
def test_impossible_budgets_are_refused(target, delta, word):
    with pytest.raises(PrivacyError, match=word):
        privacy.noise_multiplier_for(target, delta, 0.01, 100)


def test_unreachable_target_names_the_fix():
    with pytest.raises(PrivacyError, match="needs noise multiplier"):
        privacy.noise_multiplier_for(1e-6, 1e-10, 1.0, 100_000, "rdp")


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_max_steps_within_is_the_last_step_that_fits(accountant):
    done = [(0.02, 1.2, 50)]
    k = privacy.max_steps_within(2.0, 1e-5, 0.05, 1.0, done=done, accountant=accountant)
    assert k > 0
    assert privacy.max_steps_within(2.0, 1e-5, 0.05, 1.0, done=done, accountant=accountant, guess=k + 7) == k

    def eps(extra):
        return privacy.epsilon_for_event(privacy.dp_sgd_event(done + [(0.05, 1.0, extra)]), 1e-5, accountant)

    assert eps(k) <= 2.0 < eps(k + 1)


def test_spent_budget_affords_no_steps():
    assert privacy.max_steps_within(0.5, 1e-5, 0.1, 0.7, done=[(0.1, 0.7, 1000)], accountant="rdp") == 0


def test_no_steps_need_no_noise():
    assert privacy.noise_multiplier_for(1.0, 1e-5, 0.01, 0) == 0.0
