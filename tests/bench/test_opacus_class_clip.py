"""The Opacus twin's clipping equals dpscope's: per-class bounds, automatic clipping (benchmark
extra: needs opacus)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpscope import clipping
from dpscope.bench._opacus import clip_per_example_bounds, match_clipping
from dpscope.class_clip import ClassClip
from dpscope.clipping.clip_rules import AutoClip

opacus = pytest.importorskip("opacus")


def test_opacus_with_per_class_bounds_releases_dpscopes_clipped_sum() -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    x, y = torch.randn(10, 1, 8, 8), torch.tensor([0, 1] * 5)
    fractions, bound = (1.0, 0.3), 0.05

    ours = copy.deepcopy(model)
    clipping.ClippingEngine(ours, "auto").clipped_grad_sum(
        lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y, bound,
        bound_scales=torch.tensor(fractions)[y])
    want = torch.cat([p.grad.flatten() for p in ours.parameters()])

    module = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    before = torch.cat([p.detach().flatten() for p in module.parameters()])
    optimizer = DPOptimizer(torch.optim.SGD(module.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=bound, expected_batch_size=1, loss_reduction="sum")
    set_targets = clip_per_example_bounds(optimizer, bound, ClassClip(fractions, ("a", "b")))
    set_targets(y)
    F.cross_entropy(module(x), y, reduction="sum").backward()
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    torch.testing.assert_close(before - after, want, rtol=1e-4, atol=1e-6)
    assert optimizer.max_grad_norm == bound  # the noise still reads the scalar C


    flat = copy.deepcopy(model)
    clipping.ClippingEngine(flat, "auto").clipped_grad_sum(
        lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y, bound)
    assert not torch.allclose(torch.cat([p.grad.flatten() for p in flat.parameters()]), want)  # bounds bind


@pytest.mark.parametrize("fractions, stability", [(None, 0.01), ((1.0, 0.3), 0.01), ((1.0, 0.3), 1.0)])
def test_opacus_with_automatic_clipping_releases_dpscopes_normalised_sum(fractions, stability) -> None:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    x, y = torch.randn(10, 1, 8, 8), torch.tensor([0, 1] * 5)
    bound = 0.5
    class_clip = None if fractions is None else ClassClip(fractions, ("a", "b"))

    ours = copy.deepcopy(model)
    clipping.ClippingEngine(ours, "auto").clipped_grad_sum(
        lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y, AutoClip(bound, stability=stability),
        bound_scales=None if class_clip is None else class_clip.of(y))
    want = torch.cat([p.grad.flatten() for p in ours.parameters()])

    module = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    before = torch.cat([p.detach().flatten() for p in module.parameters()])
    optimizer = DPOptimizer(torch.optim.SGD(module.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=bound, expected_batch_size=1, loss_reduction="sum")
    set_targets = match_clipping(optimizer, bound, stability, class_clip)
    set_targets(y)
    F.cross_entropy(module(x), y, reduction="sum").backward()
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    torch.testing.assert_close(before - after, want, rtol=1e-4, atol=1e-6)
    # normalised, not clipped: small gradients are scaled up, which Opacus's own clipping never does
    flat = copy.deepcopy(model)
    clipping.ClippingEngine(flat, "auto").clipped_grad_sum(
        lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y, bound)
    assert not torch.allclose(torch.cat([p.grad.flatten() for p in flat.parameters()]), want)


def test_match_clipping_leaves_flat_clipping_to_opacus() -> None:
    class Optimizer:
        clip_and_accumulate = "opacus's own"

    optimizer = Optimizer()
    assert match_clipping(optimizer, 1.0, None, None) is None
    assert optimizer.clip_and_accumulate == "opacus's own"


def test_opacus_twin_of_the_centred_resnet_ignores_the_no_grad_reference_forward() -> None:
    """resnet20_centred runs its noise images through the network under no_grad in every forward;
    Opacus must capture only the batch's activations, as dpscope does, for the twins to compare."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    from dpscope.models import build_model

    torch.manual_seed(2)
    model = build_model("resnet20_centred", in_channels=1, image_size=8, num_classes=2)
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1] * 3)
    bound = AutoClip(0.5, stability=0.01)
    class_clip = ClassClip((1.0, 0.5), ("a", "b"))

    ours = copy.deepcopy(model)
    clipping.ClippingEngine(ours, "auto").clipped_grad_sum(
        lambda out, t: F.cross_entropy(out, t, reduction="none"), x, y, bound,
        bound_scales=class_clip.of(y))
    want = torch.cat([p.grad.flatten() for p in ours.parameters()])

    module = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    before = torch.cat([p.detach().flatten() for p in module.parameters()])
    optimizer = DPOptimizer(torch.optim.SGD(module.parameters(), lr=1.0), noise_multiplier=0.0,
                            max_grad_norm=0.5, expected_batch_size=1, loss_reduction="sum")
    match_clipping(optimizer, 0.5, 0.01, class_clip)(y)
    F.cross_entropy(module(x), y, reduction="sum").backward()
    assert all(p.grad_sample.shape[0] == len(x) for p in module.parameters())
    assert not any(getattr(m, "activations", None) for m in module.modules())  # none left over
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    torch.testing.assert_close(before - after, want, rtol=1e-4, atol=1e-6)
