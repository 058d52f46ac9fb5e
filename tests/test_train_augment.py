"""Augmentation multiplicity in whole runs: the guarantee is that of plain DP-SGD, the
statement says so, resume continues the augmentation stream, bad options are refused."""

from __future__ import annotations

import pytest

from dpscope.config import make_run_config
from dpscope.errors import ConfigError
from dpscope.train import train
from loop_helpers import assert_train_refuses, whole_and_resumed

PRIVATE = dict(dataset="digits", model="mlp", epochs=2, batch_size=256, lr=0.5, momentum=0.0,
               threads=1, epsilon=2.0, max_grad_norm=1.0)
AUGMENTED = dict(PRIVATE, augment="crop,flip", augment_multiplicity=3)


@pytest.mark.slow
def test_multiplicity_leaves_the_accounting_unchanged_and_says_so(tmp_path):
    plain = train(make_run_config(**PRIVATE), run_dir=tmp_path / "plain")
    augmented = train(make_run_config(**AUGMENTED), run_dir=tmp_path / "aug")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "max_grad_norm"):
        assert augmented[key] == plain[key], key
    assert augmented["augment_multiplicity"] == 3 and augmented["augment"] == "crop,flip"
    statement = augmented["privacy_statement"]
    assert "multiplicity K=3" in statement and "guarantee is unchanged" in statement
    assert "multiplicity" not in plain["privacy_statement"]
    assert augmented["test_accuracy"] != plain["test_accuracy"]  # the augmentation did something


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_augmented_run(tmp_path):
    whole, resumed = whole_and_resumed(AUGMENTED, tmp_path)
    for key in ("epsilon", "test_accuracy", "test_loss", "privacy_steps", "per_class_accuracy"):
        assert resumed[key] == whole[key], key


def test_non_private_augmented_run_trains(tmp_path):
    summary = train(make_run_config(dataset="digits", model="mlp", epochs=3, threads=1,
                                    augment="crop", augment_multiplicity=2), run_dir=tmp_path / "r")
    assert summary["private"] is False and summary["augment_multiplicity"] == 2
    assert summary["test_accuracy"] > 0.2  # 10 classes; 4 px crops of 8 px digits are hard


def test_copies_without_augmentation_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="augment_multiplicity > 1 needs augment"):
        train(make_run_config(**{**PRIVATE, "augment_multiplicity": 2}), run_dir=tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


@pytest.mark.parametrize("args, message", [(["--augment", "rotate"], "rotate"),
                                           (["--augment-multiplicity", "2"], "needs augment"),
                                           (["--augment", "crop", "--augment-multiplicity", "0"], "augment_multiplicity")])
def test_cli_bad_augment_options_give_one_line_and_exit_2(tmp_path, args, message):
    assert_train_refuses(tmp_path, args, message)


def test_config_keeps_the_canonical_augment_spec():
    assert make_run_config(augment="flip, crop:2").augment == "crop:2,flip"
    assert make_run_config(augment="crop:4").augment == "crop"
    assert make_run_config(augment_multiplicity=3).augment_multiplicity == 3  # alone, as study specs check it
