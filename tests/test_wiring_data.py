"""A run's dataset preparation: groups, imbalance and perturbation from a RunConfig."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dpscope.config import RunConfig, make_run_config
from dpscope.data import channel_mean_std, load_dataset
from dpscope.dataset_prep import fairness_entry, prepare_dataset
from dpscope.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _prepare(digits, **options):
    return prepare_dataset(RunConfig(**options), digits)


def test_perturbation_changes_training_images_only(digits):
    prepared = _prepare(digits, perturb="dp_pix:eps=1,b=4")
    out = prepared.dataset
    assert not torch.equal(out.train.images, digits.train.images)
    assert torch.equal(out.val.images, digits.val.images)
    assert torch.equal(out.test.images, digits.test.images)
    assert torch.equal(out.train.labels, digits.train.labels)
    assert (out.mean, out.std) == channel_mean_std(out.train.images, out.pixel_max)
    record = prepared.records["perturbation"]
    assert record["perturbed_splits"] == ["train"]
    assert record["unchanged_splits"] == ["val", "test"]
    assert record["guarantee"]["epsilon"] == 1.0
    assert "m-neighborhood" in record["statement"]


def test_perturbation_is_a_function_of_the_seed(digits):
    first = _prepare(digits, perturb="laplace:eps=8", seed=0).dataset.train.images
    again = prepare_dataset(RunConfig(perturb="laplace:eps=8", seed=0),
                            load_dataset("digits", seed=0)).dataset.train.images
    assert torch.equal(first, again)


def test_brightness_shift_is_stated_as_not_image_level_privacy(digits):
    record = _prepare(digits, perturb="singh2020_brightness_shift:eps=1").records["perturbation"]
    assert record["guarantee"]["epsilon"] is None
    assert record["statement"].startswith("singh2020_brightness_shift: NOT image-level privacy")


@pytest.mark.parametrize("share, minority_count, total", [(0.9, 122, 1220), (0.99, 11, 1100),
                                                          (0.999, 1, 1000)])
def test_imbalance_hits_the_majority_share_exactly_in_training(digits, share, minority_count,
                                                               total):
    # digits train (seed 0): 122 eights, 1,136 others. The largest subsets with the exact
    # share: 0.9 -> 122 + 1,098; 0.99 -> 1,136 // 99 = 11 hundreds; 0.999 -> one thousand.
    assert (digits.train.labels == 8).sum() == 122 and len(digits.train) == 1258
    prepared = _prepare(digits, minority_group="8", majority_share=share)
    labels = prepared.dataset.train.labels.tolist()
    assert (labels.count(8), len(labels)) == (minority_count, total)
    assert 1 - labels.count(8) / len(labels) == pytest.approx(share, abs=1e-12)
    record = prepared.records["imbalance"]
    assert record["minority_group"] == "8" and record["majority_share"] == share
    assert record["train"]["group_examples"] == minority_count


def test_imbalance_test_set_balanced_or_same(digits):
    balanced = _prepare(digits, minority_group="8", majority_share=0.9).dataset.test.labels
    assert (balanced == 8).sum() * 2 == len(balanced)
    same = _prepare(digits, minority_group="8", majority_share=0.9,
                    imbalance_test="same_imbalance").dataset.test.labels
    assert (same == 8).sum() * 10 == len(same)


def test_imbalance_leaves_validation_alone(digits):
    prepared = _prepare(digits, minority_group="3", majority_share=0.99)
    assert torch.equal(prepared.dataset.val.labels, digits.val.labels)


def test_group_table_gives_groups_and_imbalance_by_group(digits, tmp_path):
    rows = ["id,group"]
    for split in ("train", "val", "test"):
        labels = getattr(digits, split).labels.tolist()
        rows += [f"{split}/{i},{'even' if y % 2 == 0 else 'odd'}" for i, y in enumerate(labels)]
    table = tmp_path / "groups.csv"
    table.write_text("\n".join(rows) + "\n")
    prepared = _prepare(digits, groups=table, minority_group="odd", majority_share=0.8)
    assert prepared.group_names == ("even", "odd")
    train = prepared.dataset.train
    assert torch.equal(train.groups, train.labels % 2)
    assert Counter(train.groups.tolist())[1] * 5 == len(train)


def test_group_table_must_cover_every_example(digits, tmp_path):
    table = tmp_path / "groups.csv"
    table.write_text("id,group\ntrain/0,a\n")
    with pytest.raises(DataError, match="have no group row"):
        _prepare(digits, groups=table)


def test_unknown_minority_group_names_the_choices(digits):
    with pytest.raises(ConfigError, match=r"minority_group 'ten' is no class; choose one of"):
        _prepare(digits, minority_group="ten", majority_share=0.9)


def test_minority_group_and_majority_share_go_together(digits):
    with pytest.raises(ConfigError, match="majority_share needs minority_group"):
        _prepare(digits, majority_share=0.9)


def test_options_imply_what_they_need():
    assert RunConfig(minority_group="normal").groups == "class"
    assert RunConfig(dynamics_every_steps=4).track_dynamics is True
    with pytest.raises(ConfigError, match="dynamics_every_steps needs track_dynamics"):
        make_run_config(dynamics_every_steps=4, track_dynamics=False)


@pytest.mark.parametrize("spec, message", [("lapl:eps=1", "unknown perturbation 'lapl'"),
                                           ("laplace", "missing parameter"),
                                           ("laplace:eps=-1", "positive number")])
def test_bad_perturbation_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=f"perturb: .*{message}"):
        make_run_config(perturb=spec)


def test_fairness_entry_matches_hand_counts(digits):
    prepared = _prepare(digits, groups="class")
    labels = prepared.dataset.test.labels.numpy()
    predicted = np.where(labels == 3, 5, labels)  # every 3 wrong, everything else right
    predicted[:4] = (labels[:4] + 1) % 10
    entry = fairness_entry(prepared, predicted)
    for name, group in entry["groups"].items():
        mask = labels == int(name)
        assert group["count"] == mask.sum()
        assert group["accuracy"]["value"] == pytest.approx((predicted[mask] == labels[mask]).mean())
    assert entry["groups"]["3"]["accuracy"]["value"] == 0.0
    accuracies = [g["accuracy"]["value"] for g in entry["groups"].values()]
    gap = entry["gaps"]["accuracy_difference"]
    assert gap["value"] == pytest.approx(max(accuracies) - min(accuracies))
    assert entry["bootstrap"]["n_resamples"] == 200 and len(gap["ci"]) == 2
    assert entry["group_attribute"] == "class" and entry["split"] == "test"
