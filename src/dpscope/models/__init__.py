"""Model zoo for DP training: no BatchNorm anywhere, every layer one a per-example engine covers."""

from __future__ import annotations

from dpscope.models.cnn import PapernotCNN
from dpscope.models.freeze import freeze_parameters
from dpscope.models.mlp import MLP
from dpscope.models.norm import assert_dp_compatible, group_count, replace_batchnorm
from dpscope.models.registry import MODELS, build_model
from dpscope.models.resnet import BasicBlock, ResNet
from dpscope.models.vit import ClassToken, PositionEmbedding, VisionTransformer, patch_size_for
from dpscope.models.wide_resnet import WideBlock, WideResNet

__all__ = [
    "MODELS",
    "MLP",
    "BasicBlock",
    "ClassToken",
    "PapernotCNN",
    "PositionEmbedding",
    "ResNet",
    "VisionTransformer",
    "WideBlock",
    "WideResNet",
    "assert_dp_compatible",
    "build_model",
    "freeze_parameters",
    "group_count",
    "patch_size_for",
    "replace_batchnorm",
]
