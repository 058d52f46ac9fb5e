"""Private training: a RunConfig's privacy plan and the pieces it puts into the one loop.

`build_private_parts` turns the run's options into a `PrivacyPlan` (sampler, clipping bound,
noise, accountant in one object) and builds exactly what the plan describes: a Poisson sampler
at the plan's q, the clipping engine with the plan's clip rule, and a DP optimizer with the
plan's sigma. The loop then reports the epsilon of the events it actually executed (the
ledger), never the planned number, and stops when the planned steps are spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dpscope import clipping
from dpscope.callbacks import StepReport
from dpscope.class_clip import ClassClip
from dpscope.config import RunConfig
from dpscope.data import Dataset
from dpscope.data.poisson import PoissonSampler
from dpscope.errors import PrivacyError
from dpscope.io import write_json_atomic
from dpscope.optim import DPOptimizer, make_dp_optimizer
from dpscope.privacy import PrivacyPlan, equal_per_layer_split
from dpscope.steps import GradientResult, per_example_cross_entropy

NOISE_SEED_OFFSET = 7919  # noise and sampling draw from separate, seeded streams


def make_plan(config: RunConfig, dataset_size: int, model: torch.nn.Module) -> PrivacyPlan:
    """The plan for `config`: sigma calibrated to the target epsilon, or epsilon from sigma."""
    options: dict[str, Any] = dict(
        dataset_size=dataset_size, expected_batch_size=config.batch_size, epochs=config.epochs,
        max_grad_norm=config.max_grad_norm, delta=config.delta, accountant=config.accountant,
        secure_rng=config.secure_rng,
    )
    if config.clip_per_layer:
        layers = sorted({name.rsplit(".", 1)[0] for name, p in model.named_parameters()
                         if p.requires_grad})
        options.update(clip_kind="per_layer", per_layer_max_grad_norms=tuple(
            equal_per_layer_split(config.max_grad_norm, layers).items()))
    elif config.auto_clip:
        options.update(clip_kind="automatic", auto_clip_stability=config.auto_clip_stability)
    if config.epsilon is not None:
        return PrivacyPlan.for_target(target_epsilon=config.epsilon, **options)
    return PrivacyPlan.for_noise(noise_multiplier=config.noise_multiplier, **options)


class ClippedSumGradient:
    """Sum of clipped per-example gradients of a logical batch, in physical chunks.

    With an augmenter of multiplicity K, each chunk of examples becomes K augmented rows per
    example and an example's gradient is the mean over its rows, before clipping (De et al.
    2022): the sensitivity stays C. `physical_batch_size` counts examples, so a chunk is K times
    as many rows.
    """

    def __init__(self, model: torch.nn.Module, strategy: str, clip_rule: Any,
                 physical_batch_size: int | None, augmenter: Any = None,
                 class_clip: ClassClip | None = None) -> None:
        self.model = model
        self.class_clip = class_clip  # a bound per class, at most C
        self.engine = clipping.ClippingEngine(model, strategy=strategy)
        self.clip_rule = clip_rule
        self.physical_batch_size = physical_batch_size
        self.augmenter = augmenter  # dpscope.data.augment.BatchAugmenter or None

    def _chunk(self, inputs: torch.Tensor, targets: torch.Tensor) -> clipping.ClipResult:
        copies = 1 if self.augmenter is None else self.augmenter.multiplicity
        bound_scales = None if self.class_clip is None else self.class_clip.of(targets)
        if self.augmenter is not None:
            inputs, targets = self.augmenter(inputs, targets)
        return self.engine.clipped_grad_sum(per_example_cross_entropy, inputs, targets, self.clip_rule,
                                            accumulate=True, rows_per_example=copies,
                                            bound_scales=bound_scales)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> GradientResult:
        self.model.zero_grad(set_to_none=True)
        size = self.physical_batch_size or max(1, len(targets))
        results = [  # contiguous slices: views, no copy of the batch per step
            self._chunk(inputs[start:start + size], targets[start:start + size])
            for start in range(0, len(targets), size)
        ]
        if not results:  # an empty Poisson batch: the optimiser noises an all-zero sum
            return GradientResult(loss_sum=0.0, batch_size=0, per_example_norms=torch.empty(0))
        names = results[0].per_param_sq_norms.keys()
        return GradientResult(
            loss_sum=float(sum(r.per_example_losses.sum() for r in results)),
            batch_size=len(targets),
            per_example_norms=torch.cat([r.per_example_norms for r in results]),
            per_param_sq_norms={n: torch.cat([r.per_param_sq_norms[n] for r in results]) for n in names},
        )


class PrivateTraining:
    """The loop's view of privacy: budget checks, epsilon spent, ledger and summary fields."""

    def __init__(self, plan: PrivacyPlan, optimizer: DPOptimizer, strategy: str,
                 param_bounds: dict[str, float], augmenter: Any = None,
                 class_clip: ClassClip | None = None) -> None:
        self.plan = plan
        self.class_clip = class_clip
        self.optimizer = optimizer
        self.strategy = strategy
        self._param_bounds = param_bounds  # per-layer clipping: parameter name -> bound
        self.augmenter = augmenter
        self._epsilon_cache: tuple[Any, float] = (None, 0.0)

    @property
    def ledger(self):
        return self.optimizer.ledger

    def can_step(self) -> bool:
        return self.ledger.steps < self.plan.steps

    def exhausted_reason(self) -> str | None:
        """Why training must stop before its last epoch, or None while budget remains."""
        return None if self.can_step() else self.plan.budget_stop_message(self.ledger)

    def epsilon_spent(self) -> float:
        """The accountant's epsilon for the ledger, computed once per ledger state (it is slow)."""
        key = tuple(self.ledger.segments)
        if self._epsilon_cache[0] != key:
            value = self.ledger.epsilon(self.plan.delta, self.plan.accountant) if self.ledger.steps else 0.0
            self._epsilon_cache = (key, value)
        return self._epsilon_cache[1]

    def epoch_record(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon_spent(), "privacy_steps": self.ledger.steps}

    def fill_report(self, report: StepReport) -> None:
        self.optimizer.fill_report(report)
        if self._param_bounds:
            report.extra["per_layer_max_grad_norms"] = self._param_bounds

    def statement(self) -> str:
        """The plan's guarantee, and what augmentation (if any) does to it."""
        if self.augmenter is None:
            return self.plan.describe()
        return self.plan.describe() + "\n" + self.augmenter.privacy_statement()

    def describe(self) -> str:
        return self.statement() + f"\nper-example gradients: strategy {self.strategy!r}"

    def summary(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "epsilon": self.epsilon_spent(),
            "delta": plan.delta,
            "target_epsilon": plan.target_epsilon,
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "expected_batch_size": plan.expected_batch_size,
            "privacy_steps": self.ledger.steps,
            "accountant": plan.accountant,
            "max_grad_norm": plan.max_grad_norm,
            "clip_kind": plan.clip_kind,
            "auto_clip_stability": plan.auto_clip_stability if plan.clip_kind == "automatic" else None,
            "class_clip": None if self.class_clip is None else dict(
                zip(self.class_clip.class_names, self.class_clip.fractions)),
            "clipping_strategy": self.strategy,
            "sampling": plan.sampling,
            "secure_rng": plan.secure_rng,
            "privacy_statement": self.statement(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = PrivacyPlan.from_dict(state["plan"])
        if saved != self.plan:
            raise PrivacyError("the checkpoint's privacy plan differs from the one rebuilt from "
                               "config.json; the run folder was edited, start a new run")

    def save_ledger(self, path: Path) -> None:
        write_json_atomic(path, {
            "plan": self.plan.to_dict(),
            "ledger": self.ledger.to_dict(),
            "epsilon_spent": self.epsilon_spent(),
            "delta": self.plan.delta,
            "accountant": self.plan.accountant,
        })


def _per_parameter_bounds(plan: PrivacyPlan, model: torch.nn.Module) -> dict[str, float]:
    """Parameter name -> its layer's clipping bound, for per-layer clipping (else empty)."""
    if plan.per_layer_max_grad_norms is None:
        return {}
    rule = plan.clip_rule()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return {name: rule.max_grad_norms[rule.group_of(name)] for name in names}


def build_class_clip(config: RunConfig, dataset: Dataset) -> ClassClip | None:
    """The configured per-class bounds for `dataset`'s classes (ConfigError for a count mismatch)."""
    return None if config.class_clip is None else ClassClip(config.class_clip, dataset.class_names)


def build_private_parts(config: RunConfig, dataset: Dataset, model: torch.nn.Module, augmenter: Any = None):
    from dpscope.train import TrainingParts

    plan = make_plan(config, len(dataset.train), model)
    sampler = PoissonSampler(plan.dataset_size, plan.sample_rate, seed=config.seed)
    plan.check_sampler(sampler)
    optimizer = make_dp_optimizer(
        dict(model.named_parameters()), plan, kind=config.optimizer, lr=config.lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
        seed=config.seed + NOISE_SEED_OFFSET,
    )
    class_clip = build_class_clip(config, dataset)
    return TrainingParts(
        sampler=sampler,
        gradient_step=ClippedSumGradient(model, config.clipping, plan.clip_rule(),
                                         config.physical_batch_size, augmenter, class_clip),
        optimizer=optimizer,
        privacy=PrivateTraining(plan, optimizer, config.clipping,
                                _per_parameter_bounds(plan, model), augmenter, class_clip),
        augmenter=augmenter,
    )
