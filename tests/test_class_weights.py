"""Class weights applied after clipping: what a weight does to the step, that the accounting is
unchanged, and that bad weights are refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dpscope.class_weights import ClassWeights, parse_class_weights
from dpscope.cli import app
from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.private import ClippedSumGradient
from dpscope.steps import MeanGradient
from dpscope.train import train

PRIVATE = dict(dataset="digits", model="mlp", epochs=1, batch_size=128, lr=0.5, momentum=0.0,
               threads=1, epsilon=3.0, max_grad_norm=1.0)
TEN = (1.0,) + (0.5,) * 9  # digits has ten classes


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2)).double()


def batch(n: int = 12):
    torch.manual_seed(1)
    return torch.randn(n, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1] * (n // 2))


def grads_of(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("strategy", ["auto", "ghost", "naive"])
def test_weight_zero_drops_a_class_and_weight_one_keeps_its_clipped_gradients(strategy):
    """Weights (1, 0) give exactly the clipped sum of class 0's examples alone."""
    model, (x, y) = tiny_model(), batch()
    ClippedSumGradient(model, strategy, 0.1, None, class_weights=ClassWeights((1.0, 0.0), ("a", "b")))(x, y)
    weighted = grads_of(model)
    keep = y == 0
    ClippedSumGradient(model, strategy, 0.1, None)(x[keep], y[keep])
    torch.testing.assert_close(weighted, grads_of(model), rtol=1e-10, atol=1e-12)


class FixedCopies:
    """Three deterministic copies per example (the BatchAugmenter interface), so that two passes
    over different batches transform each example the same way."""

    multiplicity = 3

    def __call__(self, images, targets):
        rows = torch.stack([images, 0.5 * images, images.flip(-1)], dim=1).flatten(0, 1)
        return rows, targets.repeat_interleave(3)


def test_weights_are_per_example_under_augmentation_multiplicity():
    model, (x, y) = tiny_model(), batch()
    ClippedSumGradient(model, "auto", 0.1, None, FixedCopies(), ClassWeights((0.0, 1.0), ("a", "b")))(x, y)
    weighted = grads_of(model)
    keep = y == 1
    ClippedSumGradient(model, "auto", 0.1, None, FixedCopies())(x[keep], y[keep])
    assert weighted.abs().sum() > 0
    torch.testing.assert_close(weighted, grads_of(model), rtol=1e-10, atol=1e-12)


def test_non_private_step_weights_each_examples_gradient():
    model, (x, y) = tiny_model(), batch()
    MeanGradient(model, class_weights=ClassWeights((1.0, 0.25), ("a", "b")))(x, y)
    weighted = grads_of(model)
    model.zero_grad()
    losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    (losses * torch.where(y == 0, 1.0, 0.25).double()).mean().backward()
    torch.testing.assert_close(weighted, grads_of(model))


def test_private_run_with_class_weights_accounts_the_same_epsilon(tmp_path):
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    weighted = train(make_run_config(**PRIVATE, class_weights=TEN), run_dir=tmp_path / "weighted")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm"):
        assert weighted[key] == plain[key], key
    config = json.loads((tmp_path / "weighted" / "config.json").read_text())["config"]
    assert config["class_weights"] == list(TEN)
    assert weighted["test_accuracy"] != plain["test_accuracy"] or weighted["test_loss"] != plain["test_loss"]


@pytest.mark.parametrize("weights, message", [((1.0, 1.5), r"\[0, 1\]"), ((0.5, 0.5), "largest"),
                                              ((), "one weight per class")])
def test_config_refuses_weights_that_would_change_the_sensitivity(weights, message):
    with pytest.raises(ConfigError, match=message):
        make_run_config(**PRIVATE, class_weights=weights)


def test_cli_bad_weights_give_one_line_exit_2_and_no_run_folder(tmp_path):
    for spec, message in [("1,x", "comma-separated"), ("0.2,0.1", "largest"), ("1,0.5", "10 classes")]:
        out = tmp_path / "run"
        result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                                          "--epsilon", "1", "--class-weights", spec, "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
        assert not out.exists()


def test_parse_and_describe():
    assert parse_class_weights("1, 0.35") == (1.0, 0.35)
    text = ClassWeights((1.0, 0.35), ("normal", "pneumonia")).describe(private=True)
    assert "normal: 1, pneumonia: 0.35" in text and "not covered by epsilon" in text
