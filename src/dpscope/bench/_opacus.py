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


def clip_automatically(optimizer, max_grad_norm: float, class_clip=None,
                       stability: float = 0.01) -> Callable[[torch.Tensor], None]:
    """Make an Opacus DPOptimizer normalise instead of clip, as dpscope's --auto-clip does (Bu
    et al. 2023), with per-class bounds if `class_clip` is given; returns `set_targets`, to call
    with each batch's labels before `optimizer.step()`.

    Opacus has no automatic clipping, and its clipping factor is capped at 1, so no bound passed
    to it can scale a small gradient up. Its clip-and-accumulate stage is therefore replaced:
    Opacus's per-sample gradients are weighted by dpscope's AutoClip rule and summed into
    `summed_grad`, where Opacus's noise (which reads the scalar C) takes over.
    """
    from dpscope.clipping.clip_rules import AutoClip, weights_with_bound_scales

    rule = AutoClip(max_grad_norm, stability=stability)
    scales = None

    def clip_and_accumulate() -> None:
        samples = optimizer.grad_samples  # one (B, ...) tensor per trainable parameter
        norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in samples], dim=1).norm(2, dim=1)
        weights = weights_with_bound_scales(rule, {"all": norms.square()}, norms, scales)["all"]
        for p, sample in zip(optimizer.params, samples):
            summed = torch.einsum("i,i...->...", weights.to(sample), sample)
            p.summed_grad = summed if p.summed_grad is None else p.summed_grad + summed

    def set_targets(targets: torch.Tensor) -> None:
        nonlocal scales
        scales = None if class_clip is None else class_clip.of(targets)

    optimizer.clip_and_accumulate = clip_and_accumulate
    return set_targets


def match_clipping(optimizer, max_grad_norm: float, auto_clip_stability: float | None,
                   class_clip=None) -> Callable[[torch.Tensor], None] | None:
    """Give an Opacus DPOptimizer the clipping of a dpscope recipe: automatic (with this
    stability) or flat (None), with per-class bounds or not. Returns `set_targets` (None for
    Opacus's own flat clipping)."""
    if auto_clip_stability is not None:
        return clip_automatically(optimizer, max_grad_norm, class_clip, stability=auto_clip_stability)
    if class_clip is not None:
        return clip_per_example_bounds(optimizer, max_grad_norm, class_clip)
    return None
