"""Accounting equals direct dp_accounting computations, and matches published/independent values."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from dpscope import privacy
from dpscope.errors import PrivacyError

ABADI_Q = 256 / 60000  # MNIST, expected batch 256 (Abadi et al. 2016; Opacus/TF Privacy tutorials)
ABADI_STEPS = round(60 / ABADI_Q)  # 60 epochs


def _direct(event, delta, accountant):
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "pld":
        acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-3)
    else:
        acc = rdp_privacy_accountant.RdpAccountant(list(privacy.RDP_ORDERS), relation)
    acc.compose(event)
    return acc.get_epsilon(delta)


def _dpsgd(q, sigma, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)


@settings(max_examples=6, deadline=None)
@given(q=st.floats(1e-3, 1.0), sigma=st.floats(0.5, 5.0), steps=st.integers(1, 2000),
       delta=st.sampled_from([1e-3, 1e-5, 1e-7]), accountant=st.sampled_from(["pld", "rdp"]))
def test_epsilon_spent_equals_direct_dp_accounting(q, sigma, steps, delta, accountant):
    ours = privacy.epsilon_spent(sigma, q, steps, delta, accountant)
    assert ours == pytest.approx(_direct(_dpsgd(q, sigma, steps), delta, accountant), rel=1e-12)


def test_rdp_matches_abadi_setting_and_opacus():
    # dp_accounting 0.6 with the improved RDP->DP conversion (Balle et al. 2020) gives 2.5966;
    # the classic conversion gave the ~2.9-3.0 of older tutorials.
    eps = privacy.epsilon_spent(1.1, ABADI_Q, ABADI_STEPS, 1e-5, "rdp")
    assert eps == pytest.approx(2.59656, abs=1e-4)
    opacus_accountants = pytest.importorskip("opacus.accountants")
    reference = opacus_accountants.RDPAccountant()
    reference.history = [(1.1, ABADI_Q, ABADI_STEPS)]
    assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=1e-6)


def test_pld_is_tighter_than_rdp_and_agrees_with_opacus_prv():
    eps = privacy.epsilon_spent(1.1, ABADI_Q, ABADI_STEPS, 1e-5, "pld")
    assert eps == pytest.approx(2.3905, abs=1e-3)
    assert eps < privacy.epsilon_spent(1.1, ABADI_Q, ABADI_STEPS, 1e-5, "rdp")
    opacus_accountants = pytest.importorskip("opacus.accountants")
    reference = opacus_accountants.PRVAccountant()  # an independent PLD-type implementation
    reference.history = [(1.1, ABADI_Q, ABADI_STEPS)]
    assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=5e-3)


def test_pld_discretisation_is_pessimistic_and_within_half_a_percent():
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-4)
    acc.compose(_dpsgd(0.01, 0.8, 3000))
    fine = acc.get_epsilon(1e-5)
    ours = privacy.epsilon_spent(0.8, 0.01, 3000, 1e-5, "pld")
    assert fine <= ours <= fine * 1.005


def test_delta_spent_equals_direct_and_inverts_epsilon():
    eps = privacy.epsilon_spent(1.0, 0.02, 500, 1e-5, "rdp")
    acc = rdp_privacy_accountant.RdpAccountant(list(privacy.RDP_ORDERS))
    acc.compose(_dpsgd(0.02, 1.0, 500))
    assert privacy.delta_spent(1.0, 0.02, 500, eps, "rdp") == pytest.approx(acc.get_delta(eps), rel=1e-12)
    assert privacy.delta_spent(1.0, 0.02, 500, eps, "pld") <= 1e-5


def test_segments_compose_like_direct_composed_event():
    segments = [(0.01, 1.0, 300), (0.02, 1.5, 200), (0.01, 0.8, 100)]
    direct = dp_accounting.ComposedDpEvent([_dpsgd(*s) for s in segments])
    assert privacy.dp_sgd_event(segments) == direct
    for accountant in ("pld", "rdp"):
        ours = privacy.epsilon_for_event(privacy.dp_sgd_event(segments), 1e-5, accountant)
        assert ours == pytest.approx(_direct(direct, 1e-5, accountant), rel=1e-12)


@settings(max_examples=5, deadline=None)
@given(segments=st.lists(st.tuples(st.floats(1e-3, 1.0), st.floats(0.5, 5.0), st.integers(0, 500)),
                         min_size=1, max_size=3),
       accountant=st.sampled_from(["pld", "rdp"]))
def test_segments_fast_path_equals_direct_dp_accounting(segments, accountant):
    """The per-epoch path (cached one-step PLDs) answers what the accountant answers, twice."""
    executed = [_dpsgd(*s) for s in segments if s[2] > 0]  # zero steps release nothing
    direct = _direct(dp_accounting.ComposedDpEvent(executed), 1e-5, accountant) if executed else 0.0
    for _ in range(2):  # the second call reuses the cached PLDs
        assert privacy.epsilon_for_segments(segments, 1e-5, accountant) == pytest.approx(
            direct, rel=1e-12)
    assert privacy.epsilon_for_segments([(0.1, 0.0, 3), *segments], 1e-5, accountant) == math.inf
    assert privacy.epsilon_for_segments([(0.1, 1.0, 0)], 1e-5, accountant) == 0.0
    with pytest.raises(PrivacyError, match="whole number"):
        privacy.epsilon_for_segments([(0.1, 1.0, 2.5)], 1e-5, accountant)


def test_zero_steps_spend_nothing_and_zero_noise_spends_everything():
    assert privacy.epsilon_spent(1.0, 0.01, 0, 1e-5) == 0.0
    assert privacy.epsilon_spent(0.0, 0.01, 10, 1e-5) == math.inf
    assert privacy.epsilon_spent(0.0, 0.01, 10, 1e-5, "rdp") == math.inf
    assert privacy.delta_spent(0.0, 0.01, 10, 5.0) == 1.0


@pytest.mark.parametrize("q,sigma,steps,delta,word", [
    (0.0, 1.0, 10, 1e-5, "sample_rate"),
    (1.5, 1.0, 10, 1e-5, "sample_rate"),
    (0.1, -1.0, 10, 1e-5, "noise_multiplier"),
    (0.1, 1.0, -1, 1e-5, "steps"),
    (0.1, 1.0, 10, 0.0, "delta"),
    (0.1, 1.0, 10, 1.0, "delta"),
])
def test_invalid_inputs_are_refused_by_name(q, sigma, steps, delta, word):
    with pytest.raises(PrivacyError, match=word):
        privacy.epsilon_spent(sigma, q, steps, delta)


def test_unknown_accountant_is_refused():
    with pytest.raises(PrivacyError, match="accountant"):
        privacy.epsilon_spent(1.0, 0.1, 10, 1e-5, "moments")
