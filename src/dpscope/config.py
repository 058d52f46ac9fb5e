"""The typed configuration of one training run.

Everything a run does is decided here, so a run folder's `config.json` reproduces it. Errors
from validation name the offending field (see `format_validation_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from dpscope.errors import ConfigError

OptimizerName = Literal["sgd", "adam", "adamw"]
AccountantName = Literal["pld", "rdp"]
TestComposition = Literal["balanced", "same_imbalance"]
LRScheduleName = Literal["constant", "cosine", "linear"]  # dpscope.optim.schedule
InputNormalization = Literal["auto", "train", "fixed"]  # dpscope.dataset_prep
INPUT_NORMALIZATIONS: tuple[str, ...] = get_args(InputNormalization)


PRIVATE_DEFAULTS = {"batch_size": 256, "lr": 0.5, "momentum": 0.0}


class RunConfig(BaseModel):
    """One training run. Private when `epsilon` or `noise_multiplier` is set."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data and model
    dataset: str = "digits"
    data_dir: Path | None = None
    model: str = "cnn"
    # optimisation
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1, description="examples per step (expected size when private)")
    lr: float = Field(0.05, gt=0)
    optimizer: OptimizerName = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    lr_schedule: LRScheduleName = Field(
        "constant", description="learning rate after any warm-up: constant, or cosine/linear decay "
        "to 0 by the last step; by step count only, no privacy cost")
    warmup_epochs: float = Field(
        0.0, ge=0, description="linear warm-up of the learning rate over this many epochs (may be "
        "fractional)")
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores")
    device: str = Field("auto", description="auto (a CUDA GPU when torch sees one, else the CPU), "
                        "cpu, cuda or cuda:N (dpscope.device)")
    # augmentation of training batches (dpscope.data.augment), private or not
    augment: str | None = Field(None, description='"crop", "crop,flip" or "crop:2,flip" (crop padding in px, '
                                'default 4): random augmentations of training images')
    augment_multiplicity: int = Field(
        1, ge=1, description="augmented copies per example; a private example's gradient is the mean "
        "over its copies before clipping (De et al. 2022), so the guarantee is unchanged")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="evaluate and report an exponential moving average of the "
        "weights with this decay (e.g. 0.95: about the last 20 steps) instead of the last iterate; "
        "post-processing, no privacy cost")
    freeze: str | None = Field(
        None, description="comma-separated glob patterns of parameter names kept at their random "
        "init (no gradient, no noise), e.g. 'stages.2.*.conv?.weight'; no privacy cost")
    # privacy (off unless epsilon or noise_multiplier is given)
    epsilon: float | None = Field(None, description="target epsilon for the whole run")
    delta: float | None = Field(None, description="target delta; default min(1e-5, 1/(10 N))")
    noise_multiplier: float | None = Field(None, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    clipping: str = "auto"
    accountant: AccountantName = "pld"
    physical_batch_size: int | None = Field(None, ge=1)
    secure_rng: bool = False
    clip_per_layer: bool = False
    auto_clip: bool = False
    auto_clip_stability: float = Field(
        0.01, gt=0, description="automatic clipping's gamma in g C / (||g|| + gamma): near 0 every "
        "example pulls with C; larger, an example pulls with C ||g|| / (||g|| + gamma), so "
        "well-fit examples pull less; the sensitivity stays C")
    input_normalization: InputNormalization = Field(
        "auto", description="per-channel input statistics: train (mean and std of the training "
        "images, which epsilon does not cover), fixed (mean 0.5, std 0.25: data-independent), "
        "auto (fixed for private runs on raw images, train otherwise)")
    class_clip: tuple[float, ...] | None = Field(
        None, description="per class, the fraction in (0, 1] of max_grad_norm its examples are "
        "clipped to (the largest 1), e.g. [1, 0.35] against a majority class 1; the sensitivity "
        "stays max_grad_norm (dpscope.class_clip)")
    # extras: layer dynamics
    track_dynamics: bool = False
    dynamics_every_steps: int | None = Field(
        None, ge=1, description="record layer dynamics every N optimizer steps; default each epoch")
    # extras: input perturbation of the training images (dpscope.data.perturb)
    perturb: str | None = Field(None, description='mechanism spec, e.g. "laplace:eps=1"')
    # extras: groups, imbalance and per-group metrics (dpscope.fairness)
    groups: Literal["class"] | Path | None = Field(
        None, description='group attribute: "class", or a CSV of id,group rows with ids like '
        '"train/0", "test/12" (split/index); adds a fairness block to summary.json')
    minority_group: str | None = Field(
        None, description="group (or class name) made the minority of the training set")
    majority_share: float | None = Field(
        None, gt=0, lt=1, description="share of the training set held by all other groups, "
        "e.g. 0.99 leaves the minority group 1 %")
    imbalance_test: TestComposition = Field(
        "balanced", description="test set: balanced (minority 50 %) or same_imbalance as training")

    @model_validator(mode="before")
    @classmethod
    def _private_defaults(cls, values: Any) -> Any:
        """Private runs default to a DP-SGD recipe (large batch, large lr, no momentum).

        Noise per update shrinks with the expected batch, so the non-private defaults (64,
        0.05, 0.9) learn little under DP; options the user gives are never changed.
        """
        if isinstance(values, dict) and (values.get("epsilon") is not None
                                         or values.get("noise_multiplier") is not None):
            return {**PRIVATE_DEFAULTS, **values}
        return values

    @model_validator(mode="after")
    def _privacy_options_consistent(self) -> "RunConfig":
        if self.epsilon is not None and self.noise_multiplier is not None:
            raise ValueError("give either epsilon or noise_multiplier, not both")
        if self.epsilon is not None and self.epsilon <= 0:
            raise ValueError("epsilon must be > 0")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError("delta must be in (0, 1)")
        if self.clip_per_layer and self.auto_clip:
            raise ValueError("clip_per_layer and auto_clip exclude each other")
        # by value, not by fields set: a saved config holds every field
        if self.auto_clip_stability != type(self).model_fields["auto_clip_stability"].default and not self.auto_clip:
            raise ValueError("auto_clip_stability applies to automatic clipping only; add auto_clip")
        return self

    @model_validator(mode="before")
    @classmethod
    def _implied_options(cls, data: Any) -> Any:
        """An interval turns tracking on; a minority group without groups means the class.

        Implied rather than required, so that each option also validates alone (study specs
        check every option by itself); `check_imbalance` checks the pair that must go together.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("dynamics_every_steps") is not None:
            if data.get("track_dynamics") is False:
                raise ValueError("dynamics_every_steps needs track_dynamics")
            data["track_dynamics"] = True
        if data.get("minority_group") is not None and data.get("groups") is None:
            data["groups"] = "class"
        return data

    @field_validator("freeze")
    @classmethod
    def _freeze_spec_parses(cls, spec: str | None) -> str | None:
        from dpscope.models.freeze import parse_freeze_patterns

        try:
            parse_freeze_patterns(spec)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return spec or None

    @field_validator("class_clip")
    @classmethod
    def _class_clip_in_range(cls, fractions: tuple[float, ...] | None) -> tuple[float, ...] | None:
        from dpscope.class_clip import check_class_clip

        return None if fractions is None else check_class_clip(fractions)

    @field_validator("device")
    @classmethod
    def _device_spec_parses(cls, spec: str) -> str:
        from dpscope.device import check_device_spec

        try:
            return check_device_spec(spec)
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @field_validator("perturb")
    @classmethod
    def _perturb_spec_parses(cls, spec: str | None) -> str | None:
        if spec is not None:
            from dpscope.data.perturb import parse_mechanism

            try:
                parse_mechanism(spec)
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return spec

    @field_validator("augment")
    @classmethod
    def _augment_spec_parses(cls, spec: str | None) -> str | None:
        if spec is None:
            return None
        from dpscope.data.augment import format_augment, parse_augment

        try:
            return format_augment(*parse_augment(spec))
        except ConfigError as error:
            raise ValueError(str(error)) from None

    @property
    def private(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> "RunConfig":
        """A config as a run folder saved it; one saved before input_normalization existed was
        normalised by its training statistics."""
        return cls(**{"input_normalization": "train", **values})

    @property
    def input_statistics(self) -> str:
        """"fixed" or "train" (dpscope.dataset_prep): `auto` is fixed for a private run on raw
        images; a perturbed copy's statistics are post-processing of the copy."""
        if self.input_normalization != "auto":
            return self.input_normalization
        return "fixed" if self.private and self.perturb is None else "train"

    @property
    def input_statistics_covered(self) -> bool:
        """False when a private run's inputs are normalised by its private images' statistics."""
        return not (self.private and self.input_statistics == "train" and self.perturb is None)

    def check_augment(self) -> None:
        """ConfigError for copies without augmentation (checked at run start, not per option, so
        that study specs can vary augment_multiplicity alone)."""
        if self.augment_multiplicity > 1 and self.augment is None:
            raise ConfigError("invalid config: augment_multiplicity > 1 needs augment (e.g. crop); "
                              "identical copies would only cost time")

    def check_class_clip(self) -> None:
        """ConfigError for per-class clipping bounds without private training (checked at run
        start, not per option, so that study specs can vary class_clip alone)."""
        if self.class_clip is not None and not self.private:
            raise ConfigError("invalid config: class_clip sets clipping bounds, so it needs private "
                              "training (--epsilon or --noise-multiplier)")

    def check_schedule(self) -> None:
        """ConfigError when the warm-up would not end before the run does (checked at run start,
        not per option, so that study specs can vary epochs and warmup_epochs alone)."""
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(f"invalid config: warmup_epochs ({self.warmup_epochs:g}) must be "
                              f"less than epochs ({self.epochs}); shorten the warm-up")

    def check_imbalance(self) -> None:
        """ConfigError unless minority_group and majority_share are given together (or neither)."""
        if (self.minority_group is None) != (self.majority_share is None):
            given, missing = (("minority_group", "majority_share") if self.majority_share is None
                              else ("majority_share", "minority_group"))
            raise ConfigError(f"invalid config: {given} needs {missing} (e.g. minority_group="
                              '"normal", majority_share=0.9)')


def format_validation_error(error: ValidationError, source: str = "config") -> str:
    """One line naming each offending field, for the CLI."""
    parts = []
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(config)"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message}")
    return f"invalid {source}: " + "; ".join(parts)


def make_run_config(**values) -> RunConfig:
    """Build a RunConfig, turning validation errors into a one-line ConfigError."""
    try:
        return RunConfig(**values)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None
