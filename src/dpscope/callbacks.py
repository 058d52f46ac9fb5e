"""Hooks into the one training loop: metrics, checkpoints, layer dynamics, fairness.

A callback sees the loop's state at fixed points and may keep its own state, which is saved
in the checkpoint (`state_dict` / `load_state_dict`) so a resumed run continues it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class StepReport:
    """What one logical optimisation step did; private steps fill the privacy fields."""

    step: int  # logical steps completed so far, this one included
    epoch: int  # 0-based epoch this step belongs to
    batch_size: int  # examples in the logical batch (varies under Poisson sampling)
    loss: float  # mean per-example loss of the batch (nan for an empty batch)
    per_example_norms: torch.Tensor | None = None  # (B,) gradient norms before clipping
    # parameter name -> (B,) squared per-example gradient norms of that parameter
    per_param_sq_norms: dict[str, torch.Tensor] | None = None
    # parameter name -> L2 norm of the clipped gradient sum of that parameter, before noise
    clipped_sum_norms: dict[str, float] | None = None
    max_grad_norm: float | None = None
    noise_std: float | None = None  # std of the Gaussian noise added to each summed coordinate
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopState:
    """The parts of the loop a callback may read."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    run_dir: Path | None
    epoch: int = 0  # epochs completed
    step: int = 0  # logical steps completed
    config: Any = None


class Callback:
    """Base class: override the hooks you need. All hooks are no-ops by default."""

    name: str = "callback"

    def on_train_start(self, state: LoopState) -> None:
        pass

    def on_step_end(self, state: LoopState, report: StepReport) -> None:
        pass

    def on_epoch_end(self, state: LoopState, metrics: dict[str, Any]) -> None:
        """`metrics` is the epoch's record; a callback may add keys to it."""

    def on_train_end(self, state: LoopState, summary: dict[str, Any]) -> None:
        """`summary` is the run's summary; a callback may add keys to it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
