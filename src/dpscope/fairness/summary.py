"""The `fairness` entry of a run summary: per-group metrics and gaps with bootstrap CIs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dpscope.fairness.bootstrap import percentile_interval, resample_confusion
from dpscope.fairness.metrics import GAPS, RATES, gaps, group_confusion, per_class_accuracy, rates


def fairness_summary(
    y_true: Any, y_pred: Any, groups: Any, *, positive_label: Any = 1, labels: Any = None,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, Any]:
    """JSON-ready per-group metrics and gaps, each as {"value", "ci": [low, high]}.

    Undefined values (a rate with an empty denominator) are None. Gaps are absolute, so near
    zero their percentile intervals lean upward and need not straddle the point estimate.
    `n_resamples=0` skips the bootstrap (every "ci" is None). Group and label keys are
    strings, as JSON needs. `labels` lists every class when a split may lack one.
    """
    confusion = group_confusion(y_true, y_pred, groups, labels)
    positive = confusion.positive_index(positive_label)
    point = _statistics(confusion.matrices, positive)
    if n_resamples:
        replicates = _statistics(resample_confusion(confusion.matrices, n_resamples, seed),
                                 positive)
        bounds = {k: percentile_interval(v, confidence) for k, v in replicates.items()}
    else:
        bounds = {}

    def entry(key: str, index: tuple = ()) -> dict[str, Any]:
        low_high = bounds.get(key)
        ci = None if low_high is None else [_json(low_high[0][index]), _json(low_high[1][index])]
        return {"value": _json(point[key][index]), "ci": ci}

    per_group = {}
    for g, group in enumerate(confusion.groups):
        matrix = confusion.matrices[g]
        per_group[str(group)] = {
            "count": int(matrix.sum()),
            "positives": int(matrix[positive].sum()),
            **{rate: entry(rate, (g,)) for rate in RATES},
            "per_class_accuracy": {str(label): entry("per_class_accuracy", (g, k))
                                   for k, label in enumerate(confusion.labels)},
        }
    return {
        "positive_label": _json(positive_label),
        "labels": [_json(label) for label in confusion.labels],
        "n_examples": int(confusion.matrices.sum()),
        "groups": per_group,
        "gaps": {gap: entry(gap) for gap in GAPS},
        "bootstrap": {"method": "percentile", "stratified_by": "group",
                      "n_resamples": int(n_resamples), "confidence": confidence, "seed": seed},
    }


def _statistics(matrices: np.ndarray, positive: int) -> dict[str, np.ndarray]:
    """Every reported statistic of (..., G, K, K) counts: rates (..., G), gaps (...)."""
    group_rates = rates(matrices, positive)
    return {**group_rates, **gaps(group_rates), "per_class_accuracy": per_class_accuracy(matrices)}


def _json(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
