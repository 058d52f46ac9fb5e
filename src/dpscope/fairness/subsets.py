"""Imbalanced training and test splits of a loaded `dpscope.data.Dataset` (the imbalance study).

Farrand et al. 2020 drew both training and test sets with the same share of the majority
group; `test="balanced"` gives each side of the test set equal weight instead. The share is
held by the training split's group attribute (`by="group"`, `ImageSplit.groups`) or by the
class (`by="class"`, e.g. the share of pneumonia images). The validation split is left as it
is. Normalisation statistics are recomputed from the new training split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np

from dpscope.errors import ConfigError, DataError
from dpscope.fairness.imbalance import TestComposition, subsample_to_share, test_set_indices

ImbalanceKey = Literal["group", "class"]


def imbalanced_dataset(
    dataset: Any, group: int, share: float, *, by: ImbalanceKey, test: TestComposition,
    seed: int, train_total: int | None = None, test_total: int | None = None,
    balance_labels: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """The dataset with train and test subsampled to `share` of `group`, and a JSON record.

    `balance_labels` balances the class within each side (Farrand et al.'s target balance);
    only with `by="group"`. Seeds for train and test differ (seed and seed + 1).
    """
    from dpscope.data.dataset import channel_mean_std

    if by == "class" and balance_labels:
        raise ConfigError("balance_labels needs by='group': with by='class' the class is the key")
    train_keys, test_keys = (_keys(split, by, name) for split, name in
                             ((dataset.train, "train"), (dataset.test, "test")))
    balance = [split.labels.numpy() if balance_labels else None
               for split in (dataset.train, dataset.test)]
    train_index = subsample_to_share(train_keys, group, share, seed=seed, total=train_total,
                                     balance_by=balance[0])
    test_index = test_set_indices(test_keys, group, share, test, seed=seed + 1,
                                  total=test_total, balance_by=balance[1])
    train = dataset.train.subset(train_index)
    mean, std = channel_mean_std(train.images, dataset.pixel_max)
    subset = dataclasses.replace(dataset, train=train, test=dataset.test.subset(test_index),
                                 mean=mean, std=std)
    record = {
        "by": by, "group": group, "share": share, "test_composition": test, "seed": seed,
        "balance_labels": balance_labels,
        "train": _composition(train_keys[train_index], group),
        "test": _composition(test_keys[test_index], group),
    }
    return subset, record


def _keys(split: Any, by: ImbalanceKey, name: str) -> np.ndarray:
    if by == "class":
        return split.labels.numpy()
    if by != "group":
        raise ConfigError(f"unknown imbalance key {by!r}; choose 'group' or 'class'")
    if split.groups is None:
        raise DataError(
            f"the {name} split has no group attribute; attach one (fairness.read_group_csv, "
            "read_celeba_attributes) or use by='class'"
        )
    return split.groups.numpy()


def _composition(keys: np.ndarray, group: int) -> dict[str, Any]:
    count = int((keys == group).sum())
    return {"examples": int(len(keys)), "group_examples": count,
            "group_share": count / len(keys)}
