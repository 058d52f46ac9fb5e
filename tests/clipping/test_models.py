"""Every strategy on every dpscope.models model (small inputs) equals the naive reference."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from dpscope.models import MODELS, build_model
from tests.clipping.oracle import check_against_references

# (in_channels, image_size): the smallest inputs each model accepts, to keep the test fast
SIZES = {"mlp": (1, 6), "cnn": (1, 8), "resnet20": (3, 8), "resnet18": (1, 4), "wrn16_4": (3, 4), "vit_tiny": (3, 8)}


def xent(out, y):
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_every_strategy_on_model(name):
    channels, size = SIZES.get(name, (1, 8))
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, image_size=size, num_classes=3)
    batch = 2 if name == "resnet18" else 3  # 11 M parameters: keep the references quick
    x, y = torch.randn(batch, channels, size, size), torch.tensor([0, 2, 1])[:batch]
    check_against_references(model, xent, x, y)
