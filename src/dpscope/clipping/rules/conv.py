"""nn.Conv1d / Conv2d / Conv3d with any stride, padding (ints, "same", "valid", any padding
mode), dilation, groups, with or without bias.

A convolution is a linear layer applied at every output position t to the input patch x_t
(im2col, formed in `_conv_patches`), so per example grad W_i = sum_t d_it x_it^T per group and
the linear layer's ghost norm applies with positions t (Lee & Kifer 2021; Li et al. 2022). `crb_grads` gets the
per-example kernel gradients as ONE grouped convolution one dimension higher (Rochette et al.
2019): channels-in-group become a depth axis, groups = B*G, stride and dilation swap roles.
`batched_grads` runs the layer's own weight-gradient kernel once with the batch folded into
the groups (the fastest way to materialise when there are many positions). On the CPU a C
kernel (`_conv_native`) forms the gradients, or only their norms, without patches where it is
faster still. The weighted sum runs the ordinary weight-gradient kernel on w_i-scaled output
gradients.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from dpscope.clipping.memory import slice_bytes
from dpscope.clipping.registry import Grads, LayerRule
from dpscope.clipping.rules._common import MATERIALIZED_ENTRY_COST, sequence_ghost_sq_norm
from dpscope.clipping.rules import _conv_native
from dpscope.clipping.rules._conv_patches import Conv, channels_last, output_grads, padded, patches


def _as_weight(layer: Conv, grads: torch.Tensor, kernel_major: bool) -> torch.Tensor:
    """(B, G, q, p) per-example kernel gradients -> (B, *weight.shape), a view (a copy for
    channel-major ones with groups > 1, which are stored (B, G, p, q))."""
    batch = grads.shape[0]
    if not kernel_major:
        return grads.reshape(batch, *layer.weight.shape)
    return grads.reshape(batch, layer.out_channels, *layer.kernel_size, -1).movedim(-1, 2)


def _bias_grads(layer: Conv, d: torch.Tensor) -> torch.Tensor:
    return d.sum(dim=tuple(range(2, d.dim())))  # (B, out), in any memory layout


def _with_bias(layer: Conv, d: torch.Tensor, weight: torch.Tensor) -> Grads:
    """Per-example grads of the layer: `weight`'s, and the bias's if it has one."""
    grads = {"weight": weight}
    if layer.bias is not None:
        grads["bias"] = _bias_grads(layer, d)
    return grads


def _sizes(layer: Conv, d: torch.Tensor) -> tuple[int, int, int]:
    """(positions T, patch length p, outputs q) per group: the layer as a linear one at T positions."""
    tokens = math.prod(d.shape[2:])
    p = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return tokens, p, layer.out_channels // layer.groups


def _batch_slices(layer: Conv, d: torch.Tensor) -> list[slice]:
    """Batch slices whose unfolded patches (prod(kernel) times the input) stay within the
    device's slice bytes (`clipping.memory.slice_bytes`)."""
    per_example = layer.in_channels * math.prod(layer.kernel_size) * math.prod(d.shape[2:])
    step = max(1, slice_bytes(d.device) // d.element_size() // max(1, per_example))
    return [slice(start, start + step) for start in range(0, d.shape[0], step)]


def per_example_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Patches + one matmul per batch slice. Channel-major patches (p, T) multiply as X D into
    (p, q) blocks, returned transposed: for the cnn's stem (q 16, T 196, p 64; 428 examples in
    blocks of 34 or 64) that took 2.5 and 2.1 ms against 6.1 and 3.2 for D^T X^T into (q, p)
    (one thread); kernel-major ones (T, p) as D^T X, the faster order for them."""
    grads_out = output_grads(layer, d)  # (B, G, T, q)
    batch, groups, _, q = grads_out.shape
    p = layer.weight[0].numel()
    weight, kernel_major = grads_out.new_empty(batch, groups, p, q), False  # kept if no slice
    for k, sl in enumerate(_batch_slices(layer, d)):
        x, kernel_major = patches(layer, a[sl])  # (b, G, T, p); the same order for every slice
        if k == 0 and kernel_major:
            weight = grads_out.new_empty(batch, groups, q, p)
        if kernel_major:
            torch.matmul(grads_out[sl].transpose(-1, -2), x, out=weight[sl])
        else:
            torch.matmul(x.transpose(-1, -2), grads_out[sl], out=weight[sl])
    return _with_bias(layer, d, _as_weight(layer, weight if kernel_major else weight.transpose(-1, -2), kernel_major))


def crb_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Rochette et al. 2019; Conv3d would need a 4-d convolution, so it forms patches instead."""
    dims = len(layer.kernel_size)
    if dims == 3:
        return per_example_grads(layer, a, d)
    x = padded(layer, a)
    batch, groups = x.shape[0], layer.groups
    per_group = x.shape[1] // groups
    inputs = x.reshape(1, batch * groups, per_group, *x.shape[2:])  # depth axis = channel in group
    kernel = d.reshape(batch * layer.out_channels, 1, 1, *d.shape[2:])
    conv = F.conv2d if dims == 1 else F.conv3d
    out = conv(inputs, kernel, groups=batch * groups, stride=(1, *layer.dilation), dilation=(1, *layer.stride))
    for axis, k in enumerate(layer.kernel_size):
        out = out.narrow(3 + axis, 0, k)  # (1, B*out, C/G, k...)
    return _with_bias(layer, d, out.reshape(batch, *layer.weight.shape))


# The C kernel does T*p*q multiply-adds per example for a norm or a materialised gradient,
# against T^2*(p+q) for a Gram ghost norm and T*p*q for unfolding, but at a better rate:
# `costs` divides its counts by this factor. Measured on one thread (session 16), final code:
# between the materialised path (kernel, norm, stored sum) and ghost norm + contraction it picks
# the faster on 9 of 10 convolutions on small maps (9-64 positions, 16-256 channels, batch
# 64-428); the miss is 16 channels at 9 positions (ghost 0.50 ms against 0.44), and 64 channels
# at 36 positions is a tie (6.4 ms). Between kernel and Gram norms, before the kernel's wider
# tiles (which made it 10-20 % faster from 32 output channels on), it picked the faster on 11
# of 13 convolutions (1-256 channels, 1-1024 positions, batch 32-428), the two others near ties
# (64 channels at 16 positions: Gram 1.97 ms against 1.76; 128 at 4: 4.47 against 3.69); WRN's
# 128-256-channel layers at 64 positions keep Gram norms, which took half the kernel's time.
NATIVE_SPEEDUP = 1.8


def _norm_counts(layer: Conv, d: torch.Tensor) -> tuple[int, int]:
    """Multiply-adds per example and group of (Gram ghost norm, the C kernel's norm)."""
    tokens, p, q = _sizes(layer, d)
    return tokens * tokens * (p + q), tokens * p * q


def _native_norms(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> bool:
    gram, kernel = _norm_counts(layer, d)
    return kernel <= NATIVE_SPEEDUP * gram and _conv_native.applies(layer, a)


def _gram_sq_norms(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    grads_out = output_grads(layer, d)  # (B, G, T, q)
    parts = []
    for sl in _batch_slices(layer, d):
        x, _ = patches(layer, a[sl])  # (b, G, T, p); the patch order leaves the norm unchanged
        parts.append(sequence_ghost_sq_norm(x.flatten(0, 1), grads_out[sl].flatten(0, 1)))
    per_group = torch.cat(parts) if parts else d.new_zeros(0)
    return per_group.view(a.shape[0], layer.groups).sum(1)


def ghost_sq_norms(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """Per-example squared norms without storing per-example gradients: by the C kernel, which
    forms them block by block in registers, where the cost model says it is faster
    (NATIVE_SPEEDUP); else from Gram matrices of patches and output gradients."""
    weight = _conv_native.per_example_sq_norms(layer, a, d) if _native_norms(layer, a, d) else _gram_sq_norms(layer, a, d)
    norms = {"weight": weight}
    if layer.bias is not None:
        norms["bias"] = _bias_grads(layer, d).square().sum(1)
    return norms


def _weight_grad(layer: Conv, a: torch.Tensor, d: torch.Tensor, groups_per_group: int = 1) -> torch.Tensor:
    """The layer's own weight-gradient kernel; with groups_per_group = B the batch is folded
    into the channels (input (1, B*C, ...), output gradient (1, B*out, ...), groups B*G), so the
    result (B*out, C/G, k...) holds every example's kernel gradient."""
    dims = len(layer.kernel_size)
    symmetric = layer.padding_mode == "zeros" and not isinstance(layer.padding, str)
    x, padding = (a, list(layer.padding)) if symmetric else (padded(layer, a), [0] * dims)
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
    return _with_bias(layer, d, _weight_grad(layer, a, d, a.shape[0]).view(a.shape[0], *layer.weight.shape))


STEM_CHANNELS = 4  # input channels up to which fastest_grads unfolds (measured at 1 and 3; 4 for RGBA)


def _unfolds(layer: Conv, d: torch.Tensor) -> bool:
    """Where fastest_grads forms patches (or runs the C kernel) rather than batched_grads."""
    tokens, patch, _ = _sizes(layer, d)
    return channels_last(d) or layer.in_channels <= STEM_CHANNELS or 2 * tokens < patch


def by_native_kernel(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> bool:
    """fastest_grads runs a C kernel: no patches, no scratch beyond the gradients."""
    return (_unfolds(layer, d) or _conv_native.by_rows(layer, a, d)) and _conv_native.applies(layer, a)


def fastest_grads(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> Grads:
    """`per_example_grads` (patches + matmul) for channels-last tensors, for stems (at most
    STEM_CHANNELS input channels) and where positions T < half the patch length p; else
    `batched_grads`. The C kernels (`_conv_native`, CPU, groups 1, 1-d and 2-d) go first where
    it would unfold, and on stride-1 NCHW layers of enough positions and at most 64 channels
    (the rows kernel). Where it would unfold, at batch 428, one thread: 1.9 ms instead of 8.5 on
    the cnn's stem and 2.0 instead of 3.9 on its second convolution; on resnet20's 16-64-channel
    layer shapes in channels-last order at batch 128, 1.4-3.1x faster (session 16). The rows
    kernel beat the grouped kernel on resnet20's 16-channel layers at 28 px (17.6 against 34.1
    ms, batch 428) and tied it at 32 channels and 14 px (session 17; `_conv_native`).

    Measured on CPU (CIFAR ResNet/WRN layers, NCHW): the grouped weight-gradient kernel is
    2-4x faster than unfolding at T = 256-1024, but 3x slower at T = 64 with p = 576, where the
    unfold copy is small. On stems it is slower: 1.1-1.8x on 3x3 and 5x5 stems of 1 and 3
    channels at 28-64 px, batch 64-428, a tie on a 7x7 stride-2 RGB stem at 64 px (one thread,
    session 15). Depthwise layers are no stems: there batched_grads was 1.6-4.4x faster (32-128
    channels, batch 128).
    Channels-last, folding the batch into the channels copies A and D to NCHW first, while the
    kernel-major patches read A in order: unfolding measured 1.1-2.3x faster on the cnn's and
    resnet20's layers at batch 428.
    """
    unfolds = _unfolds(layer, d)
    if unfolds or _conv_native.by_rows(layer, a, d):
        if (native := _conv_native.per_example_grads(layer, a, d)) is not None:
            return _with_bias(layer, d, native)
    return per_example_grads(layer, a, d) if unfolds else batched_grads(layer, a, d)


def weighted_grad_sum(layer: Conv, a: torch.Tensor, d: torch.Tensor, weights: Grads) -> Grads:
    sums = {}
    if "weight" in weights:
        scaled = d * weights["weight"].view(-1, *([1] * (d.dim() - 1)))
        sums["weight"] = _weight_grad(layer, a, scaled)
    if "bias" in weights and layer.bias is not None:
        sums["bias"] = weights["bias"] @ _bias_grads(layer, d)
    return sums


def costs(layer: Conv, a: torch.Tensor, d: torch.Tensor) -> tuple[float, float]:
    _, p, q = _sizes(layer, d)
    gram, contraction = _norm_counts(layer, d)  # the kernel's count is the contraction's, T p q
    ghost = (contraction / NATIVE_SPEEDUP if _native_norms(layer, a, d) else gram) + contraction
    materialize = contraction + MATERIALIZED_ENTRY_COST * p * q
    if by_native_kernel(layer, a, d):
        materialize /= NATIVE_SPEEDUP
    return float(ghost * layer.groups), float(materialize * layer.groups)


RULE = LayerRule("conv", per_example_grads, ghost_sq_norms, weighted_grad_sum, costs, crb_grads, fastest_grads,
                 scratch_free=by_native_kernel)
