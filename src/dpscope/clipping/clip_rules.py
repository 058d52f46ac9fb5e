"""How per-example gradients are bounded: flat, per-layer (per parameter group), automatic.

Each rule turns per-parameter squared norms into per-parameter example weights w (B,), so the
clipped sum is sum_i w_i g_i, and states `sensitivity`: the L2 bound on one example's weighted
contribution, which the noise must be calibrated to.

Edge cases (all rules): an example with a zero gradient gets weight 1 (flat, per-layer) and
contributes zero; max_grad_norm = 0 gives zero weights; max_grad_norm = inf gives weight 1
(the plain sum, with infinite sensitivity: only for measurements, never for private training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import torch

from dpscope.errors import ConfigError

NORM_STABILITY = 1e-6  # added to norms before dividing, as in the DP-SGD definition above


class ClipRule(Protocol):
    @property
    def sensitivity(self) -> float: ...

    def weights(self, sq_norms: Mapping[str, torch.Tensor], norms: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter weights (B,) from per-parameter squared norms and total norms (B,)."""
        ...


def weights_with_bound_scales(rule: "ClipRule", sq_norms: Mapping[str, torch.Tensor], norms: torch.Tensor,
                              bound_scales: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The rule's weights with example i's bound(s) scaled by s_i in (0, 1] (flat: min(1, s_i C /
    ||g_i||)), e.g. a smaller bound for a majority class. Computed as the rule's weights for norms
    divided by s_i, which every rule reads alike; no contribution exceeds the rule's bound, so
    the sensitivity is unchanged."""
    if bound_scales is None:
        return rule.weights(sq_norms, norms)
    scales = bound_scales.to(norms)
    return rule.weights({name: sq / scales.square() for name, sq in sq_norms.items()}, norms / scales)


def check_bound_scales(bound_scales: torch.Tensor | None, batch: int) -> None:
    """Per-example bound scales must be a (B,) tensor in (0, 1]: above 1 would raise the sensitivity."""
    if bound_scales is None:
        return
    if tuple(bound_scales.shape) != (batch,):
        raise ConfigError(f"bound_scales must have shape ({batch},), one per example, got "
                          f"{tuple(bound_scales.shape)}")
    if not bool(((bound_scales > 0) & (bound_scales <= 1)).all()):
        raise ConfigError("bound_scales must lie in (0, 1] (a scale above 1 would raise the "
                          "sensitivity above the clipping bound)")


def _flat_weights(max_grad_norm: float, norms: torch.Tensor) -> torch.Tensor:
    if math.isinf(max_grad_norm):
        return torch.ones_like(norms)
    return (max_grad_norm / (norms + NORM_STABILITY)).clamp(max=1.0)


def _check_bound(name: str, value: float) -> None:
    if not value >= 0:  # also catches NaN
        raise ConfigError(f"{name} must be >= 0 (or inf), got {value}")


@dataclass(frozen=True)
class FlatClip:
    """g_i * min(1, C / (||g_i|| + 1e-6)) over all trainable parameters (Abadi et al. 2016)."""

    max_grad_norm: float

    def __post_init__(self) -> None:
        _check_bound("max_grad_norm", self.max_grad_norm)

    @property
    def sensitivity(self) -> float:
        return float(self.max_grad_norm)

    def weights(self, sq_norms: Mapping[str, torch.Tensor], norms: torch.Tensor) -> dict[str, torch.Tensor]:
        w = _flat_weights(self.max_grad_norm, norms)
        return {name: w for name in sq_norms}


@dataclass(frozen=True)
class AutoClip:
    """Automatic clipping (Bu et al. 2023): g_i * C / (||g_i|| + stability), normalise, never clip.

    Every example's contribution has norm below C, so the sensitivity is C.
    """

    max_grad_norm: float
    stability: float = 0.01

    def __post_init__(self) -> None:
        _check_bound("max_grad_norm", self.max_grad_norm)
        if not (self.stability > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError("AutoClip needs stability > 0 and a finite max_grad_norm")

    @property
    def sensitivity(self) -> float:
        return float(self.max_grad_norm)

    def weights(self, sq_norms: Mapping[str, torch.Tensor], norms: torch.Tensor) -> dict[str, torch.Tensor]:
        w = self.max_grad_norm / (norms + self.stability)
        return {name: w for name in sq_norms}


@dataclass(frozen=True)
class PerLayerClip:
    """Each parameter group l clipped to its own bound C_l; sensitivity sqrt(sum_l C_l^2).

    `max_grad_norms` maps a parameter name or a module-path prefix (e.g. "stages.0") to C_l;
    each trainable parameter belongs to the longest key that is its name or a dotted prefix of
    it, and every trainable parameter must belong to one group ("" matches everything).
    """

    max_grad_norms: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.max_grad_norms:
            raise ConfigError("PerLayerClip needs at least one group in max_grad_norms")
        for key, bound in self.max_grad_norms.items():
            _check_bound(f"max_grad_norms[{key!r}]", bound)

    @property
    def sensitivity(self) -> float:
        return math.sqrt(sum(c * c for c in self.max_grad_norms.values()))

    def group_of(self, param_name: str) -> str:
        matches = [k for k in self.max_grad_norms if k == "" or param_name == k or param_name.startswith(k + ".")]
        if not matches:
            raise ConfigError(
                f"parameter '{param_name}' is in no group of PerLayerClip.max_grad_norms "
                f"({', '.join(map(repr, self.max_grad_norms))}); add its module path or ''"
            )
        return max(matches, key=len)

    def weights(self, sq_norms: Mapping[str, torch.Tensor], norms: torch.Tensor) -> dict[str, torch.Tensor]:
        groups = {name: self.group_of(name) for name in sq_norms}
        group_sq: dict[str, torch.Tensor] = {}
        for name, sq in sq_norms.items():
            group_sq[groups[name]] = group_sq.get(groups[name], 0) + sq
        group_w = {g: _flat_weights(self.max_grad_norms[g], sq.sqrt()) for g, sq in group_sq.items()}
        return {name: group_w[groups[name]] for name in sq_norms}


def as_clip_rule(clip: ClipRule | float) -> ClipRule:
    """A number means FlatClip(number)."""
    if isinstance(clip, (int, float)):
        return FlatClip(float(clip))
    return clip
