"""LayerNorm, GroupNorm and InstanceNorm with an affine part.

Each normalises within one example, so with x_hat the normalised input the per-example
gradients are: weight_i = sum over positions of d_i * x_hat_i, bias_i = sum of d_i (per
channel or per normalised element). They are (B, C)-sized, so materialising them is already
the cheap path; ghost norms and weighted sums are derived from them by the engine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dpscope.clipping.registry import Grads, LayerRule


def _affine_grads(layer: nn.Module, x_hat: torch.Tensor, d: torch.Tensor, shape: tuple[int, ...], dims: tuple[int, ...]) -> Grads:
    def over_positions(t: torch.Tensor) -> torch.Tensor:
        # sum(()) would sum over everything, so no positions means no sum
        return (t.sum(dims) if dims else t).reshape(d.shape[0], *shape)

    grads = {}
    if layer.weight is not None:
        grads["weight"] = over_positions(d * x_hat)
    if layer.bias is not None:
        grads["bias"] = over_positions(d)
    return grads


def layer_norm_grads(layer: nn.LayerNorm, a: torch.Tensor, d: torch.Tensor) -> Grads:
    shape = tuple(layer.normalized_shape)
    x_hat = F.layer_norm(a, shape, None, None, layer.eps)
    # sum over every axis between the batch axis and the normalised ones
    return _affine_grads(layer, x_hat, d, shape, tuple(range(1, a.dim() - len(shape))))


def group_norm_grads(layer: nn.GroupNorm, a: torch.Tensor, d: torch.Tensor) -> Grads:
    x_hat = F.group_norm(a, layer.num_groups, None, None, layer.eps)
    return _affine_grads(layer, x_hat, d, (layer.num_channels,), tuple(range(2, a.dim())))


def instance_norm_grads(layer: nn.modules.instancenorm._InstanceNorm, a: torch.Tensor, d: torch.Tensor) -> Grads:
    spatial = tuple(range(2, a.dim()))
    if layer.training or not layer.track_running_stats:
        x_hat = F.instance_norm(a, None, None, None, None, True, 0.0, layer.eps)
    else:
        stats_shape = (1, -1) + (1,) * len(spatial)
        mean = layer.running_mean.view(stats_shape)
        var = layer.running_var.view(stats_shape)
        x_hat = (a - mean) / torch.sqrt(var + layer.eps)
    return _affine_grads(layer, x_hat, d, (layer.num_features,), spatial)


LAYER_NORM = LayerRule("layer_norm", layer_norm_grads, rows_as_positions=True)
GROUP_NORM = LayerRule("group_norm", group_norm_grads)
INSTANCE_NORM = LayerRule("instance_norm", instance_norm_grads)
