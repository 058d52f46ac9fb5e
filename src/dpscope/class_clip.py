"""Per-class clipping bounds: example i is clipped to s_y C, a fraction s_y in (0, 1] of C set
per class y, against the pull of a majority class under DP-SGD.

When most per-example gradients are clipped, each example moves the model by about the same
amount whatever its loss, so the classes pull in proportion to their counts and a majority class
wins the decision (the disparate impact of Bagdasaryan et al. 2019). Weighting the loss cannot
fix it: clipping undoes the weight. A smaller bound for the majority class can, as group-wise
bounds do in DPSGD-F (Xu et al. 2021). Every bound is at most C, so the sensitivity, the noise
and the accounting are unchanged.

The fractions are hyper-parameters. Derived from the training labels' counts they depend on the
private data, and that dependence is not covered by epsilon: `describe` says so.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpscope.errors import ConfigError


def check_class_clip(fractions: Sequence[float]) -> tuple[float, ...]:
    """The fractions as a tuple; ValueError unless each lies in (0, 1] and the largest is 1."""
    values = tuple(float(f) for f in fractions)
    if not values:
        raise ValueError("class_clip needs one fraction of C per class, e.g. [1, 0.35]")
    if not all(0 < f <= 1 for f in values):
        raise ValueError(f"class clipping fractions must lie in (0, 1], got {list(values)} (a "
                         "bound above C would raise the sensitivity; give the largest as 1)")
    if max(values) != 1:
        raise ValueError(f"the largest class clipping fraction must be 1, got {list(values)}; divide "
                         f"them by {max(values):g} and lower --max-grad-norm instead")
    return values


def parse_class_clip(spec: str) -> tuple[float, ...]:
    """'1,0.35' -> (1.0, 0.35), for the command line; ConfigError for anything else."""
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--class-clip takes comma-separated fractions such as 1,0.35, got "
                          f"{spec!r}") from None
    try:
        return check_class_clip(values)
    except ValueError as error:
        raise ConfigError(str(error)) from None


class ClassClip:
    """Per-example bound fractions from labels, for a dataset's classes."""

    def __init__(self, fractions: Sequence[float], class_names: Sequence[str]) -> None:
        if len(fractions) != len(class_names):
            raise ConfigError(f"class_clip has {len(fractions)} fractions but the dataset has "
                              f"{len(class_names)} classes ({', '.join(class_names)}); give one each")
        self.fractions = check_class_clip(fractions)
        self.class_names = tuple(class_names)
        self._table = torch.tensor(self.fractions)

    def of(self, targets: torch.Tensor) -> torch.Tensor:
        """(B,) bound fraction of each example's class, on the targets' device."""
        if self._table.device != targets.device:  # moved once, not copied every step
            self._table = self._table.to(targets.device)
        return self._table[targets]

    def describe(self, max_grad_norm: float) -> str:
        bounds = ", ".join(f"{name}: {f * max_grad_norm:g}" for name, f in zip(self.class_names, self.fractions))
        return (f"clipping bound per class: {bounds}; sensitivity stays {max_grad_norm:g}. The "
                "fractions are hyper-parameters: fractions computed from the training labels' "
                "counts are not covered by epsilon")
