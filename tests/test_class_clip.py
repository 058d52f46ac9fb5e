"""Per-class clipping bounds: what a class's fraction does to the private step, that the
accounting is unchanged, and that bad fractions are refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dpscope.class_clip import ClassClip, parse_class_clip
from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.private import ClippedSumGradient
from dpscope.train import train
from loop_helpers import assert_train_refuses

PRIVATE = dict(dataset="digits", model="mlp", epochs=1, batch_size=128, lr=0.5, momentum=0.0,
               threads=1, epsilon=3.0, max_grad_norm=1.0)
TEN = (1.0,) + (0.5,) * 9  # digits has ten classes


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.GroupNorm(1, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2)).double()


def batch(n: int = 12):
    torch.manual_seed(1)
    return torch.randn(n, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1] * (n // 2))


def grads_after(step, model, x, y) -> torch.Tensor:
    step(x, y)
    return torch.cat([p.grad.flatten() for p in model.parameters()])


class FixedCopies:
    """Three deterministic copies per example (the BatchAugmenter interface), so that passes over
    different batches transform each example the same way."""

    multiplicity = 3

    def __call__(self, images, targets):
        rows = torch.stack([images, 0.5 * images, images.flip(-1)], dim=1).flatten(0, 1)
        return rows, targets.repeat_interleave(3)


@pytest.mark.parametrize("strategy", ["auto", "ghost", "naive"])
@pytest.mark.parametrize("copies", [None, FixedCopies()])
def test_each_class_is_clipped_to_its_own_bound(strategy, copies):
    """Fractions (1, 0.3) of C = 0.1 give class 0's sum clipped at 0.1 plus class 1's at 0.03."""
    model, (x, y) = tiny_model(), batch()
    fractions = ClassClip((1.0, 0.3), ("a", "b"))
    both = grads_after(ClippedSumGradient(model, strategy, 0.1, None, copies, fractions), model, x, y)
    zero, one = y == 0, y == 1
    part0 = grads_after(ClippedSumGradient(model, strategy, 0.1, None, copies), model, x[zero], y[zero])
    part1 = grads_after(ClippedSumGradient(model, strategy, 0.03, None, copies), model, x[one], y[one])
    plain = grads_after(ClippedSumGradient(model, strategy, 0.1, None, copies), model, x, y)
    # equal up to where the 1e-6 norm stability enters (C / (|g| / s + 1e-6) against s C / (|g| + 1e-6))
    torch.testing.assert_close(both, part0 + part1, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(both, plain)  # the bound of class 1 binds


def test_private_run_with_class_clip_accounts_the_same_epsilon(tmp_path):
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    bounded = train(make_run_config(**PRIVATE, class_clip=TEN), run_dir=tmp_path / "bounded")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm"):
        assert bounded[key] == plain[key], key
    config = json.loads((tmp_path / "bounded" / "config.json").read_text())["config"]
    assert config["class_clip"] == list(TEN)
    assert bounded["class_clip"] == {str(digit): f for digit, f in enumerate(TEN)} and plain["class_clip"] is None
    assert bounded["test_loss"] != plain["test_loss"]


@pytest.mark.parametrize("change, message", [(dict(class_clip=(1.0, 1.5)), r"\(0, 1\]"),
                                             (dict(class_clip=(1.0, 0.0)), r"\(0, 1\]"),
                                             (dict(class_clip=(0.5, 0.5)), "largest"),
                                             (dict(class_clip=()), "one fraction of C per class")])
def test_config_refuses_fractions_that_would_change_the_sensitivity(change, message):
    with pytest.raises(ConfigError, match=message):
        make_run_config(**{**PRIVATE, **change})


def test_class_clip_without_privacy_is_refused_at_start(tmp_path):
    config = make_run_config(**{**PRIVATE, "epsilon": None}, class_clip=TEN)  # valid alone (studies)
    with pytest.raises(ConfigError, match="needs private"):
        train(config, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_cli_bad_fractions_give_one_line_exit_2_and_no_run_folder(tmp_path):
    for spec, message in [("1,x", "comma-separated"), ("0.2,0.1", "largest"), ("1,0.5", "10 classes")]:
        assert_train_refuses(tmp_path, ["--dataset", "digits", "--epsilon", "1", "--class-clip", spec], message)


def test_parse_and_describe():
    assert parse_class_clip("1, 0.35") == (1.0, 0.35)
    text = ClassClip((1.0, 0.35), ("normal", "pneumonia")).describe(2.0)
    assert "normal: 2, pneumonia: 0.7" in text and "not covered by epsilon" in text
