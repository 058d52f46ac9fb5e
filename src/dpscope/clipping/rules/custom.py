"""The custom contract: a module that knows its own per-example gradients.

A module owning trainable parameters that no registered rule covers may define

    def per_example_grads(self, inputs: Tensor, grad_output: Tensor) -> dict[str, Tensor]

where `inputs` is the first positional argument of its forward, `grad_output` the gradient of
the summed per-example losses with respect to its output, and the result maps each of its own
(direct) trainable parameter names to a (B, *param.shape) tensor. The engine derives norms and
clipped sums from it. Tests should check such a module against strategy="naive".
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.clipping.registry import Grads, LayerRule


def per_example_grads(layer: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor) -> Grads:
    return layer.per_example_grads(inputs, grad_output)


RULE = LayerRule("custom", per_example_grads)
