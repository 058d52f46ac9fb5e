"""auto's memory budget (exact whatever it decides, decided once per input shape, estimator by
hand) and the memory-saving slices (exact however small)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpscope import clipping
from dpscope.clipping import memory
from dpscope.clipping.rules import _conv_native
from dpscope.clipping.strategies import layerwise
from dpscope.clipping.strategies.budget import CallFootprint, estimated_peak, saved_activation_bytes, within_budget
from dpscope.clipping.strategies.plans import MATERIALIZED, LayerPlan
from dpscope.errors import ConfigError, UnsupportedLayerError
from tests.clipping.oracle import check_against_references

GHOST = LayerPlan("ghost", "contraction")
CONVS = ("0", "3")


@pytest.fixture(autouse=True)
def torch_ops_only(monkeypatch):
    """The planner's decisions below follow the cost model of torch ops; the C kernel's own
    (cheaper norms and materialisation) are pinned in test_conv_native.py."""
    monkeypatch.setattr(_conv_native, "applies", lambda *args: False)


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def conv_net() -> nn.Module:
    """Convolutions on 4x4 maps: auto materialises them for time (T^2 (p+q) > 24 p q), and a
    per-example kernel gradient (584 numbers) outweighs their input and output (128 each), so
    moving them to book-keeping frees memory."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    )


def data(n: int = 5):
    torch.manual_seed(1)
    return torch.randn(n, 8, 4, 4), torch.randint(0, 3, (n,))


def plans_of(max_extra_bytes) -> dict[str, LayerPlan]:
    engine = clipping.ClippingEngine(conv_net(), "auto", max_extra_bytes=max_extra_bytes)
    engine.grad_norms(xent, *data())
    (plans,) = engine.layer_plans().values()
    return plans


def test_without_budget_auto_materialises_the_convolutions():
    plans = plans_of(None)
    assert all(plans[c].total == "stored" for c in CONVS), plans
    assert plans_of(10**12) == plans  # a budget nothing reaches changes nothing


def test_zero_budget_moves_every_convolution_to_bookkeeping():
    plans = plans_of(0)
    assert all(plans[c] == GHOST for c in CONVS), plans


@pytest.mark.parametrize("max_extra_bytes", [0, 10**12, None, "auto"])
def test_norms_and_clipped_sums_equal_the_references_whatever_the_budget(max_extra_bytes):
    x, y = data()
    check_against_references(conv_net(), xent, x, y, strategies=("auto",), max_extra_bytes=max_extra_bytes)


def test_decided_once_per_input_shape(monkeypatch):
    decisions = []
    monkeypatch.setattr(layerwise, "within_budget", lambda *args: decisions.append(args[-1]))
    engine = clipping.ClippingEngine(conv_net(), "auto", max_extra_bytes=0)
    x, y = data(5)
    for _ in range(3):
        engine.clipped_grad_sum(xent, x, y, 1.0)
    assert len(decisions) == 1
    engine.clipped_grad_sum(xent, *data(3), 1.0)
    assert len(decisions) == 2
    assert [key[0] for key in engine.layer_plans()] == [(5, 8, 4, 4), (3, 8, 4, 4)]


def test_budget_option_is_checked():
    for bad in (-1, "big", True, 1.5):
        with pytest.raises(ConfigError, match="max_extra_bytes"):
            clipping.ClippingEngine(conv_net(), "auto", max_extra_bytes=bad)


def test_estimated_peak_by_hand():
    # forward order: slot 0 (input 10 bytes), slot 1 (input 30 bytes); activations 80 bytes
    calls = [CallFootprint(0, 10, kept_bytes=5, materialized_bytes=50), CallFootprint(1, 30, kept_bytes=7, materialized_bytes=40)]
    # backward: slot 1 first: alive 80, held 40 -> 120; then slot 0: alive 80 - 60 = 20, held 90 -> 110
    assert estimated_peak(calls, {0: MATERIALIZED, 1: MATERIALIZED}, 80.0) == (120.0, 1)
    # slot 1 on book-keeping keeps 7 bytes: 87, then 20 + 57 = 77
    assert estimated_peak(calls, {0: MATERIALIZED, 1: GHOST}, 80.0) == (87.0, 1)


def test_within_budget_moves_the_layer_that_frees_most_first_and_stops_when_it_fits():
    calls = [CallFootprint(0, 10, 5, 50), CallFootprint(1, 10, 5, 100), CallFootprint(2, 10, 5, 30)]
    movable = {0: GHOST, 1: GHOST, 2: GHOST}
    plans = {0: MATERIALIZED, 1: MATERIALIZED, 2: MATERIALIZED}
    within_budget(calls, plans, dict(movable), 30.0, max_extra_bytes=100)  # peak 180 -> 85 after moving slot 1
    assert plans == {0: MATERIALIZED, 1: GHOST, 2: MATERIALIZED}
    plans = {0: MATERIALIZED, 1: MATERIALIZED, 2: MATERIALIZED}
    within_budget(calls, plans, {2: GHOST}, 30.0, max_extra_bytes=0)  # only slot 2 may move
    assert plans == {0: MATERIALIZED, 1: MATERIALIZED, 2: GHOST}
    plans = {0: MATERIALIZED}
    within_budget(calls[:1], plans, {0: GHOST}, 30.0, max_extra_bytes=None)  # no budget: untouched
    assert plans == {0: MATERIALIZED}


def test_saved_activation_bytes_counts_and_still_refuses_in_place_edits():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    with saved_activation_bytes() as total:
        h = x @ w  # saves x (w is a parameter: not counted)
        out = h.sin()  # saves h
    assert total[0] == 2 * 8 * 4 * 8  # float64 under the test fixture
    out.sum().backward()
    with saved_activation_bytes():
        h = x @ w
        out = h.sin()
        h.mul_(2)
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()


@pytest.mark.parametrize("max_extra_bytes", [0, None])
def test_input_edited_in_place_after_the_layer_used_it_is_refused(max_extra_bytes):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = torch.tanh(x)
            out = self.first(h)
            h.mul_(2)  # the first layer's input, after the layer read it
            return self.second(out) + h[:, :3]

    torch.manual_seed(0)
    engine = clipping.ClippingEngine(Net(), "auto", max_extra_bytes=max_extra_bytes)
    with pytest.raises(UnsupportedLayerError, match="'first'"):
        engine.clipped_grad_sum(xent, torch.randn(3, 4), torch.tensor([0, 1, 2]), 1.0)


def test_one_example_slices_for_unfolding_and_storing_are_exact(monkeypatch):
    monkeypatch.setitem(memory.SLICE_BYTES, "cpu", 1)  # unfolding and storing alike
    monkeypatch.setitem(memory.SLICE_BYTES, "cuda", 1)
    x, y = data()
    check_against_references(conv_net(), xent, x, y, strategies=("materialize", "bookkeeping", "auto"))


def test_many_positions_move_to_materialised_norms_with_contracted_sums_exactly():
    """On 8x8 maps a 32-channel convolution's ghost norm costs more than twice materialising,
    so the budget keeps materialised norms (a slice at a time) and contracts the sum."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.Flatten(), nn.Linear(32 * 64, 3)
    )
    x, y = torch.randn(4, 32, 8, 8), torch.tensor([0, 1, 2, 0])
    engine = clipping.ClippingEngine(model, "auto", max_extra_bytes=0)
    engine.grad_norms(xent, x, y)
    (plans,) = engine.layer_plans().values()
    assert all(plans[c].total == "contraction" and plans[c].norm != "ghost" for c in ("0", "2")), plans
    check_against_references(model, xent, x, y, strategies=("auto",), max_extra_bytes=0)
