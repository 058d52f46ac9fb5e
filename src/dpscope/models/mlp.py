"""A fully connected classifier on flattened pixels: the smallest DP baseline."""

from __future__ import annotations

import torch
from torch import nn

from dpscope.models.init import Nonlinearity, init_weights

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MLP(nn.Module):
    """flatten -> (Linear -> activation) per hidden width -> Linear to class logits.

    tanh is the default: bounded activations keep per-example gradient norms small, which
    loses less signal to clipping (Papernot et al. 2021, tempered sigmoids).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: tuple[int, ...] = (256, 128),
        activation: Nonlinearity = "tanh",
    ) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)
        init_weights(self, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
