"""The zoo fed by the data package: shapes from a loaded Dataset line up with every model."""

import pytest
import torch

from dpscope.data import load_dataset
from dpscope.models import MODELS, build_model


@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_on_digits(name):
    dataset = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(
        name, in_channels=dataset.in_channels, image_size=dataset.image_size, num_classes=dataset.num_classes
    )
    inputs, labels = dataset.batch(dataset.train, torch.arange(8))
    loss = torch.nn.functional.cross_entropy(model(inputs), labels)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
