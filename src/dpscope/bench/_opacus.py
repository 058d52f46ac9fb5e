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


def clip_per_example_bounds(optimizer, max_grad_norm: float, class_clip) -> Callable[[torch.Tensor], None]:
    """Make an Opacus DPOptimizer clip example i to class_clip.of(y_i) * C, as dpscope's
    --class-clip does (`class_clip`: a dpscope.class_clip.ClassClip); returns `set_targets`, to
    call with each batch's labels before `optimizer.step()`.

    Opacus has no per-example bounds, but its clipping divides `max_grad_norm` by the per-sample
    norms, so a (B,) tensor there clips each example to its own bound. It is set for the clipping
    only: the noise keeps reading the scalar C, the sensitivity.
    """
    clip_scalar = optimizer.clip_and_accumulate
    bounds = torch.empty(0)

    def clip_with_bounds() -> None:
        optimizer.max_grad_norm = bounds
        try:
            clip_scalar()
        finally:
            optimizer.max_grad_norm = max_grad_norm

    def set_targets(targets: torch.Tensor) -> None:
        nonlocal bounds
        bounds = class_clip.of(targets) * max_grad_norm

    optimizer.clip_and_accumulate = clip_with_bounds
    return set_targets
