"""Compare a strategy with the naive and vmap references: norms, per-parameter norms, sums."""

from __future__ import annotations

import torch
from torch import nn

from dpscope import clipping

REL_TOL = 1e-6
LAYERWISE = ("materialize", "ghost", "bookkeeping", "crb", "auto")


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Relative error (max abs difference over max abs reference) below REL_TOL, or say by how much."""
    assert got.shape == want.shape, f"{what}: {name} has shape {tuple(got.shape)}, reference {tuple(want.shape)}"
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    rel = err / scale if scale > 0 else err
    assert rel < REL_TOL, f"{what}: {name} differs from the reference by {err:.3g} (relative {rel:.3g})"


def run(model: nn.Module, loss_fn, x, y, strategy, clip, **options) -> tuple[clipping.ClipResult, dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    result = clipping.ClippingEngine(model, strategy, **options).clipped_grad_sum(loss_fn, x, y, clip)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, grads


def check_against_references(model: nn.Module, loss_fn, x, y, strategies=LAYERWISE, clip=None, **options) -> None:
    """Every strategy equals naive, and vmap equals naive, on norms, per-parameter norms and sums.

    `options` go to the engines of `strategies` (e.g. max_extra_bytes), not to the references.

    By default the bound is the median norm (as `auto` finds it: every result is then compared
    with naive anyway), so some examples are clipped and some are not.
    """
    if clip is None:
        norms = clipping.per_example_grad_norms(model, loss_fn, x, y, strategy="auto")
        clip = clipping.FlatClip(float(norms.median()) if norms.numel() else 1.0)
    want, want_grads = run(model, loss_fn, x, y, "naive", clip)
    for strategy in ("vmap", *strategies):
        got, got_grads = run(model, loss_fn, x, y, strategy, clip, **({} if strategy == "vmap" else options))
        tag = f"strategy {strategy}"
        assert_close("per-example norms", got.per_example_norms, want.per_example_norms, tag)
        assert_close("per-example losses", got.per_example_losses, want.per_example_losses, tag)
        assert set(got.per_param_sq_norms) == set(want.per_param_sq_norms), tag
        for name, sq in want.per_param_sq_norms.items():
            assert_close(f"squared norm of {name}", got.per_param_sq_norms[name], sq, tag)
        for name, g in want_grads.items():
            assert_close(f"clipped sum of {name}", got_grads[name], g, tag)
