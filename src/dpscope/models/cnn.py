"""The tanh CNN of Papernot et al. 2021 ("Tempered sigmoid activations for deep learning with
differential privacy"), the standard end-to-end DP baseline for MNIST-sized images.

Geometry for inputs of 16 px and more, as in the paper:
    conv 16 8x8 stride 2 pad 3 -> maxpool 2 stride 1 -> conv 32 4x4 stride 2 -> maxpool 2 stride 1
    -> flatten -> fc 32 -> fc classes
(28 px -> 32x4x4 = 512 features; 32 px -> 32x5x5 = 800.) On smaller inputs (the 8x8 digits)
those kernels would leave nothing after the second convolution, so the kernels shrink to 3x3:
    conv 16 3x3 stride 1 pad 1 -> maxpool 2 stride 1 -> conv 32 3x3 stride 2 pad 1
    -> maxpool 2 stride 1 (8 px -> 32x3x3 = 288 features).
The flatten size is computed from these formulas, for any input size.
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.errors import ConfigError
from dpscope.models.init import conv_out_size, init_weights
from dpscope.models.layout import channels_last_on_cpu
from dpscope.models.pool import ChannelsLastMaxPool2d

# (kernel, stride, padding) of the two convolutions
_PAPER_GEOMETRY = ((8, 2, 3), (4, 2, 0))
_SMALL_GEOMETRY = ((3, 1, 1), (3, 2, 1))
_SMALL_BELOW_PX = 16


class PapernotCNN(nn.Module):
    """Two conv + max-pool stages with tanh, then two dense layers (see module docstring)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        geometry = _SMALL_GEOMETRY if image_size < _SMALL_BELOW_PX else _PAPER_GEOMETRY
        (k1, s1, p1), (k2, s2, p2) = geometry
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, k1, stride=s1, padding=p1),
            nn.Tanh(),
            ChannelsLastMaxPool2d(2, stride=1),
            nn.Conv2d(16, 32, k2, stride=s2, padding=p2),
            nn.Tanh(),
            ChannelsLastMaxPool2d(2, stride=1),
            nn.Flatten(),
        )
        side = image_size
        for kernel, stride, padding in geometry:
            side = conv_out_size(conv_out_size(side, kernel, stride, padding), 2, 1)
        if side < 1:
            raise ConfigError(f"cnn needs images of at least 4x4 pixels, got {image_size}x{image_size}")
        self.classifier = nn.Sequential(nn.Linear(32 * side * side, 32), nn.Tanh(), nn.Linear(32, num_classes))
        init_weights(self, "tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(channels_last_on_cpu(x)))
