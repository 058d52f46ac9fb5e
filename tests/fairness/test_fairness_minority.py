"""Minority vs rest: hand-counted values, and CIs against an example-level bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from dpscope.errors import ConfigError, DataError
from dpscope.fairness import fairness_summary, minority_vs_rest, minority_vs_rest_of_summary

COUNTS = {"a": 10, "b": 30, "c": 60}
CORRECT = {"a": 4, "b": 27, "c": 51}


def test_values_are_the_pooled_accuracies_by_hand():
    result = minority_vs_rest(COUNTS, CORRECT, "a", n_resamples=10)
    assert result["minority_accuracy"]["value"] == pytest.approx(0.4)
    assert result["majority_accuracy"]["value"] == pytest.approx(78 / 90)
    assert result["accuracy_gap"]["value"] == pytest.approx(78 / 90 - 0.4)
    # signed: the gap turns negative when the minority is the better-served group
    flipped = minority_vs_rest(COUNTS, CORRECT, "b", n_resamples=10)
    assert flipped["accuracy_gap"]["value"] == pytest.approx(55 / 70 - 0.9)


def _example_level_bootstrap(counts, correct, minority, n_resamples, seed):
    """Resample each group's 0/1 outcomes with replacement; pool the rest; 95 % percentiles."""
    rng = np.random.default_rng(seed)
    outcomes = {g: np.r_[np.ones(correct[g]), np.zeros(counts[g] - correct[g])] for g in counts}
    stats = []
    for _ in range(n_resamples):
        drawn = {g: rng.choice(v, size=len(v), replace=True) for g, v in outcomes.items()}
        low = drawn[minority].mean()
        rest = np.concatenate([v for g, v in drawn.items() if g != minority]).mean()
        stats.append((low, rest, rest - low))
    return np.percentile(np.array(stats), [2.5, 97.5], axis=0)  # (2, 3)


def test_intervals_match_an_example_level_stratified_bootstrap():
    ours = minority_vs_rest(COUNTS, CORRECT, "a", n_resamples=20000, seed=1)
    reference = _example_level_bootstrap(COUNTS, CORRECT, "a", 4000, seed=2)
    for column, name in enumerate(("minority_accuracy", "majority_accuracy", "accuracy_gap")):
        low, high = ours[name]["ci"]
        assert low <= ours[name]["value"] <= high
        # Monte Carlo error of a 2.5 % quantile at these sizes: well under one example's share
        assert low == pytest.approx(reference[0, column], abs=0.035)
        assert high == pytest.approx(reference[1, column], abs=0.035)


def test_a_perfect_or_hopeless_group_has_a_degenerate_interval():
    result = minority_vs_rest({"a": 5, "b": 20}, {"a": 0, "b": 20}, "a", n_resamples=200)
    assert result["minority_accuracy"]["ci"] == [0.0, 0.0]
    assert result["accuracy_gap"] == {"value": 1.0, "ci": [1.0, 1.0]}


def test_from_a_run_summary_agrees_with_its_per_group_accuracies():
    rng = np.random.default_rng(0)
    groups = np.array(["normal"] * 40 + ["pneumonia"] * 160)
    y_true = (groups == "pneumonia").astype(int)
    y_pred = np.where(rng.random(200) < 0.8, y_true, 1 - y_true)
    block = fairness_summary(y_true, y_pred, groups, n_resamples=50)
    result = minority_vs_rest_of_summary(block, "normal", n_resamples=50)
    assert result["minority_accuracy"]["value"] == pytest.approx(
        block["groups"]["normal"]["accuracy"]["value"])
    assert result["majority_accuracy"]["value"] == pytest.approx(
        block["groups"]["pneumonia"]["accuracy"]["value"])
    # two groups: the absolute gap over all groups is |majority - minority|
    assert abs(result["accuracy_gap"]["value"]) == pytest.approx(
        block["gaps"]["accuracy_difference"]["value"])


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(DataError, match="minority group 'z' is not among"):
        minority_vs_rest(COUNTS, CORRECT, "z")
    with pytest.raises(DataError, match="between 0 and its example count"):
        minority_vs_rest({"a": 3, "b": 4}, {"a": 4, "b": 1}, "a")
    with pytest.raises(DataError, match="and of another group"):
        minority_vs_rest({"a": 3, "b": 0}, {"a": 1, "b": 0}, "a")
    with pytest.raises(ConfigError, match="n_resamples must be a positive integer"):
        minority_vs_rest(COUNTS, CORRECT, "a", n_resamples=0)
