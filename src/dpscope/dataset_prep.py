"""What a run does to its dataset after loading it: groups, imbalance, input perturbation,
input statistics.

    prepared = prepare_dataset(config, load_dataset(config.dataset, seed=config.seed))
    prepared.dataset        # what the run trains and is tested on
    prepared.records        # {"imbalance": ..., "perturbation": ...} for summary.json
    fairness_entry(prepared, predicted_test_labels)   # the `fairness` block of summary.json

Order, and why: the group attribute is attached first (imbalance and metrics read it), the
imbalance is drawn next, and the training images are perturbed after it, so only the images
the run trains on are perturbed. The input statistics come last, from the images actually
trained on, or fixed: a private run's mean and std must not come from its private images
(epsilon does not cover them), so it uses data-independent constants unless told otherwise.
Every step is a pure function of the config and the seed, so a resumed run rebuilds exactly
the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpscope.config import RunConfig
from dpscope.data import Dataset, ImageSplit
from dpscope.errors import ConfigError

SPLITS = ("train", "val", "test")
FIXED_MEAN, FIXED_STD = 0.5, 0.25
"""Data-independent input statistics, in [0, 1] units: pixels in [0, 1] map to [-2, 2]."""
FAIRNESS_RESAMPLES = 200
"""Bootstrap resamples for the fairness CIs of a run (counts are resampled, so this is fast)."""
_DECIMALS = 12  # 1 - majority_share is rounded here, so 1 - 0.999 is exactly 0.001


@dataclass(frozen=True)
class PreparedData:
    """The dataset a run uses, the names of its group codes, and what was done to it."""

    dataset: Dataset
    group_names: tuple[str, ...] | None = None  # ImageSplit.groups holds indices into this
    group_attribute: str | None = None  # "class" or the group CSV's path
    records: dict[str, Any] = field(default_factory=dict)


def prepare_dataset(config: RunConfig, dataset: Dataset) -> PreparedData:
    """Attach groups, draw the imbalance and perturb the training images, as configured."""
    config.check_imbalance()
    group_names = None
    records: dict[str, Any] = {}
    if config.groups is not None:
        dataset, group_names = with_groups(dataset, config.groups)
    if config.minority_group is not None:
        dataset, records["imbalance"] = _imbalance(config, dataset, group_names)
    if config.perturb is not None:
        from dpscope.data.perturb import perturb_training_images

        dataset, record = perturb_training_images(dataset, config.perturb, seed=config.seed)
        records["perturbation"] = record | {"statement": perturbation_statement(record)}
    dataset, records["input_normalization"] = _input_statistics(config, dataset)
    groups = None if config.groups is None else str(config.groups)
    return PreparedData(dataset, group_names, groups, records)


def _input_statistics(config: RunConfig, dataset: Dataset) -> tuple[Dataset, dict[str, Any]]:
    kind = config.input_statistics
    if kind == "fixed":
        channels = dataset.in_channels
        dataset = dataclasses.replace(dataset, mean=(FIXED_MEAN,) * channels, std=(FIXED_STD,) * channels)
    leaks = not config.input_statistics_covered
    values = f"mean {_values(dataset.mean)}, std {_values(dataset.std)}"
    statement = (f"fixed {values} (data-independent)" if kind == "fixed" else
                 f"{values} of the training images" + (
                     ": NOT covered by epsilon; --input-normalization fixed avoids it" if leaks else ""))
    return dataset, {"statistics": kind, "mean": list(dataset.mean), "std": list(dataset.std),
                     "covered_by_privacy": not leaks, "statement": statement}


def input_statistics_line(record: dict[str, Any]) -> str:
    """The plan's and the privacy statement's line on a private run's input statistics."""
    warning = "" if record["covered_by_privacy"] else "WARNING: "
    return f"{warning}input statistics: {record['statement']}"


def _values(numbers: tuple[float, ...]) -> str:
    return ",".join(f"{x:.4g}" for x in numbers)


def with_groups(dataset: Dataset, groups: str | Path) -> tuple[Dataset, tuple[str, ...]]:
    """The dataset with `ImageSplit.groups` set, and the name of each group code.

    `"class"`: the class is the group. A CSV path: rows `id,group` with ids `split/index`
    (`train/0`, `test/12`), one per example of every split (see fairness.read_group_csv).
    """
    if groups == "class":
        codes = {split: getattr(dataset, split).labels for split in SPLITS}
        names = tuple(dataset.class_names)
    else:
        from dpscope.fairness import read_group_csv

        values = {split: read_group_csv(Path(groups), [f"{split}/{i}" for i in
                                                       range(len(getattr(dataset, split)))])
                  for split in SPLITS}
        names = tuple(sorted(set().union(*(v.tolist() for v in values.values()))))
        codes = {split: torch.from_numpy(np.searchsorted(names, v).astype(np.int64))
                 for split, v in values.items()}
    splits = {split: ImageSplit(getattr(dataset, split).images, getattr(dataset, split).labels,
                                codes[split]) for split in SPLITS}
    return dataclasses.replace(dataset, **splits), names


def _imbalance(config: RunConfig, dataset: Dataset,
               group_names: tuple[str, ...] | None) -> tuple[Dataset, dict[str, Any]]:
    from dpscope.fairness import imbalanced_dataset

    assert group_names is not None and config.majority_share is not None
    minority = _group_code(config.minority_group, group_names, config.groups)
    minority_share = round(1.0 - config.majority_share, _DECIMALS)
    subset, record = imbalanced_dataset(
        dataset, minority, minority_share, by="class" if config.groups == "class" else "group",
        test=config.imbalance_test, seed=config.seed)
    record |= {"minority_group": group_names[minority], "majority_share": config.majority_share}
    return subset, record


def _group_code(name: str | None, group_names: tuple[str, ...], groups: Any) -> int:
    """The code of a group given by name, or by index when no group has that name."""
    if name in group_names:
        return group_names.index(name)
    if name is not None and name.isdigit() and int(name) < len(group_names):
        return int(name)
    source = "class" if groups == "class" else f"group in {groups}"
    raise ConfigError(f"minority_group {name!r} is no {source}; choose one of "
                      f"{list(group_names)} (or its index)")


def perturbation_statement(record: dict[str, Any]) -> str:
    """One plain sentence: what the perturbation guarantees, and what it does not."""
    from dpscope.data.perturb import KIND_NONE

    guarantee = record["guarantee"]
    where = record["applied_to"]
    if guarantee["kind"] == KIND_NONE:
        return (f"{record['mechanism']}: NOT image-level privacy ({guarantee['note']}); "
                f"{where}")
    delta = f", delta={guarantee['delta']:g}" if guarantee["delta"] else ""
    return (f"{record['mechanism']}: {guarantee['kind']} with epsilon={guarantee['epsilon']:g}"
            f"{delta} for {guarantee['neighbouring']}; {where}")


def fairness_entry(prepared: PreparedData, predicted: Any, *, seed: int = 0) -> dict[str, Any]:
    """The `fairness` block: per-group test metrics and gaps with bootstrap CIs.

    Groups are reported by name (class names when the class is the group); the positive label
    of TPR/FPR is class 1 (the disease in MedMNIST's binary sets), scored one-vs-rest.
    """
    from dpscope.fairness import fairness_summary

    test = prepared.dataset.test
    if prepared.group_names is None or test.groups is None:
        raise ConfigError("fairness metrics need groups (groups = \"class\" or a group CSV)")
    names = np.array(prepared.group_names)
    class_names = prepared.dataset.class_names
    block = fairness_summary(
        test.labels.cpu().numpy(), np.asarray(predicted), names[test.groups.cpu().numpy()],
        positive_label=1, labels=list(range(len(class_names))),
        n_resamples=FAIRNESS_RESAMPLES, seed=seed)
    return {"split": "test", "group_attribute": prepared.group_attribute, **block,
            "positive_class": class_names[1] if len(class_names) > 1 else None,
            "class_names": list(class_names)}

