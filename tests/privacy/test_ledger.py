"""The ledger records what ran and composes it exactly like dp_accounting would."""

from __future__ import annotations

import json

import dp_accounting
import pytest
from dp_accounting.rdp import rdp_privacy_accountant

from dpscope import privacy
from dpscope.errors import PrivacyError


def _run(ledger, q, sigma, steps):
    for _ in range(steps):
        ledger.record_step(q, sigma)


def test_consecutive_equal_steps_merge_into_segments():
    ledger = privacy.PrivacyLedger()
    _run(ledger, 0.01, 1.0, 30)
    _run(ledger, 0.02, 1.0, 20)
    _run(ledger, 0.02, 1.0, 5)
    _run(ledger, 0.01, 1.0, 1)
    assert ledger.segments == [(0.01, 1.0, 30), (0.02, 1.0, 25), (0.01, 1.0, 1)]
    assert ledger.steps == 56


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_mid_run_change_equals_directly_composed_events(accountant):
    ledger = privacy.PrivacyLedger()
    _run(ledger, 0.01, 1.1, 400)
    _run(ledger, 0.03, 1.1, 100)  # sample rate changes
    _run(ledger, 0.03, 0.9, 200)  # noise changes
    direct = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
        for q, s, n in [(0.01, 1.1, 400), (0.03, 1.1, 100), (0.03, 0.9, 200)]
    ])
    acc = privacy.make_accountant(accountant)
    acc.compose(direct)
    assert ledger.epsilon(1e-5, accountant) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    # and it is not the same as pretending the first setting ran throughout
    unchanged = privacy.epsilon_spent(1.1, 0.01, 700, 1e-5, accountant)
    assert ledger.epsilon(1e-5, accountant) != pytest.approx(unchanged)


def test_ledger_composition_equals_rdp_sum_of_segments():
    ledger = privacy.PrivacyLedger()
    _run(ledger, 0.05, 2.0, 10)
    _run(ledger, 0.1, 1.0, 10)
    acc = rdp_privacy_accountant.RdpAccountant(list(privacy.RDP_ORDERS))
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(2.0)), 10)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 10)
    assert ledger.epsilon(1e-6, "rdp") == pytest.approx(acc.get_epsilon(1e-6), rel=1e-12)


def test_json_round_trip_preserves_segments_and_epsilon():
    ledger = privacy.PrivacyLedger()
    _run(ledger, 256 / 60000, 1.1, 7)
    _run(ledger, 1 / 3, 0.7, 3)
    restored = privacy.PrivacyLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert restored == ledger
    assert restored.dp_event() == ledger.dp_event()


def test_empty_ledger_spent_nothing():
    ledger = privacy.PrivacyLedger()
    assert ledger.epsilon(1e-5) == 0.0
    assert isinstance(ledger.dp_event(), dp_accounting.NoOpDpEvent)


def test_foreign_json_is_refused():
    with pytest.raises(PrivacyError, match="not a dpscope privacy ledger"):
        privacy.PrivacyLedger.from_dict({"segments": []})


def test_invalid_step_is_refused():
    with pytest.raises(PrivacyError, match="sample_rate"):
        privacy.PrivacyLedger().record_step(0.0, 1.0)
