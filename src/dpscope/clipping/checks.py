"""Checks on what the model and loss produce, before anything reaches p.grad."""

from __future__ import annotations

import torch

from dpscope.errors import DpscopeError


class NonFiniteLossError(DpscopeError):
    """A per-example loss is NaN or infinite, so no gradient of that batch can be trusted."""


class LossShapeError(DpscopeError):
    """loss_fn did not return one loss per example."""


def check_losses(losses: torch.Tensor, batch_size: int) -> None:
    """Refuse losses that are not (B,) or not finite; p.grad is untouched when this raises."""
    if not isinstance(losses, torch.Tensor) or losses.shape != (batch_size,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise LossShapeError(
            f"loss_fn must return per-example losses of shape ({batch_size},), got {shape}; "
            "use reduction='none'"
        )
    finite = torch.isfinite(losses.detach())
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise NonFiniteLossError(
            f"per-example loss is NaN or infinite for example(s) {bad[:10]} of the batch; check the "
            "inputs and lower the learning rate (no gradient was written)"
        )
