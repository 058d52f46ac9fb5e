"""Every zoo model at every supported input shape: logits, DP compatibility, sizes, seeding."""

import pytest
import torch
from torch import nn

from dpscope.errors import ConfigError
from dpscope.models import MODELS, ClassToken, PositionEmbedding, build_model

SHAPES = [(8, 1), (28, 1), (32, 3)]  # (image_size, in_channels): digits, MedMNIST/MNIST, CIFAR
# layers that own parameters and that the per-example engine has rules for
PARAMETRIC_LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm, nn.Embedding, ClassToken, PositionEmbedding)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("image_size,in_channels", SHAPES)
def test_logits_shape_and_only_supported_layers(name, image_size, in_channels):
    model = build_model(name, in_channels=in_channels, image_size=image_size, num_classes=7)
    logits = model(torch.randn(3, in_channels, image_size, image_size))
    assert logits.shape == (3, 7)
    assert torch.isfinite(logits).all()
    for path, module in model.named_modules():
        assert not isinstance(module, nn.modules.batchnorm._BatchNorm), path
        owns_params = any(True for _ in module.parameters(recurse=False))
        assert not owns_params or isinstance(module, PARAMETRIC_LAYERS), f"{path}: {type(module).__name__}"
    print(f"{name} {image_size}px x{in_channels}: {_count(model):,} parameters")


@pytest.mark.parametrize("name", MODELS)
def test_each_example_logits_independent_of_the_rest_of_the_batch(name):
    """What DP needs from normalisation: example 0's output must not see examples 1..B-1."""
    torch.manual_seed(1)
    model = build_model(name, in_channels=1, image_size=8, num_classes=5).eval()
    batch = torch.randn(4, 1, 8, 8)
    other = batch.clone()
    other[1:] = torch.randn(3, 1, 8, 8) * 3 + 1
    with torch.no_grad():
        torch.testing.assert_close(model(batch)[0], model(other)[0])
        torch.testing.assert_close(model(batch[:1])[0], model(batch)[0], atol=1e-5, rtol=1e-5)


def test_papernot_cnn_has_the_papers_layer_sizes_at_28px():
    model = build_model("cnn", in_channels=1, image_size=28, num_classes=10)
    # conv 16@8x8 + conv 32@16x4x4 + fc 32*4*4 -> 32 + fc 32 -> 10, each with biases
    expected = (16 * 64 + 16) + (32 * 16 * 16 + 32) + (32 * 4 * 4 * 32 + 32) + (32 * 10 + 10)
    assert _count(model) == expected == 26_010


@pytest.mark.parametrize(
    "name,in_channels,published_millions",
    [("resnet20", 3, 0.27), ("wrn16_4", 3, 2.7), ("resnet18", 3, 11.2)],
)
def test_parameter_counts_match_the_published_architectures(name, in_channels, published_millions):
    # He et al. 2016 (ResNet-20 0.27M), Zagoruyko & Komodakis 2016 (WRN-16-4 2.7M), ResNet-18
    # with a 10-class head and 3x3 stem 11.2M; GroupNorm has as many parameters as BatchNorm
    count = _count(build_model(name, in_channels=in_channels, image_size=32, num_classes=10))
    assert count / 1e6 == pytest.approx(published_millions, rel=0.03)


@pytest.mark.parametrize("name", MODELS)
def test_initialisation_is_fixed_by_torch_manual_seed(name):
    def weights(seed):
        torch.manual_seed(seed)
        return build_model(name, in_channels=1, image_size=8, num_classes=3).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    for key in first:
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].numel() > 1)


def test_unknown_model_error_lists_every_name():
    with pytest.raises(ConfigError) as info:
        build_model("resnet50", in_channels=1, image_size=28, num_classes=2)
    for name in MODELS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "field,bad_value", [("in_channels", 0), ("image_size", 3), ("num_classes", 1), ("image_size", 28.0)]
)
def test_bad_sizes_are_refused_naming_the_field(field, bad_value):
    sizes = dict(in_channels=1, image_size=28, num_classes=2) | {field: bad_value}
    with pytest.raises(ConfigError, match=field):
        build_model("cnn", **sizes)
