"""An exponential moving average (EMA) of the weights, the model a run evaluates and reports.

Under DP-SGD the last iterate carries the noise of its last few steps, so the final epoch's
accuracy swings from seed to seed; an average of recent iterates carries less of it (De et al.
2022 evaluate an EMA of the weights). The average is computed from the iterates the accountant
already counts, so it is post-processing and costs no privacy.

    average = WeightAverage(model, decay=0.95)
    ...after each optimizer step: average.update(model)
    evaluate(average.module)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """EMA of a model's parameters and buffers: avg <- decay * avg + (1 - decay) * current.

    The first update copies the current weights (the initialisation never enters the average),
    so after t updates the oldest iterate weighs decay**(t-1) and the horizon is about
    1 / (1 - decay) steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                       use_buffers=True)

    @property
    def module(self) -> torch.nn.Module:
        """The averaged model (same class as the trained one), for evaluation."""
        return self._averaged.module

    @property
    def updates(self) -> int:
        return int(self._averaged.n_averaged.item())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self._averaged.update_parameters(model)

    def describe(self) -> str:
        return (f"evaluated weights: EMA of the iterates, decay {self.decay:g} (about "
                f"{1 / (1 - self.decay):.0f} steps; post-processing, no privacy cost)")

    def state_dict(self) -> dict[str, Any]:
        return self._averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._averaged.load_state_dict(state)
