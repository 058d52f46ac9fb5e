"""Per-example clipping bounds scaled by s_i in (0, 1] (e.g. per class), against torch.func
per-example gradients in float64, in every strategy and clip rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from dpscope import clipping
from dpscope.errors import ConfigError
from tests.clipping.oracle import assert_close

ALL = clipping.STRATEGIES


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def model_and_batch(n: int = 6):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 3)).double()
    x = torch.randn(n, 2, 5, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (n,))
    return model, x, y


def func_grads(model, x, y, rows: int = 1) -> dict[str, torch.Tensor]:
    """torch.func per-example gradients; with `rows` K, each example's mean loss over its K rows."""
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xi, yi):
        return xent(functional_call(model, p, (xi,)), yi).mean()

    xs = x.reshape(-1, rows, *x.shape[1:])
    ys = y.reshape(-1, rows)
    return vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)


def scaled_reference(grads: dict[str, torch.Tensor], bounds: dict[str, float] | float, scales: torch.Tensor):
    """sum_i g_i min(1, C / (||g_i|| / s_i + 1e-6)), i.e. bound s_i C with the engine's 1e-6
    stability: a flat bound C (a number) or a bound per parameter name."""
    sq = {n: g.flatten(1).pow(2).sum(1) for n, g in grads.items()}
    if isinstance(bounds, dict):
        factor = {n: (bounds[n] / (sq[n].sqrt() / scales + 1e-6)).clamp(max=1) for n in grads}
    else:
        norms = torch.stack(list(sq.values())).sum(0).sqrt()
        shared = (bounds / (norms / scales + 1e-6)).clamp(max=1)
        factor = {n: shared for n in grads}
    return {n: torch.einsum("b,b...->...", factor[n], g) for n, g in grads.items()}


def engine_sums(model, x, y, strategy, clip, scales, rows: int = 1) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    clipping.ClippingEngine(model, strategy).clipped_grad_sum(xent, x, y, clip, rows_per_example=rows,
                                                              bound_scales=scales)
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("strategy", ALL)
def test_flat_clip_with_scaled_bounds_matches_torch_func(strategy):
    model, x, y = model_and_batch()
    grads = func_grads(model, x, y)
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
    bound = float(norms.median())  # some examples clipped, some not, at each scale
    scales = torch.tensor([1.0, 0.35, 0.05, 1.0, 0.5, 0.35], dtype=torch.float64)
    want = scaled_reference(grads, bound, scales)
    got = engine_sums(model, x, y, strategy, clipping.FlatClip(bound), scales)
    for name in want:
        assert_close(name, got[name], want[name], strategy)


@pytest.mark.parametrize("strategy", ("ghost", "bookkeeping", "materialize", "auto", "naive"))
def test_per_layer_clip_with_scaled_bounds_matches_torch_func(strategy):
    model, x, y = model_and_batch()
    grads = func_grads(model, x, y)
    bounds = {"0.weight": 0.3, "0.bias": 0.1, "1.weight": 0.05, "1.bias": 0.05, "4.weight": 0.2, "4.bias": 0.1}
    scales = torch.linspace(0.1, 1.0, len(y), dtype=torch.float64)
    want = scaled_reference(grads, bounds, scales)
    got = engine_sums(model, x, y, strategy, clipping.PerLayerClip(bounds), scales)
    for name in want:
        assert_close(name, got[name], want[name], strategy)


@pytest.mark.parametrize("strategy", ("ghost", "auto", "vmap"))
def test_scales_are_per_example_with_augmented_copies(strategy):
    model, x, y = model_and_batch(8)
    y = y.reshape(4, 2)[:, :1].expand(4, 2).reshape(-1)  # two copies per example share a label
    grads = func_grads(model, x, y, rows=2)
    scales = torch.tensor([0.35, 1.0, 1.0, 0.35], dtype=torch.float64)
    want = scaled_reference(grads, 0.5, scales)
    got = engine_sums(model, x, y, strategy, clipping.FlatClip(0.5), scales, rows=2)
    for name in want:
        assert_close(name, got[name], want[name], strategy)


def test_a_common_scale_is_a_smaller_bound_and_bad_scales_are_refused():
    model, x, y = model_and_batch()
    plain = engine_sums(model, x, y, "auto", clipping.FlatClip(0.5), None)
    ones = engine_sums(model, x, y, "auto", clipping.FlatClip(0.5), torch.ones(len(y), dtype=torch.float64))
    smaller = engine_sums(model, x, y, "auto", clipping.FlatClip(0.2), None)
    halves = engine_sums(model, x, y, "auto", clipping.FlatClip(0.5), torch.full((len(y),), 0.4, dtype=torch.float64))
    for name in plain:
        assert torch.equal(plain[name], ones[name])
        assert_close(name, halves[name], smaller[name], "scale 0.4 of C 0.5")
    for bad, message in [(torch.full((len(y),), 1.5), r"\(0, 1\]"), (torch.zeros(len(y)), r"\(0, 1\]"),
                         (torch.ones(len(y) + 1), "shape")]:
        with pytest.raises(ConfigError, match=message):
            engine_sums(model, x, y, "auto", clipping.FlatClip(0.5), bad)
