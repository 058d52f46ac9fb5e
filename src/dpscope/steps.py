"""The replaceable pieces of one optimisation step: batches, gradient, optimiser update.

The training loop only ever calls these interfaces; private training swaps in a Poisson
sampler, the per-example clipping engine and the noising optimiser, non-private training
uses the plain ones below. There is no second loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F



def per_example_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of every run: (B,) per-example cross entropy."""
    return F.cross_entropy(logits, targets, reduction="none")


class BatchSampler(Protocol):
    def epoch_batches(self) -> Iterator[torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class GradientResult:
    loss_sum: float  # sum of per-example losses over the logical batch
    batch_size: int
    per_example_norms: torch.Tensor | None = None
    per_param_sq_norms: dict[str, torch.Tensor] | None = None


class GradientStep(Protocol):
    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> GradientResult: ...


class MeanGradient:
    """Non-private: the batch-mean gradient by one ordinary backward pass.

    With an augmenter, the mean over the B*K augmented rows (a plain augmented minibatch), and
    `loss_sum` sums each example's mean loss over its copies.
    """

    def __init__(self, model: torch.nn.Module, augmenter: Any = None) -> None:
        self.model = model
        self.augmenter = augmenter  # dpscope.data.augment.BatchAugmenter or None

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> GradientResult:
        self.model.zero_grad(set_to_none=True)
        if len(targets) == 0:
            return GradientResult(loss_sum=0.0, batch_size=0)
        rows, row_targets = (inputs, targets) if self.augmenter is None else self.augmenter(inputs, targets)
        losses = per_example_cross_entropy(self.model(rows), row_targets)
        losses.mean().backward()
        copies = len(row_targets) // len(targets)
        return GradientResult(loss_sum=float(losses.detach().sum()) / copies, batch_size=len(targets))
