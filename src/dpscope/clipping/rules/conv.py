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


def unfold(layer: Conv, a: torch.Tensor) -> torch.Tensor:
    """Input patches (B, G, C/G * prod(kernel), T) for any dimension, stride and dilation."""
    x = _padded(layer, a)
    batch, channels, groups = x.shape[0], x.shape[1], layer.groups
    per_group = channels // groups
    out = _out_sizes(layer, tuple(x.shape[2:]))
    st = x.stride()
    spatial_st = st[2:]
    view = x.as_strided(
        (batch, groups, per_group, *layer.kernel_size, *out),
        (st[0], per_group * st[1], st[1],
         *(dil * s for dil, s in zip(layer.dilation, spatial_st)),
         *(stride * s for stride, s in zip(layer.stride, spatial_st))),
        x.storage_offset(),
    )
    return view.reshape(batch, groups, per_group * math.prod(layer.kernel_size), math.prod(out))


def _grouped_grad(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    batch, groups = d.shape[0], layer.groups
    return d.reshape(batch, groups, layer.out_channels // groups, -1)  # (B, G, q, T)


def _bias_grads(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    return d.reshape(d.shape[0], layer.out_channels, -1).sum(2)  # (B, out)


def _batch_slices(layer: Conv, d: torch.Tensor) -> list[slice]:
    """Batch slices whose unfolded patches (prod(kernel) times the input) stay within the
    device's slice bytes (`clipping.memory.slice_bytes`)."""
    per_example = layer.in_channels * math.prod(layer.kernel_size) * math.prod(d.shape[2:])
    step = max(1, slice_bytes(d.device) // d.element_size() // max(1, per_example))
    return [slice(start, start + step) for start in range(0, d.shape[0], step)]


def per_example_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    grouped = _grouped_grad(layer, d)  # (B, G, q, T)
    weight = grouped.new_empty(*grouped.shape[:3], layer.weight[0].numel())  # (B, G, q, p)
    for sl in _batch_slices(layer, d):
        patches = unfold(layer, a[sl])  # (b, G, p, T)
        torch.matmul(grouped[sl], patches.transpose(-1, -2), out=weight[sl])  # (b, G, q, p)
    grads = {"weight": weight.reshape(a.shape[0], *layer.weight.shape)}
    if layer.bias is not None:
        grads["bias"] = _bias_grads(layer, d)
    return grads


def crb_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Rochette et al. 2019; Conv3d would need a 4-d convolution, so it uses `unfold` instead."""
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
    d_grouped = _grouped_grad(layer, d)  # (B, G, q, T)
    parts = []
    for sl in _batch_slices(layer, d):
        patches = unfold(layer, a[sl])  # (b, G, p, T)
        parts.append(sequence_ghost_sq_norm(
            patches.transpose(-1, -2).flatten(0, 1), d_grouped[sl].transpose(-1, -2).flatten(0, 1)
        ))
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
    """`batched_grads` when positions T >= half the patch length p, else unfold + matmul.

    Measured on 2 CPU cores (CIFAR ResNet/WRN layers): the grouped weight-gradient kernel is
    2-4x faster than unfolding at T = 256-1024, but 3x slower at T = 64 with p = 576, where the
    unfold copy is small.
    """
    tokens = math.prod(d.shape[2:])
    patch = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return batched_grads(layer, a, d) if 2 * tokens >= patch else per_example_grads(layer, a, d)


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
