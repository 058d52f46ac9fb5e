"""Weight initialisation shared by the model zoo: deterministic given `torch.manual_seed`."""

from __future__ import annotations

from typing import Literal

from torch import nn

Nonlinearity = Literal["relu", "tanh"]


def init_weights(model: nn.Module, nonlinearity: Nonlinearity) -> None:
    """Kaiming-normal convolutions and linears for `nonlinearity`; norms at identity; zero biases.

    Kaiming (fan-in) keeps activation variance steady through depth for ReLU and tanh alike,
    with the gain of the nonlinearity (sqrt 2 for ReLU, 5/3 for tanh).
    """
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity=nonlinearity)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv_out_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial output size of a convolution or pooling layer along one axis."""
    return (size + 2 * padding - kernel) // stride + 1
