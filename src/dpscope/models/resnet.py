"""ResNets with GroupNorm in place of BatchNorm (BatchNorm mixes examples; see `norm`).

`resnet20`: the CIFAR ResNet of He et al. 2016 (3x3 stem, 3 stages of 3 basic blocks,
16/32/64 channels). `resnet18`: the ImageNet layout (4 stages of 2 blocks, 64-512 channels)
with the small-image stem MedMNIST uses at 28 px: one 3x3 convolution, stride 1, no max-pool.
Both use projection shortcuts (1x1 conv + GroupNorm) where the shape changes and global
average pooling before the classifier, so any input of 4 px or more works.

`resnet20_centred`: resnet20 whose classifier reads the pooled features minus the mean
features of fixed noise images (see `ResNet.reference_inputs`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from dpscope.models.init import init_weights
from dpscope.models.norm import group_norm


def _conv3x3(channels_in: int, channels_out: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm plus a shortcut, then relu (post-activation, He et al. 2016)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels_in, channels_out, stride)
        self.norm1 = group_norm(channels_out)
        self.conv2 = _conv3x3(channels_out, channels_out, 1)
        self.norm2 = group_norm(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride=stride, bias=False),
                group_norm(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem, stages of `BasicBlock`s (first block of each stage strides), pool, linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        widths: tuple[int, ...],
        blocks_per_stage: int,
        strides: tuple[int, ...],
        reference_inputs: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, widths[0], 1), group_norm(widths[0]), nn.ReLU())
        stages = []
        channels = widths[0]
        for width, stride in zip(widths, strides):
            blocks = [BasicBlock(channels, width, stride)]
            blocks += [BasicBlock(width, width, 1) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        # Pooled ReLU features share a large common part (at eps 1 on PneumoniaMNIST, |mean| ~10
        # against a spread of ~0.65 between images), so the noise DP-SGD adds to the classifier's
        # weights moves every logit together and tips the model to one class. Subtracting the
        # features of fixed noise images (data-independent, so no privacy cost; computed without
        # gradient, a constant for the step) removes ~96% of that common part.
        self.reference_inputs: torch.Tensor | None
        self.register_buffer("reference_inputs", reference_inputs, persistent=False)
        init_weights(self, "relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        if self.reference_inputs is not None:
            with torch.no_grad():
                reference = self.features(self.reference_inputs).mean(0)
            features = features - reference
        return self.fc(features)


def resnet20(in_channels: int, num_classes: int, reference_inputs: torch.Tensor | None = None) -> ResNet:
    return ResNet(in_channels, num_classes, widths=(16, 32, 64), blocks_per_stage=3, strides=(1, 2, 2),
                  reference_inputs=reference_inputs)


REFERENCE_IMAGES = 64
"""Noise images behind `resnet20_centred`'s feature reference."""


def resnet20_centred(in_channels: int, image_size: int, num_classes: int) -> ResNet:
    """resnet20 with its classifier's input centred on the features of N(0, 1) noise images.

    N(0, 1) is the normalised input range (fixed input statistics map pixels into [-2, 2]). The
    images come from their own generator, so torch's global stream, which draws the weights,
    is the same as for resnet20.
    """
    noise = torch.randn(REFERENCE_IMAGES, in_channels, image_size, image_size,
                        generator=torch.Generator().manual_seed(0))
    return resnet20(in_channels, num_classes, reference_inputs=noise)


def resnet18(in_channels: int, num_classes: int) -> ResNet:
    return ResNet(
        in_channels, num_classes, widths=(64, 128, 256, 512), blocks_per_stage=2, strides=(1, 2, 2, 2)
    )
