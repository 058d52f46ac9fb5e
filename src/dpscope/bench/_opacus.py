"""Opacus training steps for comparison (benchmark extra only: imported lazily, never at runtime)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F


def opacus_step(mode: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float, lr: float) -> Callable[[], None]:
    """One Opacus DP-SGD step without noise, in `mode` "hooks" (per-sample gradients) or "ghost"."""
    from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    batch = x.shape[0]
    if mode == "hooks":
        module = GradSampleModule(model, loss_reduction="sum")
        optimizer = DPOptimizer(
            torch.optim.SGD(module.parameters(), lr=lr), noise_multiplier=0.0, max_grad_norm=max_grad_norm,
            expected_batch_size=batch, loss_reduction="sum",
        )

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(module(x), y, reduction="sum").backward()
            optimizer.step()

        return step
    module = GradSampleModuleFastGradientClipping(model, loss_reduction="sum", max_grad_norm=max_grad_norm, use_ghost_clipping=True)
    optimizer = DPOptimizerFastGradientClipping(
        torch.optim.SGD(module.parameters(), lr=lr), noise_multiplier=0.0, max_grad_norm=max_grad_norm,
        expected_batch_size=batch, loss_reduction="sum",
    )
    criterion = DPLossFastGradientClipping(module, optimizer, nn.CrossEntropyLoss(reduction="sum"), loss_reduction="sum")

    def ghost_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(module(x), y).backward()
        optimizer.step()

    return ghost_step


def available() -> bool:
    try:
        import opacus  # noqa: F401
    except ImportError:
        return False
    return True
