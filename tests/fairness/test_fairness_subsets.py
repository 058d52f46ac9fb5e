"""imbalanced_dataset: the imbalance controls applied to a loaded Dataset."""

from __future__ import annotations

import pytest
import torch

from dpscope.data.dataset import Dataset, ImageSplit, channel_mean_std
from dpscope.errors import ConfigError, DataError
from dpscope.fairness import imbalanced_dataset


def _split(n: int, seed: int, with_groups: bool = True) -> ImageSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 2, (n,), generator=g)
    groups = (torch.rand(n, generator=g) < 0.6).long() if with_groups else None
    return ImageSplit(images, labels, groups)


def _dataset(with_groups: bool = True) -> Dataset:
    train, val, test = (_split(n, s, with_groups) for n, s in ((3000, 0), (100, 1), (1000, 2)))
    mean, std = channel_mean_std(train.images, 255.0)
    return Dataset("toy", "synthetic", train, val, test, 2, ("a", "b"), mean, std, 255.0)


def test_train_and_test_get_the_share_and_statistics_follow_the_train_split():
    data = _dataset()
    subset, record = imbalanced_dataset(data, 1, 0.9, by="group", test="same_imbalance",
                                        seed=0, train_total=1000, test_total=200)
    assert (subset.train.groups == 1).sum() == 900 and len(subset.train) == 1000
    assert (subset.test.groups == 1).sum() == 180 and len(subset.test) == 200
    assert subset.val is data.val
    assert (subset.mean, subset.std) == channel_mean_std(subset.train.images, 255.0)
    assert record["train"] == {"examples": 1000, "group_examples": 900, "group_share": 0.9}
    assert record["test"]["group_share"] == 0.9


def test_balanced_test_set_and_class_balance_within_groups():
    subset, record = imbalanced_dataset(_dataset(), 1, 0.8, by="group", test="balanced",
                                        seed=1, train_total=500, test_total=100,
                                        balance_labels=True)
    assert record["test"]["group_share"] == 0.5
    for g, n in ((1, 400), (0, 100)):
        labels = subset.train.labels[subset.train.groups == g]
        assert torch.bincount(labels).tolist() == [n // 2, n // 2]


def test_class_as_the_key():
    subset, record = imbalanced_dataset(_dataset(with_groups=False), 1, 0.7, by="class",
                                        test="same_imbalance", seed=2)
    assert record["train"]["group_share"] == pytest.approx(0.7, abs=1e-12)
    assert (subset.train.labels == 1).float().mean().item() == pytest.approx(0.7)


def test_missing_groups_and_bad_options_are_refused():
    with pytest.raises(DataError, match="train split has no group attribute"):
        imbalanced_dataset(_dataset(with_groups=False), 1, 0.9, by="group",
                           test="balanced", seed=0)
    with pytest.raises(ConfigError, match="balance_labels needs by='group'"):
        imbalanced_dataset(_dataset(), 1, 0.9, by="class", test="balanced", seed=0,
                           balance_labels=True)
