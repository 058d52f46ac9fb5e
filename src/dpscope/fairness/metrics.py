"""Per-group classification metrics and the gaps between groups, from confusion counts.

fairlearn's MetricFrame splits the examples by group and gives each group's confusion matrix;
every metric is then a function of those counts. Two reasons for going through counts: a rate
with an empty denominator (TPR of a group without positives) is undefined here (NaN, None in
JSON) where fairlearn's rate functions return 0, and the bootstrap can resample counts
exactly and fast (see `bootstrap`). The functions below are vectorised over leading axes:
matrices (..., G, K, K) give rates (..., G) and gaps (...).

Binary targets use `positive_label`; multiclass targets are scored one-vs-rest against it,
with the multiclass accuracy and the per-class accuracy (recall of each class) beside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fairlearn.metrics import MetricFrame
from sklearn.metrics import confusion_matrix

from dpscope.errors import ConfigError, DataError
from dpscope.fairness._arrays import as_1d

RATES = ("accuracy", "tpr", "fpr", "fnr", "selection_rate")
GAPS = {
    "accuracy_difference": "accuracy",
    "demographic_parity_difference": "selection_rate",
    "equal_opportunity_difference": "tpr",
    "fpr_difference": "fpr",
    "fnr_difference": "fnr",
}
"""Each gap is the largest minus the smallest group value of its rate (|a - b| for 2 groups)."""


@dataclass(frozen=True)
class GroupConfusion:
    """Confusion counts per group: matrices[g, true, predicted] over `labels` in order."""

    groups: tuple[Any, ...]
    labels: tuple[Any, ...]
    matrices: np.ndarray  # (G, K, K) int64

    def positive_index(self, positive_label: Any) -> int:
        if positive_label not in self.labels:
            raise ConfigError(f"positive label {positive_label!r} is not among the labels "
                              f"{list(self.labels)}; pass labels=[...] listing every class "
                              "when a split may lack one")
        return self.labels.index(positive_label)


def group_confusion(y_true: Any, y_pred: Any, groups: Any, labels: Any = None) -> GroupConfusion:
    """Per-group confusion matrices through fairlearn's MetricFrame."""
    y_true, y_pred, groups = (as_1d(a, name) for a, name in
                              ((y_true, "y_true"), (y_pred, "y_pred"), (groups, "groups")))
    if not len(y_true) == len(y_pred) == len(groups):
        raise DataError(f"y_true, y_pred and groups differ in length: "
                        f"{len(y_true)}, {len(y_pred)}, {len(groups)}")
    if len(y_true) == 0:
        raise DataError("no examples to score: y_true is empty")
    if labels is None:
        labels = np.union1d(y_true, y_pred)
    labels = tuple(np.asarray(labels).tolist())
    unknown = np.setdiff1d(np.union1d(y_true, y_pred), labels)
    if len(unknown):
        raise DataError(f"labels {unknown.tolist()[:5]} occur in y_true or y_pred but not in "
                        f"labels={list(labels)}")
    frame = MetricFrame(
        metrics=lambda t, p: confusion_matrix(t, p, labels=list(labels)),
        y_true=y_true, y_pred=y_pred, sensitive_features=groups,
    )
    by_group = frame.by_group
    matrices = np.stack([np.asarray(m, dtype=np.int64) for m in by_group.to_numpy()])
    return GroupConfusion(tuple(by_group.index.tolist()), labels, matrices)


def rates(matrices: np.ndarray, positive_index: int) -> dict[str, np.ndarray]:
    """Accuracy, TPR, FPR, FNR and selection rate (one-vs-rest) from (..., K, K) counts."""
    m = np.asarray(matrices, dtype=np.float64)
    n = m.sum(axis=(-2, -1))
    tp = m[..., positive_index, positive_index]
    positives = m[..., positive_index, :].sum(-1)
    predicted = m[..., :, positive_index].sum(-1)
    fp = predicted - tp
    negatives = n - positives
    return {
        "accuracy": _ratio(np.trace(m, axis1=-2, axis2=-1), n),
        "tpr": _ratio(tp, positives),
        "fpr": _ratio(fp, negatives),
        "fnr": _ratio(positives - tp, positives),
        "selection_rate": _ratio(predicted, n),
    }


def per_class_accuracy(matrices: np.ndarray) -> np.ndarray:
    """(..., K): the share of each true class predicted correctly (NaN for an absent class)."""
    m = np.asarray(matrices, dtype=np.float64)
    return _ratio(np.diagonal(m, axis1=-2, axis2=-1), m.sum(-1))


def gaps(group_rates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Max minus min over the group axis (last); NaN where any group's rate is undefined."""
    return {gap: group_rates[rate].max(-1) - group_rates[rate].min(-1)
            for gap, rate in GAPS.items()}


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1),
                        np.nan)
