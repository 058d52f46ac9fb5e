"""Freezing parameters at their random init: the right names, clear errors, frozen weights never
move in private training, and the privacy accounting is that of the same run unfrozen."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dpscope.callbacks import Callback
from dpscope.cli import app
from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.models import build_model
from dpscope.models.freeze import freeze_parameters
from dpscope.train import train
from tests.loop_helpers import assert_train_refuses

PRIVATE = dict(dataset="digits", model="mlp", epochs=2, batch_size=256, lr=0.5, momentum=0.0,
               threads=1, epsilon=2.0, max_grad_norm=1.0)


def _resnet20():
    return build_model("resnet20", in_channels=1, image_size=28, num_classes=2)


def test_glob_patterns_freeze_exactly_the_matching_parameters():
    model = _resnet20()
    frozen = freeze_parameters(model, "stages.2.*.conv?.weight,stages.2.0.shortcut.0.weight")
    expected = [f"stages.2.{b}.conv{c}.weight" for b in range(3) for c in (1, 2)]
    assert sorted(frozen) == sorted(expected + ["stages.2.0.shortcut.0.weight"])
    for name, param in model.named_parameters():
        assert param.requires_grad == (name not in frozen), name


def test_a_module_path_freezes_everything_under_it():
    model = _resnet20()
    assert freeze_parameters(model, "fc") == ["fc.weight", "fc.bias"]
    assert freeze_parameters(_resnet20(), None) == [] and freeze_parameters(_resnet20(), "") == []


@pytest.mark.parametrize("spec, message", [("nothing.*", "matches no parameter"),
                                           ("*", "every parameter"),
                                           ("fc,,stem", "empty pattern")])
def test_bad_patterns_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        freeze_parameters(_resnet20(), spec)


class InitialWeights(Callback):
    name = "initial_weights"

    def on_train_start(self, state) -> None:
        self.weights = {n: p.detach().clone() for n, p in state.model.named_parameters()}
        self.final = None

    def on_train_end(self, state, summary) -> None:
        self.final = {n: p.detach().clone() for n, p in state.model.named_parameters()}


@pytest.mark.slow
def test_frozen_weights_never_move_and_the_accounting_is_unchanged(tmp_path):
    record = InitialWeights()
    frozen = train(make_run_config(**PRIVATE, freeze="layers.1"), run_dir=tmp_path / "frozen",
                   callbacks=[record])
    for name, before in record.weights.items():
        moved = not torch.equal(before, record.final[name])
        assert moved == (not name.startswith("layers.1.")), name
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm"):
        assert frozen[key] == plain[key], key
    assert frozen["test_loss"] != plain["test_loss"]


def test_cli_bad_pattern_gives_one_line_and_exit_2(tmp_path):
    assert_train_refuses(tmp_path, ["--freeze", "conv.*"], "matches no parameter")


def test_the_plan_says_how_much_is_frozen(tmp_path):
    result = CliRunner().invoke(app, ["train", "--model", "mlp", "--epochs", "1", "--threads", "1",
                                      "--freeze", "layers.1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    model = build_model("mlp", in_channels=1, image_size=8, num_classes=10)
    first = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers.1."))
    total = sum(p.numel() for p in model.parameters())
    assert f"2 tensors, {first:,} of {total:,} parameters" in " ".join(result.output.split())
