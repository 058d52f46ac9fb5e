"""Calibration: the noise a target budget needs, and the steps a budget still affords.

Both search over `dp_accounting` answers (calls to `epsilon_spent`); neither computes epsilon
itself. Guarantee: the returned noise multiplier (or step count) is one whose epsilon, as the
accountant reports it, is <= the target; the noise multiplier is the smallest such found to
within `CALIBRATION_RELATIVE_TOLERANCE` of the target epsilon (its epsilon lies in
[(1 - tol) * target, target]).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

from dpscope.errors import PrivacyError
from dpscope.privacy.accounting import (
    Accountant,
    Segment,
    _check_step,
    check_delta,
    dp_sgd_event,
    epsilon_for_event,
    epsilon_spent,
)

CALIBRATION_RELATIVE_TOLERANCE = 0.005  # 0.5 %: inside the promised 1 % with room for PLD steps
MIN_NOISE_MULTIPLIER = 1e-2  # below this the accountants' numerics are unreliable
MAX_NOISE_MULTIPLIER = 1e4  # beyond this no model learns; a target needing more is unreachable
_MAX_SEARCHES = 100


def noise_multiplier_for(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: Accountant = "pld"
) -> float:
    """The smallest noise multiplier (to 0.5 %) whose run spends at most `target_epsilon`.

    Raises PrivacyError for an impossible budget: epsilon <= 0, delta outside (0, 1), or a target
    that even `MAX_NOISE_MULTIPLIER` cannot meet.
    """
    _check_target(target_epsilon)
    check_delta(delta)
    _check_step(sample_rate, 1.0, steps)
    if steps == 0:
        return 0.0  # nothing is released, so no noise is needed

    def eps(sigma: float) -> float:
        return epsilon_spent(sigma, sample_rate, steps, delta, accountant)

    low, high = 0.5, 1.0  # eps(low) > target >= eps(high) once bracketed
    eps_high = eps(high)
    eps_low = math.inf  # not computed yet
    while eps_high > target_epsilon:
        low, eps_low, high = high, eps_high, high * 2
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyError(
                f"epsilon={target_epsilon:g} at delta={delta:g} over {steps} steps at sample rate "
                f"{sample_rate:g} needs noise multiplier > {MAX_NOISE_MULTIPLIER:g}; "
                "raise epsilon, lower the sample rate or train fewer steps"
            )
        eps_high = eps(high)
    if high == 1.0:
        eps_low = eps(low)
        while eps_low <= target_epsilon:
            high, eps_high = low, eps_low
            low /= 2
            if low < MIN_NOISE_MULTIPLIER:
                return high  # so loose a target that almost no noise is needed
            eps_low = eps(low)
    high, eps_high = _narrow(eps, target_epsilon, (low, eps_low), (high, eps_high))
    if not eps_high <= target_epsilon:  # the guarantee, checked on the value returned
        raise AssertionError(f"calibration returned sigma={high} with epsilon {eps_high} > {target_epsilon}")
    return high


def _narrow(eps: Callable[[float], float], target: float, low_end: tuple[float, float],
            high_end: tuple[float, float]) -> tuple[float, float]:
    """From a bracket of (sigma, epsilon) ends, eps(low) > target >= eps(high), the smallest
    sigma found within tolerance, with its epsilon.

    log epsilon is close to linear in log sigma, so false position there (Illinois variant, which
    keeps both ends moving) needs 2-4 accountant calls where bisection needed 6-8; it aims at
    the middle of the tolerance band and keeps every probe inside the bracket.
    """
    (low, eps_low), (high, eps_high) = low_end, high_end
    aim = math.log((1 - CALIBRATION_RELATIVE_TOLERANCE / 2) * target)
    f_low, f_high = _log(eps_low) - aim, _log(eps_high) - aim
    kept = 0  # +1: the high end moved last time, -1: the low end
    for _ in range(_MAX_SEARCHES):
        if eps_high >= (1 - CALIBRATION_RELATIVE_TOLERANCE) * target:
            break
        x_low, x_high = math.log(low), math.log(high)
        if math.isfinite(f_low) and math.isfinite(f_high) and f_low > f_high:
            x = x_high - f_high * (x_high - x_low) / (f_high - f_low)
            margin = 0.01 * (x_high - x_low)
            x = min(max(x, x_low + margin), x_high - margin)
        else:
            x = (x_low + x_high) / 2
        mid = math.exp(x)
        eps_mid = eps(mid)
        if eps_mid <= target:
            high, eps_high, f_high = mid, eps_mid, _log(eps_mid) - aim
            if kept == 1:
                f_low /= 2
            kept = 1
        else:
            low, f_low = mid, _log(eps_mid) - aim
            if kept == -1:
                f_high /= 2
            kept = -1
        if high - low <= 1e-9 * high:
            break  # epsilon jumps across the target (discretisation); `high` is still within budget
    return high, eps_high


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def max_steps_within(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    *,
    done: Iterable[Segment] = (),
    accountant: Accountant = "pld",
    guess: int = 1,
    max_steps: int = 10**7,
) -> int:
    """How many more steps at (sample_rate, noise_multiplier) keep the whole run within budget.

    `done` holds the segments already run (a ledger's `segments`); 0 when the budget is spent.
    Exact to the step: the answer k fits and k + 1 does not. Each probe is one accountant call
    (PLD: ~0.05-0.4 s), about 2 log2(k / guess) + 2 of them with a good `guess`, so call it once
    (at the start or on resume) and count down, not every step.
    """
    _check_target(target_epsilon)
    done = list(done)

    def fits(extra: int) -> bool:
        event = dp_sgd_event(done + [(sample_rate, noise_multiplier, extra)])
        return epsilon_for_event(event, delta, accountant) <= target_epsilon

    guess = min(max(1, guess), max_steps)
    if not fits(guess):
        return _bisect(fits, 0, guess) if fits(0) else 0
    low, increment = guess, max(1, guess // 32)
    while low < max_steps:
        high = min(low + increment, max_steps)
        if not fits(high):
            return _bisect(fits, low, high)
        low, increment = high, increment * 2
    return max_steps


def _bisect(fits: Callable[[int], bool], low: int, high: int) -> int:
    """fits(low) is True, fits(high) False: the last k that fits."""
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return low


def _check_target(target_epsilon: float) -> None:
    if not target_epsilon > 0 or math.isinf(target_epsilon):
        raise PrivacyError(f"target epsilon must be finite and > 0, got {target_epsilon}; e.g. 1, 3 or 8")
