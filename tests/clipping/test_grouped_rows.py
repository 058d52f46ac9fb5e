"""Grouped rows (augmentation multiplicity): B examples of K rows each. Every strategy's norms,
losses and clipped sums equal an independent reference: per example, autograd of the MEAN loss
over its K rows, then clipped with min(1, C / (||g_i|| + 1e-6)). float64 (conftest)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from dpscope import clipping
from dpscope.errors import ConfigError
from dpscope.models import build_model
from dpscope.models.vit import ClassToken, PositionEmbedding
from tests.clipping.oracle import assert_close

# (examples B, rows per example K): K 1-3 and B 0, 1, 3, without the full product (time)
SHAPES = [(0, 2), (1, 1), (1, 3), (3, 2), (3, 3)]


def probe_loss(out, _targets):
    readout = torch.linspace(-1, 1, out[0].numel(), dtype=out.dtype).reshape(out.shape[1:])
    return (torch.tanh(out) * readout).flatten(1).sum(1)


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


def reference(model, loss_fn, x, y, rows, max_grad_norm):
    """(norms (B,), losses (B,), {name: clipped sum}) from one autograd call per example."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    norms, losses = [], []
    for start in range(0, x.shape[0], rows):
        loss = loss_fn(model(x[start:start + rows]), y[start:start + rows]).mean()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]
        norm = torch.sqrt(sum(g.square().sum() for g in grads))
        weight = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for n, g in zip(params, grads):
            sums[n] += weight * g
        norms.append(norm)
        losses.append(loss.detach())
    empty = torch.zeros(0)
    return (torch.stack(norms) if norms else empty), (torch.stack(losses) if losses else empty), sums


def check_grouped(model, loss_fn, x, y, rows, strategies=clipping.STRATEGIES):
    """Every strategy against `reference`, at a bound (the median norm) that clips some examples."""
    want_norms, want_losses, _ = reference(model, loss_fn, x, y, rows, float("inf"))
    bound = float(want_norms.median()) if want_norms.numel() else 1.0
    _, _, want_sums = reference(model, loss_fn, x, y, rows, bound)
    for strategy in strategies:
        for p in model.parameters():
            p.grad = None
        engine = clipping.ClippingEngine(model, strategy)
        got = engine.clipped_grad_sum(loss_fn, x, y, clipping.FlatClip(bound), rows_per_example=rows)
        tag = f"strategy {strategy}, K={rows}, B={x.shape[0] // rows}"
        assert_close("per-example norms", got.per_example_norms, want_norms, tag)
        assert_close("per-example losses", got.per_example_losses, want_losses, tag)
        total_sq = sum(got.per_param_sq_norms.values()) if got.per_param_sq_norms else torch.zeros(0)
        assert_close("sum of per-parameter squared norms", total_sq, want_norms.square(), tag)
        for name, p in model.named_parameters():
            assert_close(f"clipped sum of {name}", p.grad, want_sums[name], tag)
        alone = engine.grad_norms(loss_fn, x, y, rows_per_example=rows).per_example_norms
        assert_close("grad_norms", alone, want_norms, tag)


def rows_of(batch: int, rows: int, *shape: int) -> torch.Tensor:
    return torch.randn(batch * rows, *shape)


def randomized(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


@pytest.mark.parametrize("batch, rows", SHAPES)
@pytest.mark.parametrize("lead", [(), (2,)])
def test_linear_on_vectors_and_sequences(batch, rows, lead):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    check_grouped(model, probe_loss, rows_of(batch, rows, *lead, 4), torch.zeros(batch * rows), rows)


CONVS = [
    lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1),
    lambda: nn.Conv2d(4, 4, (2, 3), padding="same", groups=2, bias=False, padding_mode="reflect"),
    lambda: nn.Conv1d(2, 2, 3, dilation=2, padding=2, groups=2),
]


@pytest.mark.parametrize("batch, rows", SHAPES)
@pytest.mark.parametrize("make", range(len(CONVS)))
def test_conv_stride_padding_groups(batch, rows, make):
    torch.manual_seed(1)
    conv = CONVS[make]()
    shape = (conv.in_channels, 5) if isinstance(conv, nn.Conv1d) else (conv.in_channels, 5, 4)
    check_grouped(nn.Sequential(conv), probe_loss, rows_of(batch, rows, *shape), torch.zeros(batch * rows), rows)


@pytest.mark.parametrize("batch, rows", SHAPES)
@pytest.mark.parametrize("kind", ["layer", "group", "instance"])
def test_norm_layers(batch, rows, kind):
    torch.manual_seed(2)
    layer, shape = {
        "layer": (nn.LayerNorm(4), (3, 4)),
        "group": (nn.GroupNorm(2, 4), (4, 3, 2)),
        "instance": (nn.InstanceNorm2d(3, affine=True), (3, 4, 3)),
    }[kind]
    check_grouped(nn.Sequential(randomized(layer)), probe_loss, rows_of(batch, rows, *shape),
                  torch.zeros(batch * rows), rows)


@pytest.mark.parametrize("batch, rows", [s for s in SHAPES if s[0]])
def test_embedding_and_tokens(batch, rows):
    torch.manual_seed(3)
    model = randomized(nn.Sequential(nn.Embedding(6, 3, padding_idx=0), ClassToken(3), PositionEmbedding(4, 3),
                                     nn.Linear(3, 2)))
    check_grouped(model, probe_loss, torch.randint(0, 6, (batch * rows, 3)), torch.zeros(batch * rows), rows)


SIZES = {"mlp": (1, 6), "cnn": (1, 8), "resnet20": (3, 8), "vit_tiny": (3, 8)}


@pytest.mark.slow
@pytest.mark.parametrize("name", SIZES)
@pytest.mark.parametrize("rows", (2, 3))
def test_registry_models(name, rows):
    channels, size = SIZES[name]
    torch.manual_seed(4)
    model = build_model(name, in_channels=channels, image_size=size, num_classes=3)
    batch = 2
    x = rows_of(batch, rows, channels, size, size)
    y = torch.tensor([0, 2]).repeat_interleave(rows)
    check_grouped(model, xent, x, y, rows)


def test_cnn_grouped_rows_quick():
    torch.manual_seed(5)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=2)
    x, y = rows_of(2, 2, 1, 8, 8), torch.tensor([0, 0, 1, 1])
    check_grouped(model, xent, x, y, 2, strategies=("materialize", "ghost", "auto"))


def test_rows_that_do_not_split_into_examples_are_refused():
    model = nn.Sequential(nn.Linear(2, 1))
    engine = clipping.ClippingEngine(model, "auto")
    with pytest.raises(ConfigError, match="3 input rows"):
        engine.clipped_grad_sum(probe_loss, torch.randn(3, 2), torch.zeros(3), 1.0, rows_per_example=2)
    with pytest.raises(ConfigError, match="rows_per_example"):
        engine.grad_norms(probe_loss, torch.randn(2, 2), torch.zeros(2), rows_per_example=0)


def test_one_example_moves_the_clipped_sum_by_at_most_c():
    """The guarantee augmentation multiplicity must keep: example i's K rows together contribute
    at most C, however many rows and however large their gradients."""
    torch.manual_seed(6)
    model = build_model("cnn", in_channels=1, image_size=8, num_classes=2)
    x, y = rows_of(3, 4, 1, 8, 8), torch.tensor([0, 1, 1]).repeat_interleave(4)
    x[4:8] *= 1e3  # example 1's rows
    for strategy in ("auto", "ghost", "bookkeeping"):
        model.zero_grad()
        clipping.clipped_grad_sum(model, xent, x, y, 0.5, strategy, rows_per_example=4)
        with_all = {n: p.grad.clone() for n, p in model.named_parameters()}
        keep = torch.tensor([i // 4 != 1 for i in range(12)])
        clipping.clipped_grad_sum(model, xent, x[keep], y[keep], 0.5, strategy, rows_per_example=4)
        moved = torch.sqrt(sum((with_all[n] - p.grad).square().sum() for n, p in model.named_parameters()))
        assert float(moved) <= 0.5 + 1e-9
