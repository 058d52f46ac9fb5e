"""Privacy accounting for DP-SGD through Google's `dp_accounting`: no epsilon arithmetic here.

A private run is a sequence of segments; each segment repeats one step `steps` times, and a step
is the Poisson-subsampled Gaussian mechanism `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`
(each example joins the batch with probability q; the clipped sum gets N(0, (sigma C)^2) noise).
The events compose under the add-or-remove-one neighbouring relation, which is the relation that
Poisson sampling with sensitivity C analyses. This module only builds those events and asks a
`dp_accounting` accountant for epsilon or delta.

Accountants (`Accountant`):

- ``"pld"`` (default): privacy loss distributions, tight up to discretisation. The discretisation is
  pessimistic, so a coarser grid only ever over-reports epsilon. `PLD_VALUE_DISCRETIZATION_INTERVAL`
  = 1e-3 is 3-10x faster than dp_accounting's 1e-4 and over-reports by at most 0.4 % on the
  settings we measured (q 0.001-1, sigma 0.5-20, 50-100k steps, delta 1e-5; e.g. q=0.01,
  sigma=0.8, 10k steps: 10.056 vs 10.054 in 0.09 s vs 0.85 s); 3e-3 over-reported up to 1.5 %.
  Its cost grows as sigma falls below ~0.3 (epsilon in the hundreds): q=0.5, sigma=0.05, 1000
  steps takes ~40 s; use "rdp" for such non-private-like settings.
- ``"rdp"``: Renyi DP, fast and looser (about 10 % above PLD for typical DP-SGD runs), over
  `RDP_ORDERS`.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Literal

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from dpscope.errors import PrivacyError

Accountant = Literal["pld", "rdp"]
ACCOUNTANTS: tuple[str, ...] = ("pld", "rdp")

PLD_VALUE_DISCRETIZATION_INTERVAL = 1e-3
# dp_accounting's default orders (1.1-10.9 by 0.1, 11-63, 128-1024) plus orders between 64 and 128
# and above 1024: large orders give the best bound for small epsilon over many steps, small
# orders for large epsilon.
RDP_ORDERS: tuple[float, ...] = tuple(
    sorted(set(rdp_privacy_accountant.DEFAULT_RDP_ORDERS) | {1.05, 72, 80, 96, 112, 192, 384, 2048})
)

Segment = tuple[float, float, int]  # (sample_rate, noise_multiplier, steps)


def dp_sgd_event(segments: Iterable[Segment]) -> dp_accounting.DpEvent:
    """The DpEvent of DP-SGD segments run one after the other (empty -> NoOpDpEvent)."""
    events = []
    for sample_rate, noise_multiplier, steps in segments:
        _check_step(sample_rate, noise_multiplier, steps)
        if steps == 0:
            continue
        step = dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
        events.append(dp_accounting.SelfComposedDpEvent(step, steps))
    if not events:
        return dp_accounting.NoOpDpEvent()
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(events)


def make_accountant(accountant: Accountant = "pld") -> dp_accounting.PrivacyAccountant:
    """A fresh dp_accounting accountant of the named kind, with dpscope's settings."""
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if accountant == "pld":
        return pld_privacy_accountant.PLDAccountant(
            relation, value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL
        )
    if accountant == "rdp":
        return rdp_privacy_accountant.RdpAccountant(list(RDP_ORDERS), relation)
    raise PrivacyError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


def epsilon_for_event(event: dp_accounting.DpEvent, delta: float, accountant: Accountant = "pld") -> float:
    """Epsilon of `event` at `delta` (inf when some step had no noise)."""
    check_delta(delta)
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0.0
    acc = make_accountant(accountant)
    acc.compose(event)
    return float(max(0.0, acc.get_epsilon(delta)))


def epsilon_for_segments(segments: Iterable[Segment], delta: float,
                         accountant: Accountant = "pld") -> float:
    """Epsilon of DP-SGD segments: `epsilon_for_event(dp_sgd_event(segments), ...)`, faster.

    A run asks for its epsilon every epoch; building the one-step privacy loss distribution is
    what costs (~0.1 s), composing it is cheap. So for "pld" the one-step PLD of each (q, sigma)
    is built once and composed the way dp_accounting's PLDAccountant composes it (identity, then
    each segment's self-composition), which gives the accountant's answer exactly.
    """
    segments = list(segments)
    if accountant != "pld":
        return epsilon_for_event(dp_sgd_event(segments), delta, accountant)
    check_delta(delta)
    for segment in segments:
        _check_step(*segment)
    segments = [(float(q), float(sigma), int(steps)) for q, sigma, steps in segments if steps > 0]
    if not segments:
        return 0.0
    if any(sigma == 0 for _, sigma, _ in segments):
        return math.inf  # a noiseless release, as the accountant says
    pld = privacy_loss_distribution.identity(
        value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL)
    for sample_rate, noise_multiplier, steps in segments:
        pld = pld.compose(_one_step_pld(sample_rate, noise_multiplier).self_compose(steps))
    return float(max(0.0, pld.get_epsilon_for_delta(delta)))


@functools.lru_cache(maxsize=64)
def _one_step_pld(sample_rate: float, noise_multiplier: float
                  ) -> privacy_loss_distribution.PrivacyLossDistribution:
    """The PLD of one Poisson-subsampled Gaussian step, as PLDAccountant builds it."""
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        value_discretization_interval=PLD_VALUE_DISCRETIZATION_INTERVAL,
        sampling_prob=sample_rate,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)


def delta_for_event(event: dp_accounting.DpEvent, epsilon: float, accountant: Accountant = "pld") -> float:
    """Smallest delta at which `event` is `epsilon`-DP according to the accountant."""
    if not epsilon >= 0:
        raise PrivacyError(f"epsilon must be >= 0, got {epsilon}")
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0.0
    acc = make_accountant(accountant)
    acc.compose(event)
    return float(min(1.0, max(0.0, acc.get_delta(epsilon))))


def epsilon_spent(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: Accountant = "pld"
) -> float:
    """Epsilon after `steps` DP-SGD steps at Poisson rate `sample_rate` and `noise_multiplier`.

    0 for steps == 0; inf for noise_multiplier == 0 (the sum is released without noise).
    """
    return epsilon_for_segments([(sample_rate, noise_multiplier, steps)], delta, accountant)


def delta_spent(
    noise_multiplier: float, sample_rate: float, steps: int, epsilon: float, accountant: Accountant = "pld"
) -> float:
    """Delta after `steps` DP-SGD steps at `epsilon` (1.0 when noise_multiplier == 0)."""
    return delta_for_event(dp_sgd_event([(sample_rate, noise_multiplier, steps)]), epsilon, accountant)


def check_delta(delta: float, dataset_size: int | None = None) -> None:
    """Refuse a delta that gives no meaningful guarantee."""
    if not 0 < delta < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta}; use e.g. 1e-5 or 1/(10 N)")
    if dataset_size is not None and delta >= 1 / dataset_size:
        raise PrivacyError(
            f"delta={delta:g} >= 1/N = 1/{dataset_size}: such a run may leak a whole example; "
            f"choose delta < {1 / dataset_size:.3g}, e.g. {1 / (10 * dataset_size):.3g}"
        )


def _check_step(sample_rate: float, noise_multiplier: float, steps: int) -> None:
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample_rate must be in (0, 1], got {sample_rate}; use batch_size / N")
    if not noise_multiplier >= 0 or math.isinf(noise_multiplier):
        raise PrivacyError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
    if int(steps) != steps or steps < 0:
        raise PrivacyError(f"steps must be a whole number >= 0, got {steps}")
