"""The typed configuration of one training run.

Everything a run does is decided here, so a run folder's `config.json` reproduces it. Errors
from validation name the offending field (see `format_validation_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dpscope.errors import ConfigError

OptimizerName = Literal["sgd", "adam", "adamw"]
AccountantName = Literal["pld", "rdp"]


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
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores")
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
    # extras
    track_dynamics: bool = False
    perturb: str | None = None

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
        return self

    @property
    def private(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None


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
