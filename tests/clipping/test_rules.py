"""Every layer rule under every strategy equals the naive and vmap references, over drawn shapes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dpscope.clipping.rules import _conv_patches as conv_patches
from dpscope.clipping.rules import conv as conv_rule
from dpscope.clipping.rules import norms
from dpscope.models.vit import ClassToken, PositionEmbedding
from tests.clipping.oracle import assert_close, check_against_references

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


def probe_loss(out, _targets):
    readout = torch.linspace(-1, 1, out[0].numel(), dtype=out.dtype).reshape(out.shape[1:])
    return (torch.tanh(out) * readout).flatten(1).sum(1)


def check_layer(layer: nn.Module, x: torch.Tensor) -> None:
    model = nn.Sequential(layer)
    check_against_references(model, probe_loss, x, torch.zeros(x.shape[0]))


batch_sizes = st.sampled_from([0, 1, 3])


@SETTINGS
@given(batch=batch_sizes, lead=st.lists(st.integers(1, 3), max_size=2), p=st.integers(1, 5), q=st.integers(1, 4), bias=st.booleans())
def test_linear_on_vectors_and_sequences(batch, lead, p, q, bias):
    torch.manual_seed(0)
    check_layer(nn.Linear(p, q, bias=bias), torch.randn(batch, *lead, p))


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    same = draw(st.booleans())
    stride = (1,) * dims if same else tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = "same" if same else tuple(draw(st.integers(0, 2)) for _ in range(dims))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "circular"]))
    size = 5  # >= the largest dilated kernel, 2 * (3 - 1) + 1
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](
        c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
        bias=draw(st.booleans()), padding_mode=mode,
    )
    return conv, (c_in,) + (size,) * dims


def channels_innermost(t: torch.Tensor) -> torch.Tensor:
    """The same values with channels innermost in memory (channels-last, for any dimension)."""
    return t.movedim(1, -1).contiguous().movedim(-1, 1)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, derandomize=True)
@given(batch=batch_sizes, config=conv_configs(), channels_last=st.booleans())
def test_conv_every_option(batch, config, channels_last):
    """Both input layouts: channels-last input gives kernel-major patches (rules/conv.py)."""
    torch.manual_seed(1)
    conv, in_shape = config
    x = torch.randn(batch, *in_shape)
    if channels_last:
        x = channels_innermost(x)
    check_layer(conv, x)
    if batch == 0:  # the engine never calls a rule on an empty batch
        return
    d = torch.randn_like(conv(x))
    if channels_last:
        d = channels_innermost(d)
    want = conv_rule.per_example_grads(conv, x, d)  # checked against naive just above
    for method in (conv_rule.batched_grads, conv_rule.crb_grads, conv_rule.fastest_grads):
        for name, g in method(conv, x, d).items():
            assert_close(name, g, want[name], method.__name__)


@pytest.mark.parametrize("make_conv", [
    lambda: nn.Conv1d(6, 4, 3, stride=2, dilation=2, groups=2),
    lambda: nn.Conv2d(6, 4, (3, 2), stride=(2, 1), padding=1, groups=2),
    lambda: nn.Conv2d(16, 8, 4, stride=2),  # the cnn's second convolution, smaller
    lambda: nn.Conv3d(4, 2, 2, padding=1, dilation=(1, 2, 1)),
])
def test_conv_on_channels_last_input_forms_kernel_major_patches(make_conv):
    torch.manual_seed(2)
    conv = make_conv()
    x = channels_innermost(torch.randn(3, conv.in_channels, *(7,) * (conv.weight.dim() - 2)))
    assert conv_patches.patches(conv, x)[1]  # the kernel-major path is the one checked
    check_layer(conv, x)
    d = channels_innermost(torch.randn_like(conv(x)))
    want = conv_rule.per_example_grads(conv, x.contiguous(), d.contiguous())
    for name, g in conv_rule.per_example_grads(conv, x, d).items():
        assert_close(name, g, want[name], "channels-last")


@pytest.mark.parametrize("make_conv", [
    lambda: nn.Conv2d(1, 4, 8, stride=2, padding=3),  # the cnn's one-channel stem
    lambda: nn.Conv1d(3, 2, 4, stride=2, padding=1),
    lambda: nn.Conv2d(4, 4, (2, 3), stride=(2, 1), padding=(1, 0), groups=2),
    lambda: nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
    lambda: nn.Conv3d(2, 2, (2, 2, 1), stride=(2, 1, 3), padding=1),
])
def test_strided_conv_reads_patches_by_stride_phase(make_conv):
    """Strided kernels whose taps fall on the stride's phases form patches from the input split
    by phase (rules/_conv_patches.py): the same patches as unfolding, and exact gradients."""
    torch.manual_seed(5)
    conv = make_conv()
    assert conv_patches._phase_taps(conv) is not None
    x = torch.randn(3, conv.in_channels, *(9,) * (conv.weight.dim() - 2))
    check_layer(conv, x)
    got, kernel_major = conv_patches.patches(conv, x)
    assert not kernel_major
    if isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and conv.groups == 1:
        want = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        assert torch.equal(got[:, 0], want.transpose(1, 2))


def test_fastest_unfolds_stems_and_folds_depthwise_layers_into_groups(monkeypatch):
    """fastest_grads' choice of method (both are checked exact above): unfolding for layers on
    few input channels, the grouped weight-gradient kernel for depthwise ones (rules/conv.py)."""
    calls = []
    monkeypatch.setattr(conv_rule._conv_native, "per_example_grads", lambda *args: calls.append("native"))
    monkeypatch.setattr(conv_rule, "per_example_grads", lambda *args: calls.append("unfold"))
    monkeypatch.setattr(conv_rule, "batched_grads", lambda *args: calls.append("batched"))
    for layer in (nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1),
                  nn.Conv2d(16, 16, 3, padding=1, groups=16)):
        x = torch.randn(2, layer.in_channels, 12, 12)
        conv_rule.fastest_grads(layer, x, torch.randn_like(layer(x)))
    # the C kernel first where it applies (None: not built here), then unfolding
    assert calls == ["native", "unfold", "native", "unfold", "batched"]


@SETTINGS
@given(batch=batch_sizes, tokens=st.integers(1, 4), vocab=st.integers(2, 6), padding=st.booleans())
def test_embedding_with_padding_idx(batch, tokens, vocab, padding):
    torch.manual_seed(2)
    layer = nn.Embedding(vocab, 3, padding_idx=0 if padding else None)
    check_layer(layer, torch.randint(0, vocab, (batch, tokens)))


@SETTINGS
@given(batch=batch_sizes, kind=st.sampled_from(["layer", "layer2d", "group", "instance", "instance_eval"]), affine=st.booleans())
def test_norm_layers(batch, kind, affine):
    torch.manual_seed(3)
    if kind == "layer":
        layer, x = nn.LayerNorm(4, elementwise_affine=affine), torch.randn(batch, 3, 4)
    elif kind == "layer2d":
        layer, x = nn.LayerNorm((2, 3), elementwise_affine=affine), torch.randn(batch, 2, 3)
    elif kind == "group":
        layer, x = nn.GroupNorm(2, 4, affine=affine), torch.randn(batch, 4, 3, 2)
    else:
        layer, x = nn.InstanceNorm2d(3, affine=True, track_running_stats=kind == "instance_eval"), torch.randn(batch, 3, 4, 3)
        if kind == "instance_eval":
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
            layer.eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    if not list(layer.parameters()):
        layer = nn.Sequential(layer, nn.Linear(x.shape[-1], 2))
    check_layer(layer, x)


@st.composite
def group_norm_configs(draw):
    groups = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(2, 4), max_size=3)))  # torch wants 2+ values a group
    channels = groups * draw(st.integers(1 if spatial else 2, 3))
    instance = draw(st.booleans()) and len(spatial) in (1, 2, 3)
    if instance:  # InstanceNorm with its own statistics: a GroupNorm of one channel per group
        layer = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[len(spatial) - 1](channels, affine=True)
    else:
        layer = nn.GroupNorm(groups, channels)  # without affine it has nothing to clip
    return layer, (channels, *spatial)


@SETTINGS
@given(batch=batch_sizes, config=group_norm_configs(), kernel=st.booleans())
def test_group_norm_fused_sums(batch, config, kernel):
    """Both GroupNorm paths that never form x_hat, the C kernel (`_norm_native`, one pass) and
    torch's fused backward over the batch seen as B*C channels, over groups, 0-3 spatial axes
    and InstanceNorm."""
    layer, shape = config
    torch.manual_seed(7)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    with pytest.MonkeyPatch.context() as patch:
        if not kernel:
            patch.setattr(norms._norm_native, "group_norm_grads", lambda *args: None)
        check_layer(layer, torch.randn(batch, *shape) * 3 + 1)


def test_group_norm_kernel_keeps_float32_precision():
    """The kernel's sums are double, so a large mean against a small spread (variance as
    E[a^2] - mean^2) costs float32 inputs no precision: within 1e-6 of float64 arithmetic on
    the same values (torch's float32 statistics measured 1e-4 here)."""
    a = (torch.randn(8, 16, 9, 9) * 0.1 + 100).float()
    d = torch.randn(8, 16, 9, 9).float()
    if norms._norm_native.group_norm_grads(a, d, 4, 1e-5, True, True) is None:
        pytest.skip("no C compiler")
    want = norms.group_norm_grads(nn.GroupNorm(4, 16), a.double(), d.double())
    got = norms.group_norm_grads(nn.GroupNorm(4, 16).float(), a, d)
    for name in ("weight", "bias"):
        assert ((got[name].double() - want[name]).abs().max() / want[name].abs().max()).item() < 1e-6, name


def test_group_norm_channels_last_inputs():
    """Channels-last input and output gradient give the contiguous result. (Compared with the
    rule itself: torch 2.13's channels-last GroupNorm backward, which the references would run,
    crashed inside this test suite.)"""
    layer, a, d = nn.GroupNorm(2, 6), torch.randn(4, 6, 5, 3), torch.randn(4, 6, 5, 3)
    want = norms.group_norm_grads(layer, a, d)
    got = norms.group_norm_grads(layer, a.contiguous(memory_format=torch.channels_last),
                                 d.contiguous(memory_format=torch.channels_last))
    x_hat = torch.nn.functional.group_norm(a, 2, eps=layer.eps)
    assert_close("weight", want["weight"], (d * x_hat).sum((2, 3)), "contiguous")
    for name in ("weight", "bias"):
        assert_close(name, got[name], want[name], "channels-last")


@SETTINGS
@given(batch=batch_sizes, tokens=st.integers(1, 4))
def test_class_token_and_position_embedding(batch, tokens):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 3), ClassToken(3), PositionEmbedding(tokens + 1, 3), nn.Linear(3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    check_against_references(model, probe_loss, torch.randn(batch, tokens, 3), torch.zeros(batch))
