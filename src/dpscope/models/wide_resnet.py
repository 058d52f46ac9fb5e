"""WideResNet-16-4 with GroupNorm, the architecture De et al. 2022 ("Unlocking high-accuracy
differentially private image classification through scale") train with DP-SGD on CIFAR-10.

Pre-activation blocks (norm-relu-conv, Zagoruyko and Komodakis 2016); depth 16 means
(16 - 4) / 6 = 2 blocks per stage, width factor 4 gives stages of 64/128/256 channels after a
16-channel stem. Every GroupNorm has groups of 16 channels, as De et al. use. A 1x1
convolution projects the shortcut where the shape changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dpscope.models.init import init_weights
from dpscope.models.norm import group_norm

_CHANNELS_PER_GROUP = 16


def _norm(channels: int) -> nn.GroupNorm:
    return group_norm(channels, channels_per_group=_CHANNELS_PER_GROUP)


class WideBlock(nn.Module):
    """Pre-activation block: x + conv(relu(norm(conv(relu(norm(x))))))."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)
        self.norm2 = _norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.norm1(x))
        # the projection sees the normalised input, as in the original pre-activation WRN
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.norm2(out)))
        return out + skip


class WideResNet(nn.Module):
    """WRN-`depth`-`width_factor`: stem, 3 stages of `WideBlock`s, norm-relu, pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 16, width_factor: int = 4) -> None:
        super().__init__()
        blocks_per_stage = (depth - 4) // 6
        widths = (16 * width_factor, 32 * width_factor, 64 * width_factor)
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        stages = []
        channels = 16
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = [WideBlock(channels, width, stride)]
            blocks += [WideBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(_norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self, "relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.stages(self.stem(x))))


def wrn16_4(in_channels: int, num_classes: int) -> WideResNet:
    return WideResNet(in_channels, num_classes, depth=16, width_factor=4)
