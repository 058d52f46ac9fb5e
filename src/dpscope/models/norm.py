"""Normalisation that keeps examples independent, as per-example DP requires.

BatchNorm mixes the examples of a batch (each output depends on the whole batch) and keeps
running statistics computed from private data, so a per-example gradient is not defined and the
clipping bound does not bound one example's influence. GroupNorm normalises each example on its
own. `replace_batchnorm` swaps one for the other; `assert_dp_compatible` refuses a model that
still has BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.errors import ConfigError

_GROUP_CANDIDATES = (32, 16, 8, 4, 2, 1)


def group_count(channels: int) -> int:
    """The largest of 32, 16, 8, 4, 2, 1 that divides `channels` (32 groups is GroupNorm's default)."""
    return next(g for g in _GROUP_CANDIDATES if channels % g == 0)


def group_norm(channels: int, *, channels_per_group: int | None = None) -> nn.GroupNorm:
    """A GroupNorm over `channels`: `group_count` groups, or groups of `channels_per_group`."""
    if channels_per_group is None:
        return nn.GroupNorm(group_count(channels), channels)
    if channels % channels_per_group != 0:
        raise ConfigError(
            f"GroupNorm with groups of {channels_per_group} channels cannot split {channels} "
            "channels; use a width divisible by the group size"
        )
    return nn.GroupNorm(channels // channels_per_group, channels)


def batchnorm_paths(model: nn.Module) -> list[str]:
    """Module paths ('' for the root) of every BatchNorm layer in `model`."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def replace_batchnorm(model: nn.Module) -> list[str]:
    """Swap every BatchNorm{1,2,3}d (and SyncBatchNorm) in `model` for a GroupNorm, in place.

    The GroupNorm has `group_count(channels)` groups and the BatchNorm's `eps`; when the
    BatchNorm is affine its per-channel scale and shift are copied (they mean the same thing in
    both layers), so a trained model keeps its learned affine part. Running statistics are
    dropped. Returns the module paths that were replaced, in model order.
    """
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ConfigError(
            "the model itself is a BatchNorm layer and cannot be replaced in place; "
            "use nn.GroupNorm directly"
        )
    replaced = []
    for path in batchnorm_paths(model):
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        bn = getattr(parent, attr)
        gn = nn.GroupNorm(group_count(bn.num_features), bn.num_features, eps=bn.eps, affine=bn.affine)
        if bn.affine:
            gn.to(bn.weight)  # same device and dtype
            with torch.no_grad():
                gn.weight.copy_(bn.weight)
                gn.bias.copy_(bn.bias)
        setattr(parent, attr, gn)
        replaced.append(path)
    return replaced


def assert_dp_compatible(model: nn.Module) -> None:
    """Raise ConfigError naming every BatchNorm module: they break per-example privacy."""
    paths = batchnorm_paths(model)
    if paths:
        shown = ", ".join(p or "<root>" for p in paths)
        raise ConfigError(
            f"BatchNorm mixes examples and cannot be trained with per-example DP; found at: {shown}; "
            "call dpscope.models.replace_batchnorm(model) to swap them for GroupNorm"
        )
