"""nn.Conv1d / Conv2d / Conv3d with any stride, padding (ints, "same", "valid", any padding
mode), dilation, groups, with or without bias.

A convolution is a linear layer applied at every output position t to the input patch x_t
(im2col), so per example grad W_i = sum_t d_it x_it^T per group and the linear layer's
ghost norm applies with positions t (Lee & Kifer 2021; Li et al. 2022). `crb_grads` gets the
per-example kernel gradients as ONE grouped convolution one dimension higher (Rochette et al.
2019): channels-in-group become a depth axis, groups = B*G, stride and dilation swap roles.
`batched_grads` runs the layer's own weight-gradient kernel once with the batch folded into
the groups (the fastest way to materialise when there are many positions). The weighted sum
runs the ordinary weight-gradient kernel on w_i-scaled output gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from dpscope.clipping.memory import slice_bytes
from dpscope.clipping.registry import Grads, LayerRule
from dpscope.clipping.rules._common import MATERIALIZED_ENTRY_COST, sequence_ghost_sq_norm

Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def _pads(layer: Conv) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim, as the layer applies it."""
    if layer.padding == "valid":
        return [(0, 0)] * len(layer.kernel_size)
    if layer.padding == "same":
        totals = [dil * (k - 1) for dil, k in zip(layer.dilation, layer.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in layer.padding]


def _padded(layer: Conv, a: torch.Tensor) -> torch.Tensor:
    pads = _pads(layer)
    if not any(lo or hi for lo, hi in pads):
        return a
    flat = [v for pair in reversed(pads) for v in pair]
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(a, flat, mode=mode)


def _out_sizes(layer: Conv, padded_sizes: tuple[int, ...]) -> list[int]:
    return [
        (size - dil * (k - 1) - 1) // s + 1
        for size, k, s, dil in zip(padded_sizes, layer.kernel_size, layer.stride, layer.dilation)
    ]


def patches(layer: Conv, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Input patches (B, G, T, p) for any dimension, stride and dilation (im2col), and whether
    p runs (kernel..., channel) rather than the weight's (channel, kernel...).

    The copy follows the input's memory: channels-last input (channels innermost) gives
    kernel-major patches, each a few contiguous runs of channels (measured 4-6x faster to form
    than channel-major ones for the cnn's second convolution); other input gives channel-major patches,
    formed as (B, G, p, T) and returned transposed (a view).
    """
    x = _padded(layer, a)
    batch, groups = x.shape[0], layer.groups
    per_group = x.shape[1] // groups
    out = _out_sizes(layer, tuple(x.shape[2:]))
    st, spatial_st = x.stride(), x.stride()[2:]
    kernel = [(k, dil * s) for k, dil, s in zip(layer.kernel_size, layer.dilation, spatial_st)]
    positions = [(o, stride * s) for o, stride, s in zip(out, layer.stride, spatial_st)]
    channels = [(per_group, st[1])]
    kernel_major = per_group > 1 and _channels_last(x)
    patch = kernel + channels if kernel_major else channels + kernel
    dims = [(groups, per_group * st[1])] + (positions + patch if kernel_major else patch + positions)
    dims = [(size, stride) for size, stride in dims if size != 1]  # size-1 dims slow the copy down
    view = x.as_strided((batch, *[size for size, _ in dims]), (st[0], *[stride for _, stride in dims]),
                        x.storage_offset())
    tokens, length = math.prod(out), per_group * math.prod(layer.kernel_size)
    if kernel_major:
        return view.reshape(batch, groups, tokens, length), True
    return view.reshape(batch, groups, length, tokens).transpose(-1, -2), False


def _output_grads(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    """The output gradient as (B, G, T, q), a view for contiguous and channels-last layouts."""
    batch, groups = d.shape[0], layer.groups
    q = layer.out_channels // groups
    if _channels_last(d):
        return d.movedim(1, -1).reshape(batch, -1, groups, q).transpose(1, 2)
    return d.reshape(batch, groups, q, -1).transpose(-1, -2)


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() > 2 and t.shape[1] > 1 and t.stride(1) == 1 and math.prod(t.shape[2:]) > 1


def _as_weight(layer: Conv, grads: torch.Tensor, kernel_major: bool) -> torch.Tensor:
    """(B, G, q, p) per-example kernel gradients -> (B, *weight.shape), a view."""
    batch = grads.shape[0]
    if not kernel_major:
        return grads.reshape(batch, *layer.weight.shape)
    return grads.reshape(batch, layer.out_channels, *layer.kernel_size, -1).movedim(-1, 2)


def _bias_grads(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    return d.sum(dim=tuple(range(2, d.dim())))  # (B, out), in any memory layout


def _batch_slices(layer: Conv, d: torch.Tensor) -> list[slice]:
    """Batch slices whose unfolded patches (prod(kernel) times the input) stay within the
    device's slice bytes (`clipping.memory.slice_bytes`)."""
    per_example = layer.in_channels * math.prod(layer.kernel_size) * math.prod(d.shape[2:])
    step = max(1, slice_bytes(d.device) // d.element_size() // max(1, per_example))
    return [slice(start, start + step) for start in range(0, d.shape[0], step)]


def per_example_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    grads_out = _output_grads(layer, d)  # (B, G, T, q)
    batch, groups, _, q = grads_out.shape
    weight = grads_out.new_empty(batch, groups, q, layer.weight[0].numel())  # (B, G, q, p)
    kernel_major = False
    for sl in _batch_slices(layer, d):
        x, kernel_major = patches(layer, a[sl])  # (b, G, T, p)
        torch.matmul(grads_out[sl].transpose(-1, -2), x, out=weight[sl])
    grads = {"weight": _as_weight(layer, weight, kernel_major)}
    if layer.bias is not None:
        grads["bias"] = _bias_grads(layer, d)
    return grads


def crb_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Rochette et al. 2019; Conv3d would need a 4-d convolution, so it forms patches instead."""
    dims = len(layer.kernel_size)
    if dims == 3:
        return per_example_grads(layer, a, d)
    x = _padded(layer, a)
    batch, groups = x.shape[0], layer.groups
    per_group = x.shape[1] // groups
    inputs = x.reshape(1, batch * groups, per_group, *x.shape[2:])  # depth axis = channel in group
    kernel = d.reshape(batch * layer.out_channels, 1, 1, *d.shape[2:])
    conv = F.conv2d if dims == 1 else F.conv3d
    out = conv(inputs, kernel, groups=batch * groups, stride=(1, *layer.dilation), dilation=(1, *layer.stride))
    for axis, k in enumerate(layer.kernel_size):
        out = out.narrow(3 + axis, 0, k)  # (1, B*out, C/G, k...)
    grads = {"weight": out.reshape(batch, *layer.weight.shape)}
    if layer.bias is not None:
        grads["bias"] = _bias_grads(layer, d)
    return grads


def ghost_sq_norms(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    grads_out = _output_grads(layer, d)  # (B, G, T, q)
    parts = []
    for sl in _batch_slices(layer, d):
        x, _ = patches(layer, a[sl])  # (b, G, T, p); the patch order leaves the norm unchanged
        parts.append(sequence_ghost_sq_norm(x.flatten(0, 1), grads_out[sl].flatten(0, 1)))
    per_group = torch.cat(parts) if parts else d.new_zeros(0)
    norms = {"weight": per_group.view(a.shape[0], layer.groups).sum(1)}
    if layer.bias is not None:
        norms["bias"] = _bias_grads(layer, d).square().sum(1)
    return norms


def _weight_grad(layer: Conv, a: torch.Tensor, d: torch.Tensor, groups_per_group: int = 1) -> torch.Tensor:
    """The layer's own weight-gradient kernel; with groups_per_group = B the batch is folded
    into the channels (input (1, B*C, ...), output gradient (1, B*out, ...), groups B*G), so the
    result (B*out, C/G, k...) holds every example's kernel gradient."""
    dims = len(layer.kernel_size)
    symmetric = layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
    x, padding = (a, list(layer.padding)) if symmetric else (_padded(layer, a), [0] * dims)
    if groups_per_group > 1:
        x = x.reshape(1, -1, *x.shape[2:])
        d = d.reshape(1, -1, *d.shape[2:])
    shape = (layer.out_channels * groups_per_group, *layer.weight.shape[1:])
    weight = layer.weight.new_empty(()).expand(shape)  # only its shape is read
    _, grad, _ = torch.ops.aten.convolution_backward(
        d, x, weight, None, list(layer.stride), padding, list(layer.dilation),
        False, [0] * dims, layer.groups * groups_per_group, [False, True, False],
    )
    return grad


def batched_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Per-example kernel gradients from one weight-gradient call with the batch as groups:
    about as fast as the non-private weight gradient when there are many positions."""
    grads = {"weight": _weight_grad(layer, a, d, a.shape[0]).view(a.shape[0], *layer.weight.shape)}
    if layer.bias is not None:
        grads["bias"] = _bias_grads(layer, d)
    return grads


def fastest_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """`per_example_grads` (patches + matmul) for channels-last tensors, and where positions
    T < half the patch length p; else `batched_grads`.

    Measured on CPU (CIFAR ResNet/WRN layers, NCHW): the grouped weight-gradient kernel is
    2-4x faster than unfolding at T = 256-1024, but 3x slower at T = 64 with p = 576, where the
    unfold copy is small. Channels-last, folding the batch into the channels copies A and D to
    NCHW first, while the kernel-major patches read A in order: unfolding measured 1.1-2.3x
    faster on the cnn's and resnet20's layers at batch 428.
    """
    tokens = math.prod(d.shape[2:])
    patch = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    if _channels_last(d) or 2 * tokens < patch:
        return per_example_grads(layer, a, d)
    return batched_grads(layer, a, d)


def weighted_grad_sum(layer: Conv, a: torch.Tensor, d: torch.Tensor, weights: Grads) -> Grads:
    sums = {}
    if "weight" in weights:
        scaled = d * weights["weight"].view(-1, *([1] * (d.dim() - 1)))
        sums["weight"] = _weight_grad(layer, a, scaled)
    if "bias" in weights and layer.bias is not None:
        sums["bias"] = weights["bias"] @ _bias_grads(layer, d)
    return sums


def costs(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    tokens = math.prod(d.shape[2:])
    p = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    q = layer.out_channels // layer.groups
    contraction = tokens * p * q
    ghost = tokens * tokens * (p + q) + contraction
    return float(ghost * layer.groups), float((contraction + MATERIALIZED_ENTRY_COST * p * q) * layer.groups)


RULE = LayerRule("conv", per_example_grads, ghost_sq_norms, weighted_grad_sum, costs, crb_grads, fastest_grads)
