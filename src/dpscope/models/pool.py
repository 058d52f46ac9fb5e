"""Max pooling computed in channels-last memory order, returned in the order it was given.

PyTorch's CPU max_pool2d is slow on NCHW tensors: on the cnn's first pooling (428 x 16 x 14 x 14,
kernel 2, stride 1, one thread) forward and backward take about 46 ms, and about 26 ms when the
input is first made channels-last, the copies there and back included. The maximum is exact, so
outputs and gradients are bitwise those of `nn.MaxPool2d`; every model using this one (and Opacus
runs of the same model) gets the saving, and nothing downstream sees a different layout. An input
that is already channels-last (the cnn on the CPU, `dpscope.models.layout`) is pooled as it is and
stays channels-last.
"""

from __future__ import annotations

import torch
from torch import nn

from dpscope.models.layout import under_torch_func


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` (same arguments, same results) pooled in channels-last order for speed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or under_torch_func(x):
            return super().forward(x)
        pooled = super().forward(x.contiguous(memory_format=torch.channels_last))  # no copy if already
        return pooled if x.is_contiguous(memory_format=torch.channels_last) else pooled.contiguous()
