"""Input patches of a convolution (im2col) for its per-example rules, in the cheapest layout.

A convolution's per-example kernel gradient is sum_t d_t x_t^T over output positions t, where
x_t is the input patch under the kernel at t. Forming the patches is a copy of prod(kernel)
times the input, and its speed depends on how long the contiguous runs it reads are:

- channels-last input (channels innermost): kernel-major patches, each a few contiguous runs
  of channels;
- otherwise channel-major patches (the weight's order), one output row at a time. With a
  stride, a row read from the input skips every s-th element; so where the kernel taps fall on
  a grid of the stride's phases, the padded input is first split by phase (x[s*u + r] -> phase
  r, position u, one copy of the input) and every tap reads a contiguous run of one phase. On
  the cnn's one-channel 8x8 stride-2 stem at batch 428 that forms the patches in 2.5 ms
  instead of 3.2 (one thread).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

Conv = nn.Conv1d | nn.Conv2d | nn.Conv3d


def pads(layer: Conv) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim, as the layer applies it."""
    if layer.padding == "valid":
        return [(0, 0)] * len(layer.kernel_size)
    if layer.padding == "same":
        totals = [dil * (k - 1) for dil, k in zip(layer.dilation, layer.kernel_size)]
        return [(t // 2, t - t // 2) for t in totals]
    return [(p, p) for p in layer.padding]


def padded(layer: Conv, a: torch.Tensor) -> torch.Tensor:
    flat = [v for pair in reversed(pads(layer)) for v in pair]
    if not any(flat):
        return a
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    return F.pad(a, flat, mode=mode)


def out_sizes(layer: Conv, padded_sizes: tuple[int, ...]) -> list[int]:
    return [
        (size - dil * (k - 1) - 1) // s + 1
        for size, k, s, dil in zip(padded_sizes, layer.kernel_size, layer.stride, layer.dilation)
    ]


def channels_last(t: torch.Tensor) -> bool:
    return t.dim() > 2 and t.shape[1] > 1 and t.stride(1) == 1 and math.prod(t.shape[2:]) > 1


def output_grads(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    """The output gradient as (B, G, T, q), a view for contiguous and channels-last layouts."""
    batch, groups = d.shape[0], layer.groups
    q = layer.out_channels // groups
    if channels_last(d):
        return d.movedim(1, -1).reshape(batch, -1, groups, q).transpose(1, 2)
    return d.reshape(batch, groups, q, -1).transpose(-1, -2)


def patches(layer: Conv, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Input patches (B, G, T, p) for any dimension, stride and dilation, and whether p runs
    (kernel..., channel) rather than the weight's (channel, kernel...); see the module docstring.
    Channel-major patches are formed as (B, G, p, T) and returned transposed (a view)."""
    x = padded(layer, a)
    batch, groups = x.shape[0], layer.groups
    per_group = x.shape[1] // groups
    out = out_sizes(layer, tuple(x.shape[2:]))
    tokens, length = math.prod(out), per_group * math.prod(layer.kernel_size)
    if per_group > 1 and channels_last(x):
        kernel, positions = _direct_dims(layer, x, out)
        dims = [(groups, per_group * x.stride(1)), *positions, *kernel, (per_group, x.stride(1))]
        return _strided(x, [(batch, x.stride(0)), *dims]).reshape(batch, groups, tokens, length), True
    taps = _phase_taps(layer) if any(s > 1 for s in layer.stride) else None
    if taps is None:
        kernel, positions = _direct_dims(layer, x, out)
    else:
        x, kernel, positions = _by_phase(layer, x, taps, out)
    dims = [(groups, per_group * x.stride(1)), (per_group, x.stride(1)), *kernel, *positions]
    view = _strided(x, [(batch, x.stride(0)), *dims])
    return view.reshape(batch, groups, length, tokens).transpose(-1, -2), False


def _direct_dims(layer: Conv, x: torch.Tensor, out: list[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(size, stride) dims of the kernel taps and output positions in the padded input itself."""
    spatial = x.stride()[2:]
    kernel = [(k, dil * st) for k, dil, st in zip(layer.kernel_size, layer.dilation, spatial)]
    return kernel, [(o, s * st) for o, s, st in zip(out, layer.stride, spatial)]


def _by_phase(layer: Conv, x: torch.Tensor, taps: list[tuple[int, int, int]], out: list[int]
              ) -> tuple[torch.Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
    """The padded input split by stride phase, (B, C, R..., U...) contiguous, and the (size,
    stride) dims of the kernel taps and output positions in it."""
    strides = layer.stride
    rows = [-(-size // s) for size, s in zip(x.shape[2:], strides)]  # U_k positions per phase
    grow = [v for size, s, u in zip(reversed(x.shape[2:]), reversed(strides), reversed(rows))
            for v in (0, u * s - size)]
    x = F.pad(x, grow) if any(grow) else x  # whole phase rows; the zeros are never read
    split = [x.shape[0], x.shape[1]]
    for u, s in zip(rows, strides):
        split += [u, s]
    x = x.reshape(split)[(slice(None), slice(None),
                          *[v for used, _, _ in taps for v in (slice(None), slice(0, used))])]
    dims = len(strides)
    phased = x.permute(0, 1, *[3 + 2 * k for k in range(dims)], *[2 + 2 * k for k in range(dims)]).contiguous()
    phase_strides, position_strides = phased.stride()[2:2 + dims], phased.stride()[2 + dims:]
    kernel = []
    for (used, per_phase, shift), phase_stride, pos_stride in zip(taps, phase_strides, position_strides):
        kernel += [(per_phase, shift * pos_stride), (used, phase_stride)]  # tap = shift index * R + phase
    return phased, kernel, list(zip(out, position_strides))


def _strided(x: torch.Tensor, dims: list[tuple[int, int]]) -> torch.Tensor:
    """A view of x's storage with these (size, stride) dims; size-1 dims after the first are
    dropped (they slow the copy down)."""
    dims = dims[:1] + [(size, stride) for size, stride in dims[1:] if size != 1]
    return x.as_strided([size for size, _ in dims], [stride for _, stride in dims], x.storage_offset())


def _phase_taps(layer: Conv) -> list[tuple[int, int, int]] | None:
    """Per spatial dim (phases read R, taps per phase, shift between taps in phase positions),
    tap j = shift index * R + phase; None when the taps do not form such a grid."""
    taps = []
    for k, s, dil in zip(layer.kernel_size, layer.stride, layer.dilation):
        if k == 1 or dil % s == 0:  # every tap on phase 0, dil / s positions apart
            taps.append((1, k, dil // s))
        elif dil == 1 and k % s == 0:  # tap j = s * shift + phase
            taps.append((s, k // s, 1))
        else:
            return None
    return taps
