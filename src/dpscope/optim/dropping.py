"""Data-independent gradient dropping rules (Adamczewski, He, Park 2023).

At each step only a subset of coordinates is updated; the rest get neither gradient nor noise.
The paper found random selection on par with magnitude-based selection. The rule here depends
only on (seed, step), never on private data, so DP-SGD's privacy cost is unchanged, and a resumed
run draws the same masks.
"""

from __future__ import annotations

from typing import Mapping

import torch

from dpscope.errors import ConfigError
from dpscope.optim.dp_optimizer import DropRule


def random_drop_rule(
    param_shapes: Mapping[str, torch.Size], keep_fraction: float, *, seed: int = 0
) -> DropRule:
    """Each step, keep each coordinate independently with probability `keep_fraction`.

    `param_shapes` maps parameter names (as given to DPOptimizer's `param_names`) to shapes.
    """
    if not 0 < keep_fraction <= 1:
        raise ConfigError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    shapes = dict(param_shapes)

    def rule(step: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
        return {name: torch.rand(shape, generator=generator) < keep_fraction
                for name, shape in shapes.items()}

    return rule
