"""The privacy plan: sampler, clipping bound, noise and accountant of a run, in one object.

A reviewer reads `PrivacyPlan.describe()` in a minute and knows what is guaranteed. The plan is
frozen and validated on construction: a setup that would break the guarantee raises
`PrivacyError` with the reason and the fix.

Why the checks:

- delta < 1/N. A mechanism that publishes one random example outright is (0, 1/N)-DP, so a delta
  of 1/N or more allows leaking whole examples. `default_delta(N)` = min(1e-5, 1/(10 N)): 1e-5 is
  the customary value in the literature (comparable numbers), and 1/(10 N) keeps delta an order
  of magnitude below 1/N for datasets above 10,000 examples.
- Poisson sampling. The accountant analyses `PoissonSampledDpEvent`; a shuffled fixed-size batch
  sampler is a different mechanism. Claiming an epsilon for it is refused unless the caller
  acknowledges it, and the plan then says loudly that the number assumes Poisson sampling.
- Sensitivity C. Every example's clipped contribution has L2 norm <= C over all parameters. Per
  layer clipping splits the bound: C_l with sqrt(sum_l C_l^2) = C (`equal_per_layer_split`
  gives C/sqrt(L) each), so the total sensitivity is still C and the same noise suffices.
  Automatic clipping (g * C / (||g|| + stability)) also has norm < C.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Iterable, Literal

from dpscope.errors import PrivacyError
from dpscope.privacy.accounting import (
    ACCOUNTANTS,
    Accountant,
    _check_step,
    check_delta,
    dp_sgd_event,
    epsilon_spent,
)
from dpscope.privacy.calibration import _check_target, max_steps_within, noise_multiplier_for
from dpscope.privacy.ledger import PrivacyLedger

ClipKind = Literal["flat", "per_layer", "automatic"]
Sampling = Literal["poisson", "shuffle"]
CLIP_KINDS: tuple[str, ...] = ("flat", "per_layer", "automatic")
MIN_DATASET_SIZE = 10  # below this no delta < 1/N is meaningful and no model learns


def default_delta(dataset_size: int) -> float:
    """min(1e-5, 1/(10 N)): customary 1e-5, kept an order of magnitude below 1/N."""
    return min(1e-5, 1 / (10 * dataset_size))


def equal_per_layer_split(max_grad_norm: float, layer_names: Iterable[str]) -> dict[str, float]:
    """C_l = C / sqrt(L) for each of L layers, so that sqrt(sum_l C_l^2) = C."""
    names = list(layer_names)
    if not names:
        raise PrivacyError("per-layer clipping needs at least one layer name; pass the model's layer names")
    return {name: max_grad_norm / math.sqrt(len(names)) for name in names}


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything that decides a DP-SGD run's guarantee. Build with `for_target` or `for_noise`."""

    dataset_size: int  # N, examples in the private training set
    sample_rate: float  # q: each example joins each step independently with this probability
    steps: int  # logical steps planned
    max_grad_norm: float  # C: bound on each example's clipped gradient norm (all parameters)
    noise_multiplier: float  # sigma: noise std per summed coordinate is sigma * C
    delta: float
    target_epsilon: float | None = None  # None when the noise was given rather than calibrated
    accountant: Accountant = "pld"
    clip_kind: ClipKind = "flat"
    per_layer_max_grad_norms: tuple[tuple[str, float], ...] | None = None  # per_layer only
    auto_clip_stability: float = 0.01  # automatic only: gamma in g * C / (||g|| + gamma)
    sampling: Sampling = "poisson"
    non_poisson_acknowledged: bool = False
    secure_rng: bool = False

    def __post_init__(self) -> None:
        _check_setup(self.dataset_size, self.sample_rate, self.delta, self.accountant)
        _check_step(self.sample_rate, self.noise_multiplier, self.steps)
        if not 0 < self.max_grad_norm < math.inf:
            raise PrivacyError(f"max_grad_norm must be finite and > 0, got {self.max_grad_norm}; e.g. 1.0")
        self._check_clipping()
        if self.sampling != "poisson" and not self.non_poisson_acknowledged:
            raise PrivacyError(
                f"sampling={self.sampling!r} is not Poisson, but the accountant's epsilon assumes Poisson "
                "sampling; use the Poisson sampler, or non_poisson_acknowledged=True to report it anyway"
            )
        if self.target_epsilon is not None:
            _check_target(self.target_epsilon)
            if self.epsilon > self.target_epsilon:
                raise PrivacyError(
                    f"noise_multiplier {self.noise_multiplier:g} spends epsilon {self.epsilon:.4g} > target "
                    f"{self.target_epsilon:g}; build the plan with PrivacyPlan.for_target to calibrate it"
                )

    @cached_property
    def epsilon(self) -> float:
        """What the planned run spends at `delta`, by `accountant` (computed, never stored)."""
        return epsilon_spent(self.noise_multiplier, self.sample_rate, self.steps, self.delta, self.accountant)

    @classmethod
    def for_target(cls, *, dataset_size: int, expected_batch_size: float, epochs: float,
                   target_epsilon: float, max_grad_norm: float, delta: float | None = None,
                   accountant: Accountant = "pld", **options: Any) -> "PrivacyPlan":
        """Calibrate sigma so the run spends at most `target_epsilon` (to within 1 %)."""
        _check_target(target_epsilon)
        sample_rate, steps, delta = _schedule(dataset_size, expected_batch_size, epochs, delta, accountant)
        sigma = noise_multiplier_for(target_epsilon, delta, sample_rate, steps, accountant)
        return cls(dataset_size=dataset_size, sample_rate=sample_rate, steps=steps,
                   max_grad_norm=max_grad_norm, noise_multiplier=sigma, delta=delta,
                   target_epsilon=target_epsilon, accountant=accountant, **options)

    @classmethod
    def for_noise(cls, *, dataset_size: int, expected_batch_size: float, epochs: float,
                  noise_multiplier: float, max_grad_norm: float, delta: float | None = None,
                  accountant: Accountant = "pld", **options: Any) -> "PrivacyPlan":
        """Use the given sigma and compute the epsilon the run will spend."""
        sample_rate, steps, delta = _schedule(dataset_size, expected_batch_size, epochs, delta, accountant)
        return cls(dataset_size=dataset_size, sample_rate=sample_rate, steps=steps,
                   max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier, delta=delta,
                   accountant=accountant, **options)

    @property
    def expected_batch_size(self) -> float:
        """q * N: the divisor of the noisy sum (never the realised batch size, which would leak)."""
        return self.sample_rate * self.dataset_size

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.sample_rate)

    @property
    def epochs(self) -> float:
        return self.steps / self.steps_per_epoch

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise added to each coordinate of the clipped sum: sigma * C."""
        return self.noise_multiplier * self.max_grad_norm

    @property
    def budget_epsilon(self) -> float:
        """The epsilon the run must not exceed: the target, or the planned spend when sigma was given."""
        return self.target_epsilon if self.target_epsilon is not None else self.epsilon

    def steps_left(self, ledger: PrivacyLedger) -> int:
        """Further steps at this plan's (q, sigma) that keep `ledger` within `budget_epsilon`.

        About a dozen accountant calls: call at the start and on resume, then count down.
        """
        return max_steps_within(self.budget_epsilon, self.delta, self.sample_rate, self.noise_multiplier,
                                done=ledger.segments, accountant=self.accountant,
                                guess=self.steps - ledger.steps)

    def budget_stop_message(self, ledger: PrivacyLedger) -> str:
        spent = ledger.epsilon(self.delta, self.accountant)
        return (f"stopped at the privacy budget after {ledger.steps} steps: epsilon {spent:.3f} of "
                f"{self.budget_epsilon:.3f} spent (delta {self.delta:.3g}); one more step would exceed it")

    def planned_event(self) -> Any:
        """The dp_accounting DpEvent of the planned run (`epsilon` is its epsilon at `delta`)."""
        return dp_sgd_event([(self.sample_rate, self.noise_multiplier, self.steps)])

    def clip_rule(self) -> Any:
        """The clipping engine's rule for this plan (FlatClip, PerLayerClip or AutoClip), bound C."""
        from dpscope import clipping  # the engine depends on torch models; keep privacy import-light

        if self.clip_kind == "per_layer":
            return clipping.PerLayerClip(dict(self.per_layer_max_grad_norms or ()))
        if self.clip_kind == "automatic":
            return clipping.AutoClip(self.max_grad_norm, stability=self.auto_clip_stability)
        return clipping.FlatClip(self.max_grad_norm)

    def check_sampler(self, sampler: Any) -> None:
        """Refuse a batch sampler that is not the one this plan's epsilon was computed for.

        A Poisson sampler must use the plan's q and N; any other sampler (`sampling` attribute
        other than "poisson") is allowed only if the plan acknowledged non-Poisson sampling.
        """
        kind = getattr(sampler, "sampling", None)
        if kind != "poisson":
            if self.sampling == "poisson" or not self.non_poisson_acknowledged:
                raise PrivacyError(
                    f"the plan assumes Poisson sampling but the sampler is {type(sampler).__name__} "
                    f"(sampling={kind!r}); use dpscope.data.poisson.PoissonSampler"
                )
            return
        if (sampler.sample_rate, sampler.dataset_size) != (self.sample_rate, self.dataset_size):
            raise PrivacyError(
                f"sampler draws q={sampler.sample_rate:g} from N={sampler.dataset_size}, the plan "
                f"q={self.sample_rate:g} from N={self.dataset_size}; build the sampler from the plan"
            )

    def describe(self) -> str:
        """A short statement of the guarantee and what it rests on, for a reviewer."""
        target = f", target epsilon {self.target_epsilon:g}" if self.target_epsilon is not None else ""
        split = self.per_layer_max_grad_norms
        lines = [
            f"({self.epsilon:.3g}, {self.delta:.3g})-DP for each example "
            f"(add/remove one; {self.accountant.upper()} accountant via dp_accounting){target}",
            f"data: N={self.dataset_size:,}; {self.sampling} sampling at q={self.sample_rate:.4g} "
            f"(expected batch {self.expected_batch_size:.1f}); "
            f"{self.steps:,} steps = {self.epochs:.3g} epochs",
            f"clipping: {self.clip_kind}, every example's gradient norm <= C={self.max_grad_norm:g}"
            + (f" (split over {len(split)} layers)" if split else "")
            + (f" (normalised: g C / (||g|| + {self.auto_clip_stability:g}))"
               if self.clip_kind == "automatic" else ""),
            f"noise: sigma={self.noise_multiplier:.4g}, std sigma*C={self.noise_std:.4g} "
            "per summed coordinate, "
            "once per step; update = (sum + noise) / (q N)",
            "noise source: " + ("OS CSPRNG (os.urandom), not reproducible" if self.secure_rng
                                else "seeded torch generator (reproducible, not cryptographically secure)"),
        ]
        if self.sampling != "poisson":
            lines.insert(0, "WARNING: batches are NOT Poisson-sampled; the epsilon below ASSUMES Poisson "
                            "sampling and is not a proven guarantee for this run")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the fields, plus the computed epsilon for readers (ignored by from_dict)."""
        return {**asdict(self), "epsilon": self.epsilon}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrivacyPlan":
        data = dict(data)
        data.pop("epsilon", None)  # recomputed from the fields, never trusted
        if data.get("per_layer_max_grad_norms") is not None:
            data["per_layer_max_grad_norms"] = tuple(tuple(item) for item in data["per_layer_max_grad_norms"])
        return cls(**data)

    def _check_clipping(self) -> None:
        if self.clip_kind not in CLIP_KINDS:
            raise PrivacyError(f"unknown clip kind {self.clip_kind!r}; choose one of {', '.join(CLIP_KINDS)}")
        if not 0 < self.auto_clip_stability < math.inf:
            raise PrivacyError(f"auto_clip_stability must be finite and > 0, got {self.auto_clip_stability}; "
                               "e.g. 0.01")
        norms = self.per_layer_max_grad_norms
        if (self.clip_kind == "per_layer") != (norms is not None):
            raise PrivacyError("per_layer_max_grad_norms must be given exactly when clip_kind='per_layer'; "
                               "use equal_per_layer_split(C, layer_names)")
        if norms is not None:
            total = math.sqrt(sum(c * c for _, c in norms))
            if not math.isclose(total, self.max_grad_norm, rel_tol=1e-9) or min(c for _, c in norms) <= 0:
                raise PrivacyError(
                    f"per-layer clip norms give total sensitivity {total:g}, not max_grad_norm "
                    f"{self.max_grad_norm:g}; split so that sqrt(sum C_l^2) = C, e.g. equal_per_layer_split"
                )


def steps_per_epoch(sample_rate: float) -> int:
    """round(1/q), at least 1: one epoch sees each example once in expectation."""
    return max(1, round(1 / sample_rate))


def _schedule(dataset_size: int, expected_batch_size: float, epochs: float, delta: float | None,
              accountant: str) -> tuple[float, int, float]:
    """(sample_rate, steps, delta) from the user's batch size and epochs, validated."""
    _check_dataset_size(dataset_size)
    if delta is None:
        delta = default_delta(dataset_size)
    if not 0 < expected_batch_size <= dataset_size:
        raise PrivacyError(f"batch size {expected_batch_size:g} must be in (0, N={dataset_size}]; "
                           "lower the batch size")
    if not epochs >= 0:
        raise PrivacyError(f"epochs must be >= 0, got {epochs}")
    sample_rate = expected_batch_size / dataset_size
    steps = round(epochs * steps_per_epoch(sample_rate))
    _check_setup(dataset_size, sample_rate, delta, accountant)
    return sample_rate, steps, delta


def _check_setup(dataset_size: int, sample_rate: float, delta: float, accountant: str) -> None:
    _check_dataset_size(dataset_size)
    if sample_rate > 1:
        raise PrivacyError(f"logical batch (q*N = {sample_rate * dataset_size:g}) exceeds the dataset "
                           f"N={dataset_size}; lower the batch size")
    check_delta(delta, dataset_size)
    if accountant not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


def _check_dataset_size(dataset_size: int) -> None:
    if int(dataset_size) != dataset_size or dataset_size < MIN_DATASET_SIZE:
        raise PrivacyError(f"too few examples: N={dataset_size} < {MIN_DATASET_SIZE}; "
                           "DP training needs a larger private training set")
