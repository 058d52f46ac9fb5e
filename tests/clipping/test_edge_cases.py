"""The edge-case table of `dpscope.clipping.engine`, clip rules, errors and the engine contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpscope import clipping
from dpscope.errors import ConfigError, DpscopeError, UnsupportedLayerError
from tests.clipping.oracle import LAYERWISE, assert_close, check_against_references

ALL = clipping.STRATEGIES


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))


def batch(n: int):
    torch.manual_seed(1)
    return torch.randn(n, 2, 5, 5), torch.randint(0, 3, (n,))


def per_example_grads(model, x, y) -> list[torch.Tensor]:
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        xent(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    return rows


def flat_grad(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("strategy", ALL)
def test_clipped_sum_matches_the_definition(strategy):
    model, (x, y) = small_model(), batch(5)
    rows = per_example_grads(model, x, y)
    c = float(torch.stack([r.norm() for r in rows]).median())
    want = sum(r * min(1.0, c / (r.norm().item() + 1e-6)) for r in rows)
    model.zero_grad()
    norms = clipping.clipped_grad_sum(model, xent, x, y, c, strategy=strategy)
    assert_close("norms", norms, torch.stack([r.norm() for r in rows]), strategy)
    assert_close("clipped sum", flat_grad(model), want, strategy)


@pytest.mark.parametrize("strategy", ALL)
def test_empty_batch_gives_zero_grads_and_empty_norms(strategy):
    model, (x, y) = small_model(), batch(0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    result = clipping.ClippingEngine(model, strategy).clipped_grad_sum(xent, x, y, 1.0)
    assert result.per_example_norms.shape == (0,) and result.per_example_losses.shape == (0,)
    assert all(bool((p.grad == 0).all()) for p in model.parameters())


@pytest.mark.parametrize("strategy", ALL)
def test_nan_loss_raises_and_leaves_grads_untouched(strategy):
    model, (x, y) = small_model(), batch(3)
    x[1, 0, 0, 0] = float("nan")
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    with pytest.raises(clipping.NonFiniteLossError, match="example"):
        clipping.clipped_grad_sum(model, xent, x, y, 1.0, strategy=strategy)
    assert all(bool((p.grad == 7.0).all()) for p in model.parameters())
    assert issubclass(clipping.NonFiniteLossError, DpscopeError)


@pytest.mark.parametrize("strategy", ALL)
def test_zero_bound_gives_zero_grads_and_infinite_bound_the_plain_sum(strategy):
    model, (x, y) = small_model(), batch(4)
    clipping.clipped_grad_sum(model, xent, x, y, 0.0, strategy=strategy)
    assert float(flat_grad(model).abs().max()) == 0.0
    clipping.clipped_grad_sum(model, xent, x, y, math.inf, strategy=strategy)
    model_ref = small_model()
    xent(model_ref(x), y).sum().backward()
    assert_close("plain sum", flat_grad(model), flat_grad(model_ref), strategy)


@pytest.mark.parametrize("strategy", ALL)
def test_example_with_zero_gradient_gets_weight_one_and_no_nan(strategy):
    model, (x, _) = small_model(), batch(3)
    y = torch.tensor([0, 2, 1])
    zero_loss = lambda out, t: xent(out, t) * (t != 2)  # noqa: E731  (example 1 has loss 0)
    norms = clipping.clipped_grad_sum(model, zero_loss, x, y, 1e-3, strategy=strategy)
    assert float(norms[1]) == 0.0
    assert bool(torch.isfinite(flat_grad(model)).all())


@pytest.mark.parametrize("strategy", LAYERWISE + ("vmap",))
def test_clip_rules_per_layer_and_automatic_match_naive(strategy):
    model, (x, y) = small_model(), batch(4)
    per_layer = clipping.PerLayerClip({"0": 0.3, "1": 0.05, "4.weight": 0.2, "4.bias": 0.1})
    for clip in (per_layer, clipping.AutoClip(0.5), clipping.PerLayerClip({"": 0.4})):
        check_against_references(model, xent, x, y, strategies=(strategy,), clip=clip)


def test_per_layer_clip_bounds_each_group_and_states_sensitivity():
    model, (x, y) = small_model(), batch(1)
    bounds = {"0": 0.3, "1": 0.05, "4": 0.2}
    clipping.ClippingEngine(model, "bookkeeping").clipped_grad_sum(xent, x, y, clipping.PerLayerClip(bounds))
    for prefix, bound in bounds.items():
        group = torch.cat([p.grad.flatten() for n, p in model.named_parameters() if n.startswith(prefix + ".")])
        assert group.norm() <= bound + 1e-9
    assert clipping.PerLayerClip(bounds).sensitivity == pytest.approx(math.sqrt(0.09 + 0.0025 + 0.04))


def test_per_layer_clip_refuses_an_uncovered_parameter():
    model, (x, y) = small_model(), batch(2)
    with pytest.raises(ConfigError, match="'4.weight'"):
        clipping.ClippingEngine(model).clipped_grad_sum(xent, x, y, clipping.PerLayerClip({"0": 1.0, "1": 1.0}))


@pytest.mark.parametrize("stability", [0.01, 1.0, 100.0])
def test_automatic_clipping_normalises_below_the_bound(stability):
    model, (x, y) = small_model(), batch(1)
    result = clipping.ClippingEngine(model).clipped_grad_sum(xent, x, y, clipping.AutoClip(2.0, stability=stability))
    n = float(result.per_example_norms[0])
    assert float(flat_grad(model).norm()) == pytest.approx(2.0 * n / (n + stability), rel=1e-9)
    assert clipping.AutoClip(2.0).sensitivity == 2.0


@pytest.mark.parametrize("strategy", ALL)
def test_accumulate_adds_to_existing_grads(strategy):
    model, (x, y) = small_model(), batch(6)
    engine = clipping.ClippingEngine(model, strategy)
    engine.clipped_grad_sum(xent, x, y, 0.5)
    whole = flat_grad(model).clone()
    engine.clipped_grad_sum(xent, x[:2], y[:2], 0.5)
    engine.clipped_grad_sum(xent, x[2:], y[2:], 0.5, accumulate=True)
    assert_close("accumulated", flat_grad(model), whole, strategy)


def test_result_carries_per_parameter_norms_and_losses():
    model, (x, y) = small_model(), batch(4)
    result = clipping.ClippingEngine(model).grad_norms(xent, x, y)
    assert set(result.per_param_sq_norms) == {n for n, _ in model.named_parameters()}
    total = torch.stack(list(result.per_param_sq_norms.values())).sum(0)
    assert_close("sum of squared norms", total, result.per_example_norms**2, "auto")
    assert_close("losses", result.per_example_losses, xent(model(x), y).detach(), "auto")
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("strategy", ALL)
def test_frozen_parameters_are_skipped(strategy):
    model, (x, y) = small_model(), batch(3)
    model[0].weight.requires_grad_(False)
    model[1].requires_grad_(False)
    check_against_references(model, xent, x, y, strategies=(strategy,) if strategy in LAYERWISE else ())
    result = clipping.ClippingEngine(model, strategy).clipped_grad_sum(xent, x, y, 1.0)
    assert "0.weight" not in result.per_param_sq_norms and model[0].weight.grad is None


def test_unsupported_layer_names_module_and_supported_types_and_vmap_still_works():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(nn.Linear(4, 3), nn.Sequential(Scale()))
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    with pytest.raises(UnsupportedLayerError, match=r"Scale at '1\.0'.*Conv2d.*Linear"):
        clipping.per_example_grad_norms(model, xent, x, y)
    assert clipping.per_example_grad_norms(model, xent, x, y, strategy="vmap").shape == (2,)


def test_custom_per_example_grads_contract():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.linspace(0.5, 1.5, 3))

        def forward(self, x):
            return x * self.s

        def per_example_grads(self, inputs, grad_output):
            return {"s": inputs * grad_output}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), Scale(), nn.Tanh(), nn.Linear(3, 3))
    check_against_references(model, xent, torch.randn(3, 4), torch.tensor([0, 2, 1]))


@pytest.mark.parametrize("strategy", ALL)
def test_batchnorm_in_training_is_refused_with_the_fix(strategy):
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 3))
    x, y = batch(2)
    with pytest.raises(UnsupportedLayerError, match="BatchNorm at '1'.*GroupNorm.*replace_batchnorm"):
        clipping.per_example_grad_norms(model, xent, x, y, strategy=strategy)


def test_strategy_by_layer_type_and_unknown_strategies():
    model, (x, y) = small_model(), batch(3)
    check_against_references(
        model, xent, x, y, strategies=({nn.Conv2d: "crb", nn.Linear: "ghost"}, {nn.Conv2d: "bookkeeping"})
    )
    with pytest.raises(ConfigError, match="unknown clipping strategy"):
        clipping.ClippingEngine(model, "fast")
    with pytest.raises(ConfigError, match="whole models only"):
        clipping.ClippingEngine(model, {nn.Linear: "vmap"})


def test_shared_layer_called_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x)))))

    torch.manual_seed(0)
    check_against_references(Twice(), xent, torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))


@pytest.mark.parametrize("strategy", ALL)
def test_a_layer_called_again_without_gradient_adds_nothing(strategy):
    """A no-grad sub-forward (a constant reference, as in resnet20_centred) is not an example."""

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.out = nn.Linear(3, 2)
            self.register_buffer("anchor", torch.randn(5, 3))

        def forward(self, x):
            with torch.no_grad():
                reference = torch.tanh(self.fc(self.anchor)).mean(0)
            return self.out(torch.tanh(self.fc(x)) - reference)

    torch.manual_seed(0)
    model, x, y = Reference(), torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    norms = clipping.per_example_grad_norms(model, xent, x, y, strategy)
    expected = torch.stack([g.norm() for g in per_example_grads(model, x, y)])
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-6)


def test_a_forward_without_gradient_is_explained():
    model, (x, y) = small_model(), batch(3)
    with pytest.raises(UnsupportedLayerError, match="gradients enabled"), torch.no_grad():
        clipping.per_example_grad_norms(model, xent, x, y)


def test_wrong_loss_shape_is_explained():
    model, (x, y) = small_model(), batch(3)
    with pytest.raises(clipping.LossShapeError, match="reduction='none'"):
        clipping.per_example_grad_norms(model, lambda o, t: F.cross_entropy(o, t), x, y)


def test_inplace_activation_and_a_layer_whose_input_does_not_depend_on_the_batch_inputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.act = nn.ReLU(inplace=True)
            self.bias_net = nn.Linear(2, 3)  # fed by a constant: its gradient never reaches the inputs
            self.out = nn.Linear(27, 3)

        def forward(self, x):
            h = self.act(self.conv(x)).flatten(1)  # in-place on the conv's output
            return self.out(h) + self.bias_net(torch.ones(x.shape[0], 2))

    torch.manual_seed(0)
    x, y = batch(4)
    check_against_references(Net(), xent, x, y)


def test_model_that_edits_its_input_in_place():
    class Centre(nn.Module):
        def forward(self, x):
            return x.sub_(x.mean(dim=(1, 2, 3), keepdim=True))  # per example, idempotent

    torch.manual_seed(0)
    x, y = batch(3)
    check_against_references(nn.Sequential(Centre(), small_model()), xent, x, y)
