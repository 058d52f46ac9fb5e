"""resnet20_centred: resnet20's weights and features, the classifier's input centred on a constant."""

import torch
from torch.nn import functional as F

from dpscope.models import build_model
from dpscope.models.resnet import REFERENCE_IMAGES


def _pair(size=8):
    torch.manual_seed(0)
    plain = build_model("resnet20", in_channels=1, image_size=size, num_classes=2)
    torch.manual_seed(0)
    centred = build_model("resnet20_centred", in_channels=1, image_size=size, num_classes=2)
    return plain, centred


def test_same_weights_as_resnet20_and_the_same_checkpoint_keys():
    plain, centred = _pair()
    assert centred.state_dict().keys() == plain.state_dict().keys()  # the reference is not saved
    for (name, a), b in zip(plain.state_dict().items(), centred.state_dict().values()):
        assert torch.equal(a, b), name
    assert centred.reference_inputs.shape == (REFERENCE_IMAGES, 1, 8, 8)


def test_logits_read_features_minus_the_mean_features_of_the_noise_images():
    plain, centred = _pair()
    x = torch.randn(5, 1, 8, 8)
    reference = plain.features(centred.reference_inputs).mean(0)
    expected = plain.fc(plain.features(x) - reference)
    torch.testing.assert_close(centred(x), expected)
    # the reference is a property of the weights, not of the batch: one example alone gets the same logits
    torch.testing.assert_close(centred(x[:1]), expected[:1])


def test_the_reference_carries_no_gradient():
    _, centred = _pair()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 1, 0])
    F.cross_entropy(centred(x), y).backward()
    got = [p.grad.clone() for p in centred.parameters()]
    centred.zero_grad()
    with torch.no_grad():
        reference = centred.features(centred.reference_inputs).mean(0)
    F.cross_entropy(centred.fc(centred.features(x) - reference), y).backward()
    for a, p in zip(got, centred.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_the_common_part_of_the_features_shrinks():
    """The reason for the model: noise images' features sit close to the features of images."""
    plain, _ = _pair(28)
    centred = build_model("resnet20_centred", in_channels=1, image_size=28, num_classes=2)
    centred.load_state_dict(plain.state_dict())
    images = torch.rand(64, 1, 28, 28) * 0.5 + torch.linspace(0, 1, 28).view(1, 1, 1, 28) * 0.5  # smooth, image-like
    with torch.no_grad():
        features = plain.features((images - 0.5) / 0.25)
        reference = plain.features(centred.reference_inputs).mean(0)
    common = features.mean(0)
    assert (common - reference).norm() < 0.25 * common.norm()
