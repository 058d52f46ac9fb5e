"""The privacy plan calibrates, describes itself, and refuses setups that break the guarantee."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dpscope import privacy
from dpscope.errors import PrivacyError
from dpscope.privacy import PrivacyPlan

BASE = dict(dataset_size=5000, expected_batch_size=100, epochs=3, max_grad_norm=1.0)


def test_target_plan_calibrates_sigma_within_budget():
    plan = PrivacyPlan.for_target(**BASE, target_epsilon=2.0, delta=1e-5, accountant="rdp")
    assert plan.sample_rate == pytest.approx(0.02)
    assert plan.steps == 150 and plan.steps_per_epoch == 50 and plan.epochs == 3
    assert plan.expected_batch_size == pytest.approx(100)
    spent = privacy.epsilon_spent(plan.noise_multiplier, 0.02, 150, 1e-5, "rdp")
    assert plan.epsilon == spent and 1.98 <= spent <= 2.0


def test_noise_plan_computes_epsilon_and_default_delta():
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0)
    assert plan.delta == privacy.default_delta(5000) == 1e-5
    assert plan.epsilon == privacy.epsilon_spent(1.0, 0.02, 150, 1e-5, "pld")
    assert plan.budget_epsilon == plan.epsilon and plan.noise_std == 1.0
    assert privacy.default_delta(1_000_000) == pytest.approx(1e-7)


def test_describe_states_guarantee_and_assumptions():
    text = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, secure_rng=True).describe()
    for word in ("-DP", "poisson", "q=0.02", "C=1", "sigma=1", "150 steps", "os.urandom", "PLD"):
        assert word in text


def test_non_poisson_sampler_is_refused_unless_acknowledged_then_flagged():
    with pytest.raises(PrivacyError, match="not Poisson"):
        PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, sampling="shuffle")
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, sampling="shuffle",
                                 non_poisson_acknowledged=True)
    assert plan.describe().startswith("WARNING") and "ASSUMES Poisson" in plan.describe()


@pytest.mark.parametrize("changes,word", [
    (dict(dataset_size=5), "too few examples"),
    (dict(delta=1e-3), "1/N"),
    (dict(delta=0.0), "delta must be in"),
    (dict(target_epsilon=0.0), "epsilon must be"),
    (dict(target_epsilon=-2.0), "epsilon must be"),
    (dict(expected_batch_size=6000), "batch size"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(accountant="moments"), "accountant"),
    (dict(clip_kind="per_layer"), "per_layer_max_grad_norms"),
])
def test_each_refused_setup_names_the_problem(changes, word):
    with pytest.raises(PrivacyError, match=word):
        PrivacyPlan.for_target(**{**BASE, "target_epsilon": 1.0, "delta": 1e-5, **changes})


def test_direct_construction_with_batch_above_n_is_refused():
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0)
    with pytest.raises(PrivacyError, match="exceeds the dataset"):
        dataclasses.replace(plan, sample_rate=1.5)


def test_per_layer_split_keeps_total_sensitivity_c():
    split = privacy.equal_per_layer_split(2.0, ["conv1", "conv2", "fc", "head"])
    assert all(c == 1.0 for c in split.values())
    plan = PrivacyPlan.for_noise(**{**BASE, "max_grad_norm": 2.0}, noise_multiplier=1.0,
                                 clip_kind="per_layer", per_layer_max_grad_norms=tuple(split.items()))
    assert "4 layers" in plan.describe()
    with pytest.raises(PrivacyError, match="total sensitivity"):
        dataclasses.replace(plan, per_layer_max_grad_norms=(("a", 2.0), ("b", 2.0)))


def test_json_round_trip():
    split = tuple(privacy.equal_per_layer_split(1.0, ["a", "b"]).items())
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.3, clip_kind="per_layer",
                                 per_layer_max_grad_norms=split)
    assert PrivacyPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_steps_left_stops_the_run_at_the_budget():
    plan = PrivacyPlan.for_target(**BASE, target_epsilon=1.0, delta=1e-5, accountant="rdp")
    ledger = privacy.PrivacyLedger()
    left = plan.steps_left(ledger)
    assert left >= plan.steps
    ledger.record_steps(plan.sample_rate, plan.noise_multiplier, left)
    assert ledger.epsilon(plan.delta, "rdp") <= 1.0
    assert plan.steps_left(ledger) == 0
    assert "stopped at the privacy budget" in plan.budget_stop_message(ledger)


def test_check_sampler_accepts_only_the_planned_poisson_sampler():
    from dpscope.data.poisson import PoissonSampler, ShuffledBatchSampler

    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0)
    plan.check_sampler(PoissonSampler(plan.dataset_size, plan.sample_rate))
    with pytest.raises(PrivacyError, match="q=0.04"):
        plan.check_sampler(PoissonSampler(plan.dataset_size, 0.04))
    with pytest.raises(PrivacyError, match="assumes Poisson"):
        plan.check_sampler(ShuffledBatchSampler(plan.dataset_size, 100))
    acknowledged = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, sampling="shuffle",
                                         non_poisson_acknowledged=True)
    acknowledged.check_sampler(ShuffledBatchSampler(plan.dataset_size, 100))


@pytest.mark.parametrize("kind", ["flat", "per_layer", "automatic"])
def test_clip_rule_has_the_plans_sensitivity(kind):
    split = None
    if kind == "per_layer":
        split = tuple(privacy.equal_per_layer_split(1.0, ["a", "b", "c"]).items())
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, clip_kind=kind, per_layer_max_grad_norms=split)
    assert plan.clip_rule().sensitivity == pytest.approx(plan.max_grad_norm)


def test_automatic_plan_carries_its_stability_to_the_rule_the_statement_and_json():
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0, clip_kind="automatic", auto_clip_stability=0.5)
    assert plan.clip_rule().stability == 0.5 and plan.clip_rule().sensitivity == 1.0
    assert "(||g|| + 0.5)" in plan.describe()
    assert PrivacyPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    older = {k: v for k, v in plan.to_dict().items() if k != "auto_clip_stability"}  # before the field
    assert PrivacyPlan.from_dict(older).clip_rule().stability == 0.01
    with pytest.raises(PrivacyError, match="auto_clip_stability"):
        dataclasses.replace(plan, auto_clip_stability=0.0)


def test_planned_event_gives_the_planned_epsilon():
    plan = PrivacyPlan.for_noise(**BASE, noise_multiplier=1.0)
    assert privacy.epsilon_for_event(plan.planned_event(), plan.delta) == plan.epsilon


def test_epsilon_is_computed_never_trusted():
    plan = PrivacyPlan.for_target(**BASE, target_epsilon=2.0, delta=1e-5)
    with pytest.raises(PrivacyError, match="for_target"):
        dataclasses.replace(plan, noise_multiplier=plan.noise_multiplier * 0.8)
    tampered = {**plan.to_dict(), "epsilon": 0.001}
    assert PrivacyPlan.from_dict(tampered).epsilon == plan.epsilon
