"""A private run's input statistics do not come from its private images unless it says so loudly."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dpscope.config import make_run_config
from dpscope.data import ImageSplit, load_dataset
from dpscope.data.dataset import channel_mean_std
from dpscope.dataset_prep import FIXED_MEAN, FIXED_STD, prepare_dataset
from dpscope.run_folder import RunFolder
from dpscope.study.execute import _check_same_run
from dpscope.train import train
from loop_helpers import assert_train_refuses

PRIVATE = dict(dataset="digits", model="mlp", epochs=1, batch_size=128, lr=0.5, momentum=0.0, epsilon=3.0)


def _with_one_training_image_changed(dataset):
    """The neighbouring dataset, statistics computed as every loader computes them."""
    images = dataset.train.images.clone()
    images[0] = int(dataset.pixel_max) - images[0]
    mean, std = channel_mean_std(images, dataset.pixel_max)
    train_split = dataset.train
    return dataclasses.replace(dataset, train=ImageSplit(images, train_split.labels, train_split.groups),
                               mean=mean, std=std)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_private_runs_normalise_with_fixed_constants_whatever_the_training_images(digits):
    config = make_run_config(**PRIVATE)
    neighbour = _with_one_training_image_changed(digits)
    prepared = [prepare_dataset(config, d) for d in (digits, neighbour)]
    for p in prepared:
        assert p.dataset.mean == (FIXED_MEAN,) and p.dataset.std == (FIXED_STD,)
        record = p.records["input_normalization"]
        assert record["statistics"] == "fixed" and record["covered_by_privacy"]
    x = digits.train.images[:5]
    torch.testing.assert_close(prepared[0].dataset.normalize(x), prepared[1].dataset.normalize(x))


def test_training_statistics_depend_on_one_example_and_a_private_run_says_so(digits):
    config = make_run_config(**PRIVATE, input_normalization="train")
    neighbour = _with_one_training_image_changed(digits)
    prepared = [prepare_dataset(config, d) for d in (digits, neighbour)]
    assert prepared[0].dataset.mean == channel_mean_std(digits.train.images, digits.pixel_max)[0]
    assert prepared[0].dataset.mean != prepared[1].dataset.mean  # why it is not covered by epsilon
    record = prepared[0].records["input_normalization"]
    assert record["statistics"] == "train" and not record["covered_by_privacy"]
    assert "NOT covered by epsilon" in record["statement"]


def test_non_private_runs_and_perturbed_copies_keep_training_statistics(digits):
    public = prepare_dataset(make_run_config(dataset="digits", model="mlp"), digits)
    assert public.dataset.mean == digits.mean and public.records["input_normalization"]["covered_by_privacy"]
    perturbed = prepare_dataset(make_run_config(**PRIVATE, perturb="laplace:eps=1"), digits)
    record = perturbed.records["input_normalization"]
    assert record["statistics"] == "train" and record["covered_by_privacy"]  # post-processing of the copy
    fixed = prepare_dataset(make_run_config(dataset="digits", model="mlp", input_normalization="fixed"), digits)
    assert fixed.dataset.std == (FIXED_STD,)


def test_the_run_prints_records_and_states_its_input_statistics(tmp_path):
    summary = train(make_run_config(**PRIVATE), run_dir=tmp_path / "fixed")
    assert summary["input_normalization"]["statistics"] == "fixed"
    assert "input statistics: fixed mean 0.5, std 0.25" in summary["privacy_statement"]
    leaky = train(make_run_config(**PRIVATE, input_normalization="train"), run_dir=tmp_path / "train")
    assert "NOT covered by epsilon" in leaky["privacy_statement"]
    assert leaky["test_accuracy"] != summary["test_accuracy"] or leaky["test_loss"] != summary["test_loss"]


def test_a_run_configured_before_the_option_reads_back_with_training_statistics(tmp_path):
    train(make_run_config(**PRIVATE), run_dir=tmp_path / "r")
    path = tmp_path / "r" / "config.json"
    payload = json.loads(path.read_text())
    del payload["config"]["input_normalization"]
    path.write_text(json.dumps(payload))
    folder = RunFolder(tmp_path / "r")
    assert folder.read_config().input_normalization == "train"
    # a study re-run finds the old private run different (it used training statistics) ...
    with pytest.raises(Exception, match="input_normalization"):
        _check_same_run(folder, make_run_config(**PRIVATE))
    _check_same_run(folder, make_run_config(**PRIVATE, input_normalization="train"))
    # ... and an old non-private run the same, since auto resolves to training statistics there
    public = {k: v for k, v in PRIVATE.items() if k != "epsilon"}
    train(make_run_config(**public), run_dir=tmp_path / "p")
    path = tmp_path / "p" / "config.json"
    payload = json.loads(path.read_text())
    del payload["config"]["input_normalization"]
    path.write_text(json.dumps(payload))
    _check_same_run(RunFolder(tmp_path / "p"), make_run_config(**public))


def test_an_unknown_normalisation_is_one_line_and_exit_2(tmp_path):
    assert_train_refuses(tmp_path, ["--input-normalization", "imagenet"], "input_normalization")
