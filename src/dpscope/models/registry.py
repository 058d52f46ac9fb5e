"""The model zoo by name: every model is shaped from the data and trainable with per-example DP."""

from __future__ import annotations

from typing import Callable

from torch import nn

from dpscope.errors import ConfigError
from dpscope.models.cnn import PapernotCNN
from dpscope.models.mlp import MLP
from dpscope.models.norm import assert_dp_compatible
from dpscope.models.resnet import resnet18, resnet20, resnet20_centred
from dpscope.models.vit import vit_tiny
from dpscope.models.wide_resnet import wrn16_4

# name -> builder(in_channels, image_size, num_classes)
_BUILDERS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mlp": lambda c, size, k: MLP(c * size * size, k),
    "cnn": PapernotCNN,
    "resnet20": lambda c, size, k: resnet20(c, k),
    "resnet20_centred": resnet20_centred,
    "resnet18": lambda c, size, k: resnet18(c, k),
    "wrn16_4": lambda c, size, k: wrn16_4(c, k),
    "vit_tiny": vit_tiny,
}

MODELS: tuple[str, ...] = tuple(_BUILDERS)

_SMALLEST = {"in_channels": 1, "image_size": 4, "num_classes": 2}


def build_model(name: str, *, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """A freshly initialised model `name` for square `image_size` px images with `in_channels`.

    Returns logits of shape (B, num_classes) for inputs (B, in_channels, image_size,
    image_size). Initialisation draws from torch's global generator, so `torch.manual_seed`
    fixes it.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    sizes = {"in_channels": in_channels, "image_size": image_size, "num_classes": num_classes}
    for field, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < _SMALLEST[field]:
            raise ConfigError(
                f"model {name!r}: {field} must be an integer >= {_SMALLEST[field]}, got {value!r}"
            )
    model = _BUILDERS[name](in_channels, image_size, num_classes)
    assert_dp_compatible(model)
    return model
