"""Who pays for privacy: per-group metrics, their gaps, and imbalance controls.

Groups come from a CSV table, CelebA's attribute file or the class itself (`groups`);
`imbalance` draws training and test subsets with a chosen group share (`imbalanced_dataset`
applies it to a loaded dataset); `fairness_summary`
turns (y_true, y_pred, groups) into the JSON-ready `fairness` entry of a run summary;
`minority_vs_rest` sets the rare group against all others pooled, with bootstrap CIs.
"""

from __future__ import annotations

from dpscope.fairness.bootstrap import percentile_interval, resample_confusion
from dpscope.fairness.groups import (
    CelebaAttributes,
    groups_from_labels,
    read_celeba_attributes,
    read_group_csv,
)
from dpscope.fairness.imbalance import (
    TestComposition,
    share_counts,
    subsample_to_share,
    test_set_indices,
)
from dpscope.fairness.metrics import (
    GAPS,
    RATES,
    GroupConfusion,
    gaps,
    group_confusion,
    per_class_accuracy,
    rates,
)
from dpscope.fairness.minority import minority_vs_rest, minority_vs_rest_of_summary
from dpscope.fairness.subsets import ImbalanceKey, imbalanced_dataset
from dpscope.fairness.summary import fairness_summary

__all__ = [
    "GAPS",
    "RATES",
    "CelebaAttributes",
    "GroupConfusion",
    "ImbalanceKey",
    "TestComposition",
    "fairness_summary",
    "gaps",
    "group_confusion",
    "groups_from_labels",
    "imbalanced_dataset",
    "minority_vs_rest",
    "minority_vs_rest_of_summary",
    "per_class_accuracy",
    "percentile_interval",
    "rates",
    "read_celeba_attributes",
    "read_group_csv",
    "resample_confusion",
    "share_counts",
    "subsample_to_share",
    "test_set_indices",
]
