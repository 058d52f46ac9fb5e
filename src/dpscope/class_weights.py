"""Class weights that survive clipping: each example's clipped gradient times its class's weight.

Under DP-SGD most per-example gradients are clipped to the same norm C, so weighting the loss
(which scales a gradient before clipping) changes nothing for clipped examples, and the majority
class's many equal-norm gradients pull the decision its way (the disparate impact of Bagdasaryan
et al. 2019). Weighting after clipping works; with weights in [0, 1] and the largest equal to 1
every example's contribution stays within C, so the sensitivity and the accounting are unchanged.
Non-private training weights each example's gradient the same way (no clipping to undo).

The weights are hyper-parameters. Derived from the training labels' counts they depend on the
private data, and that dependence is not covered by epsilon: `describe` says so.
"""

from __future__ import annotations

from typing import Sequence

import torch

from dpscope.errors import ConfigError


def check_class_weights(weights: Sequence[float]) -> tuple[float, ...]:
    """The weights as a tuple; ValueError unless each lies in [0, 1] and the largest is 1."""
    values = tuple(float(w) for w in weights)
    if not values:
        raise ValueError("class_weights needs one weight per class, e.g. [1, 0.35]")
    if not all(0 <= w <= 1 for w in values):
        raise ValueError(f"class weights must lie in [0, 1], got {list(values)}; divide them by "
                         "the largest (a weight above 1 would raise the sensitivity above C)")
    if max(values) != 1:
        raise ValueError(f"the largest class weight must be 1, got {list(values)}; divide them by "
                         f"{max(values):g} (a smaller maximum only wastes privacy budget)")
    return values


def parse_class_weights(spec: str) -> tuple[float, ...]:
    """'1,0.35' -> (1.0, 0.35), for the command line; ConfigError for anything else."""
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--class-weights takes comma-separated numbers such as 1,0.35, got "
                          f"{spec!r}") from None
    try:
        return check_class_weights(values)
    except ValueError as error:
        raise ConfigError(str(error)) from None


class ClassWeights:
    """Per-example weights from labels, for a dataset's classes."""

    def __init__(self, weights: Sequence[float], class_names: Sequence[str]) -> None:
        if len(weights) != len(class_names):
            raise ConfigError(f"class_weights has {len(weights)} values but the dataset has "
                              f"{len(class_names)} classes ({', '.join(class_names)}); give one each")
        self.values = check_class_weights(weights)
        self.class_names = tuple(class_names)
        self._table = torch.tensor(self.values)

    def of(self, targets: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) weight of each example's class, in the dtype of `like` (default float32)."""
        table = self._table if like is None else self._table.to(like)
        return table[targets.to(table.device)]

    def describe(self, private: bool) -> str:
        pairs = ", ".join(f"{name}: {w:g}" for name, w in zip(self.class_names, self.values))
        if not private:
            return f"class weights (each example's gradient): {pairs}"
        return (f"class weights after clipping: {pairs}; sensitivity stays C. They are "
                "hyper-parameters: weights computed from the training labels' counts are not "
                "covered by epsilon")
