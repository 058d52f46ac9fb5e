"""The minority group against everyone else: both accuracies and their gap, with bootstrap CIs.

The gaps of `metrics.GAPS` run over all groups (largest minus smallest), so with the class as
the group, or with many small groups, they mix in groups the imbalance did not touch (digits:
nine other classes of a handful of test images each). Farrand et al. 2020 ask how the rare group
fares against the rest, which is this. A group's accuracy depends only on its number of
correct predictions, and resampling its n examples with replacement makes that number
Binomial(n, accuracy): the stratified bootstrap of `bootstrap.resample_confusion`, reduced to
one binomial draw per group. So per-group counts and accuracies, as every run's summary.json
`fairness` block holds them, are enough; no predictions are needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dpscope.errors import ConfigError, DataError
from dpscope.fairness.bootstrap import percentile_interval

STATISTICS = ("minority_accuracy", "majority_accuracy", "accuracy_gap")
"""accuracy_gap = majority_accuracy - minority_accuracy (signed: negative if the minority wins)."""


def minority_vs_rest(
    counts: Mapping[str, int], correct: Mapping[str, int], minority: str, *,
    n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """{statistic: {"value", "ci": [low, high]}} for the minority vs all other groups pooled.

    `counts[g]` test examples of group g, `correct[g]` of them predicted right. Groups
    without examples are ignored; a minority or a rest without examples is an error.
    """
    if minority not in counts:
        raise DataError(f"minority group {minority!r} is not among the groups {sorted(counts)}")
    names = [g for g in counts if counts[g] > 0]
    n = np.array([int(counts[g]) for g in names], dtype=np.int64)
    k = np.array([int(correct[g]) for g in names], dtype=np.int64)
    if np.any(k < 0) or np.any(k > n):
        raise DataError("each group's correct count must lie between 0 and its example count")
    if minority not in names or len(names) < 2:
        raise DataError(f"need test examples of the minority {minority!r} and of another group")
    is_minority = np.array([g == minority for g in names])
    point = _statistics(k[None, :], n, is_minority)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) \
            or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    rng = np.random.default_rng(seed)
    replicates = _statistics(rng.binomial(n, k / n, size=(n_resamples, len(n))), n, is_minority)
    result = {}
    for name in STATISTICS:
        low, high = percentile_interval(replicates[name], confidence)
        result[name] = {"value": float(point[name][0]), "ci": [float(low), float(high)]}
    return result


def minority_vs_rest_of_summary(fairness: Mapping[str, Any], minority: str,
                                **bootstrap: Any) -> dict[str, dict[str, Any]]:
    """`minority_vs_rest` from a run summary's `fairness` block (count and accuracy per group)."""
    groups = fairness["groups"]
    counts = {g: int(entry["count"]) for g, entry in groups.items()}
    correct = {g: int(round((entry["accuracy"]["value"] or 0.0) * entry["count"]))
               for g, entry in groups.items()}
    return minority_vs_rest(counts, correct, minority, **bootstrap)


def _statistics(correct: np.ndarray, n: np.ndarray, is_minority: np.ndarray) -> dict[str, Any]:
    """(R, G) correct counts -> each statistic as an (R,) array."""
    minority = correct[:, is_minority].sum(1) / n[is_minority].sum()
    majority = correct[:, ~is_minority].sum(1) / n[~is_minority].sum()
    return {"minority_accuracy": minority, "majority_accuracy": majority,
            "accuracy_gap": majority - minority}
