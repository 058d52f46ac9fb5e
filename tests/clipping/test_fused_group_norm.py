"""GroupNorm's fused backward (`LayerRule.fused_forward`): the input gradient and the per-example
gradients from one kernel call, handed to the engine as the backward runs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from dpscope import clipping, native
from dpscope.clipping.rules import _norm_native, norms
from tests.clipping.oracle import assert_close, check_against_references

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

pytestmark = pytest.mark.skipif(native.library(warn=False) is None or torch.get_default_device().type != "cpu",
                                reason="the fused backward is a CPU C kernel")


@st.composite
def configs(draw):
    groups = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 4), max_size=3)))
    channels = groups * draw(st.integers(1 if any(n > 1 for n in spatial) else 2, 3))  # torch wants 2+ values a group
    affine = draw(st.sampled_from(["both", "weight", "bias"]))
    return draw(st.integers(1, 3)), channels, spatial, groups, affine


@SETTINGS
@given(config=configs())
def test_backward_equals_torch_and_hands_over_per_example_grads(config):
    batch, channels, spatial, groups, affine = config
    torch.manual_seed(0)
    x = (torch.randn(batch, channels, *spatial) * 3 + 1).requires_grad_()
    weight = torch.randn(channels, requires_grad=True) if affine != "bias" else None
    bias = torch.randn(channels, requires_grad=True) if affine != "weight" else None
    readout = torch.randn(batch, channels, *spatial)
    handed = {}

    def hand_over(grads, d):
        handed.update(grads, d=d)

    got_out = _norm_native.GroupNormHandingOver.apply(x, weight, bias, groups, 1e-5, hand_over)
    # torch 2.13's backward without a weight fails ("tensor does not have a device"): a scale of 1
    want_out = F.group_norm(x, groups, torch.ones(channels) if weight is None else weight, bias, 1e-5)
    assert_close("output", got_out, want_out, "fused forward")
    params = [t for t in (x, weight, bias) if t is not None]
    got = torch.autograd.grad((got_out * readout).sum(), params)
    want = torch.autograd.grad((want_out * readout).sum(), params)
    for name, g, w in zip(("input", "weight", "bias"), got, want):
        assert_close(f"gradient of the {name}", g, w, "fused backward")
    assert_close("handed output gradient", handed["d"], readout, "fused backward")
    x_hat = F.group_norm(x.detach(), groups, eps=1e-5)
    positions = tuple(range(2, x.dim()))
    expected = {"weight": (readout * x_hat).sum(positions) if positions else readout * x_hat,
                "bias": readout.sum(positions) if positions else readout}
    for name in ("weight", "bias"):
        if (weight if name == "weight" else bias) is not None:
            assert_close(f"per-example {name} gradient", handed[name], expected[name], "hand-over")
        else:
            assert name not in handed


def test_hands_over_once():
    """A second backward through a kept graph only needs the input gradient."""
    x = torch.randn(3, 4, 5, requires_grad=True)
    calls = []
    out = _norm_native.GroupNormHandingOver.apply(x, torch.ones(4), torch.zeros(4), 2, 1e-5, lambda g, d: calls.append(g))
    first = torch.autograd.grad(out.pow(2).sum(), x, retain_graph=True)
    second = torch.autograd.grad(out.pow(2).sum(), x)
    assert len(calls) == 1
    assert_close("input gradient", second[0], first[0], "second backward")


def conv_group_norm(groups: int = 2) -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(groups, 4), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 5 * 4, 3))
    with torch.no_grad():
        model[1].weight.normal_(), model[1].bias.normal_()
    return model


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def batch(n: int = 4):
    torch.manual_seed(2)
    return torch.randn(n, 2, 5, 4), torch.randint(0, 3, (n,))


def _rule_path_broken(*args, **kwargs):
    raise AssertionError("the GroupNorm rule ran; the fused backward should have handed its grads over")


def test_engine_takes_the_handed_grads(monkeypatch):
    """Behind a convolution the GroupNorm's per-example grads come from its backward: with the
    rule's own path broken, every per-layer strategy still equals the references."""
    monkeypatch.setattr(norms, "_grouped_affine_grads", _rule_path_broken)
    check_against_references(conv_group_norm(), xent, *batch())


@pytest.mark.parametrize("case", ["shared", "channels_last", "subclass", "frozen_weight", "one_group"])
def test_cases_off_the_fused_path_equal_the_references(case, monkeypatch):
    """A layer called twice, channels-last input, a subclass with its own forward: the rule's
    path, same results; a frozen weight and one group stay on the fused path (the rule's own
    path is broken for them)."""
    if case in ("frozen_weight", "one_group"):
        monkeypatch.setattr(norms, "_grouped_affine_grads", _rule_path_broken)
    model = conv_group_norm(1 if case == "one_group" else 2)
    x, y = batch()
    if case == "shared":
        norm = model[1]
        model = nn.Sequential(model[0], norm, nn.Tanh(), norm, *model[2:])
    elif case == "channels_last":
        model[0] = model[0].to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif case == "subclass":
        class Logged(nn.GroupNorm):  # its own forward, which the fused one must not bypass
            def forward(self, x):
                self.seen = x.shape
                return super().forward(x)

        logged = Logged(2, 4)
        logged.load_state_dict(model[1].state_dict())
        model[1] = logged
    elif case == "frozen_weight":
        model[1].weight.requires_grad_(False)
    check_against_references(model, xent, x, y)
    if case == "subclass":
        assert model[1].seen == (4, 4, 5, 4)


def test_forward_is_restored_even_when_the_loss_fails():
    model = conv_group_norm()

    def failing(out, y):
        raise RuntimeError("loss failed")

    engine = clipping.ClippingEngine(model, "auto")
    with pytest.raises(RuntimeError, match="loss failed"):
        engine.clipped_grad_sum(failing, *batch(), 1.0)
    assert "forward" not in vars(model[1])
    engine.clipped_grad_sum(xent, *batch(), 1.0)
    assert "forward" not in vars(model[1])


def test_float32_matches_torch():
    torch.manual_seed(3)
    x = (torch.randn(16, 32, 14, 14) * 2 + 3).float().requires_grad_()
    weight, bias = torch.randn(32).float().requires_grad_(), torch.randn(32).float().requires_grad_()
    readout = torch.randn(16, 32, 14, 14).float()
    got = torch.autograd.grad((_norm_native.GroupNormHandingOver.apply(x, weight, bias, 8, 1e-5, None) * readout).sum(),
                              [x, weight, bias])
    want = torch.autograd.grad((F.group_norm(x, 8, weight, bias, 1e-5) * readout).sum(), [x, weight, bias])
    for name, g, w in zip(("input", "weight", "bias"), got, want):
        assert ((g - w).abs().max() / w.abs().max()).item() < 1e-5, name
