"""Per-group metrics, gaps and bootstrap intervals against hand counts and fairlearn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equal_opportunity_difference,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, recall_score

from dpscope.errors import ConfigError, DataError
from dpscope.fairness import (
    fairness_summary,
    group_confusion,
    percentile_interval,
    rates,
    resample_confusion,
)


def _examples(counts: dict[str, tuple[int, int, int, int]]):
    """y_true, y_pred, groups with the given (TP, FN, FP, TN) per group."""
    y_true, y_pred, groups = [], [], []
    for group, (tp, fn, fp, tn) in counts.items():
        for (t, p), n in (((1, 1), tp), ((1, 0), fn), ((0, 1), fp), ((0, 0), tn)):
            y_true += [t] * n
            y_pred += [p] * n
            groups += [group] * n
    return np.array(y_true), np.array(y_pred), np.array(groups)


HAND = {"A": (3, 1, 2, 4), "B": (1, 3, 0, 2)}


def _value(summary, *path):
    node = summary
    for key in path:
        node = node[key]
    return node["value"]


def test_confusion_matrices_match_hand_counts():
    confusion = group_confusion(*_examples(HAND))
    assert confusion.groups == ("A", "B") and confusion.labels == (0, 1)
    np.testing.assert_array_equal(confusion.matrices, [[[4, 2], [1, 3]], [[2, 0], [3, 1]]])


def test_per_group_rates_match_hand_computation():
    s = fairness_summary(*_examples(HAND), n_resamples=0)
    expected = {
        "A": {"accuracy": 0.7, "tpr": 0.75, "fpr": 2 / 6, "fnr": 0.25, "selection_rate": 0.5},
        "B": {"accuracy": 0.5, "tpr": 0.25, "fpr": 0.0, "fnr": 0.75, "selection_rate": 1 / 6},
    }
    for group, values in expected.items():
        assert s["groups"][group]["count"] == sum(HAND[group])
        assert s["groups"][group]["positives"] == HAND[group][0] + HAND[group][1]
        for rate, value in values.items():
            assert _value(s, "groups", group, rate) == pytest.approx(value)
    assert _value(s, "groups", "A", "per_class_accuracy", "0") == pytest.approx(4 / 6)
    assert s["groups"]["A"]["accuracy"]["ci"] is None


def test_gaps_match_hand_computation():
    s = fairness_summary(*_examples(HAND), n_resamples=0)
    assert _value(s, "gaps", "accuracy_difference") == pytest.approx(0.2)
    assert _value(s, "gaps", "demographic_parity_difference") == pytest.approx(0.5 - 1 / 6)
    assert _value(s, "gaps", "equal_opportunity_difference") == pytest.approx(0.5)
    assert _value(s, "gaps", "fpr_difference") == pytest.approx(1 / 3)
    assert _value(s, "gaps", "fnr_difference") == pytest.approx(0.5)


def _random_binary(n: int, seed: int, groups=("F", "M"), minority=0.2):
    rng = np.random.default_rng(seed)
    g = np.where(rng.random(n) < minority, groups[1], groups[0])
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < np.where(g == groups[0], 0.85, 0.7), y_true, 1 - y_true)
    return y_true, y_pred, g


def test_rates_and_gaps_agree_with_fairlearn():
    y_true, y_pred, g = _random_binary(3000, seed=1)
    s = fairness_summary(y_true, y_pred, g, n_resamples=0)
    reference = MetricFrame(
        metrics={"accuracy": accuracy_score, "tpr": true_positive_rate,
                 "fpr": false_positive_rate, "fnr": false_negative_rate,
                 "selection_rate": selection_rate},
        y_true=y_true, y_pred=y_pred, sensitive_features=g,
    ).by_group
    for group in ("F", "M"):
        for rate in reference.columns:
            assert _value(s, "groups", group, rate) == pytest.approx(reference.loc[group, rate])
    dp = demographic_parity_difference(y_true, y_pred, sensitive_features=g)
    eo = equal_opportunity_difference(y_true, y_pred, sensitive_features=g)
    assert _value(s, "gaps", "demographic_parity_difference") == pytest.approx(dp)
    assert _value(s, "gaps", "equal_opportunity_difference") == pytest.approx(eo)


def test_rate_of_group_without_positives_is_undefined_not_zero():
    y_true, y_pred, g = _examples({"A": (3, 1, 2, 4), "B": (0, 0, 1, 5)})
    s = fairness_summary(y_true, y_pred, g, n_resamples=50)
    assert s["groups"]["B"]["tpr"] == {"value": None, "ci": [None, None]}
    assert _value(s, "groups", "B", "fnr") is None
    assert _value(s, "gaps", "equal_opportunity_difference") is None
    assert _value(s, "groups", "B", "fpr") == pytest.approx(1 / 6)
    json.dumps(s, allow_nan=False)


def test_multiclass_is_one_vs_rest_with_per_class_accuracy():
    rng = np.random.default_rng(2)
    y_true = rng.integers(0, 3, 600)
    y_pred = np.where(rng.random(600) < 0.6, y_true, rng.integers(0, 3, 600))
    g = rng.choice(["a", "b", "c"], 600)
    s = fairness_summary(y_true, y_pred, g, positive_label=2, n_resamples=0)
    assert s["labels"] == [0, 1, 2]
    for group in ("a", "b", "c"):
        m = g == group
        t, p = y_true[m] == 2, y_pred[m] == 2
        assert _value(s, "groups", group, "tpr") == pytest.approx(true_positive_rate(t, p))
        assert _value(s, "groups", group, "fpr") == pytest.approx(false_positive_rate(t, p))
        assert _value(s, "groups", group, "accuracy") == pytest.approx(
            accuracy_score(y_true[m], y_pred[m]))
        recalls = recall_score(y_true[m], y_pred[m], average=None, labels=[0, 1, 2])
        for k in range(3):
            assert _value(s, "groups", group, "per_class_accuracy", str(k)) == pytest.approx(
                recalls[k])
    tprs = [_value(s, "groups", x, "tpr") for x in "abc"]
    assert _value(s, "gaps", "equal_opportunity_difference") == pytest.approx(
        max(tprs) - min(tprs))


def _widths(summary) -> np.ndarray:
    entries = [summary["groups"][g][r] for g in summary["groups"] for r in
               ("accuracy", "tpr", "fpr", "selection_rate")] + list(summary["gaps"].values())
    return np.array([e["ci"][1] - e["ci"][0] for e in entries])


def test_bootstrap_interval_contains_point_estimate_and_narrows_with_more_data():
    y_true, y_pred, g = _random_binary(1000, seed=3, minority=0.3)
    small = fairness_summary(y_true, y_pred, g, n_resamples=2000, seed=0)
    for group in small["groups"].values():
        for rate in ("accuracy", "tpr", "fpr", "fnr", "selection_rate"):
            low, high = group[rate]["ci"]
            assert low <= group[rate]["value"] <= high
    big = fairness_summary(*(np.tile(a, 16) for a in (y_true, y_pred, g)), n_resamples=2000,
                           seed=0)
    ratio = _widths(big)[:8] / _widths(small)[:8]
    np.testing.assert_allclose(ratio, 0.25, atol=0.07)  # width ~ 1 / sqrt(n)


def test_bootstrap_is_seeded_and_stratified():
    confusion = group_confusion(*_random_binary(500, seed=4))
    a = resample_confusion(confusion.matrices, 300, seed=9)
    np.testing.assert_array_equal(a, resample_confusion(confusion.matrices, 300, seed=9))
    assert not np.array_equal(a, resample_confusion(confusion.matrices, 300, seed=10))
    np.testing.assert_array_equal(a.sum(axis=(2, 3)),
                                  np.broadcast_to(confusion.matrices.sum(axis=(1, 2)), (300, 2)))


def test_count_bootstrap_matches_resampling_examples_within_groups():
    """The multinomial shortcut against the textbook bootstrap over example indices."""
    y_true, y_pred, g = _random_binary(400, seed=5, minority=0.25)
    confusion = group_confusion(y_true, y_pred, g)
    fast = rates(resample_confusion(confusion.matrices, 4000, seed=0), 1)["tpr"]
    rng = np.random.default_rng(1)
    members = [np.flatnonzero(g == group) for group in confusion.groups]
    slow = np.empty((4000, 2))
    for j, idx in enumerate(members):
        pick = idx[rng.integers(0, len(idx), size=(4000, len(idx)))]  # (R, n_group) indices
        slow[:, j] = (y_true[pick] & y_pred[pick]).sum(1) / y_true[pick].sum(1)
    for j in range(2):
        np.testing.assert_allclose(percentile_interval(fast[:, j], 0.9),
                                   percentile_interval(slow[:, j], 0.9), atol=0.012)


@pytest.mark.parametrize("call,error,message", [
    (lambda: fairness_summary([0, 1], [0], ["a", "b"]), DataError, "differ in length"),
    (lambda: fairness_summary([], [], []), DataError, "empty"),
    (lambda: fairness_summary([0, 1], [0, 1], ["a", "b"], positive_label=5), ConfigError,
     r"positive label 5 is not among the labels \[0, 1\]"),
    (lambda: fairness_summary([0, 1], [0, 1], ["a", "b"], n_resamples=-3), ConfigError,
     "n_resamples must be a positive integer"),
    (lambda: fairness_summary([0, 1], [0, 1], ["a", "b"], confidence=95), ConfigError,
     r"confidence must lie in \(0, 1\)"),
    (lambda: fairness_summary(np.zeros((2, 2)), [0, 1], ["a", "b"]), DataError, "1-D"),
    (lambda: fairness_summary([0, 2], [0, 1], ["a", "b"], labels=[0, 1]), DataError,
     r"labels \[2\] occur in y_true or y_pred but not in labels=\[0, 1\]"),
])
def test_errors_say_what_is_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_explicit_labels_score_a_split_without_positives():
    s = fairness_summary([0, 0, 0], [0, 0, 1], ["a", "a", "b"], labels=[0, 1], n_resamples=0)
    assert s["labels"] == [0, 1] and _value(s, "groups", "b", "fpr") == 1.0
    assert _value(s, "groups", "a", "tpr") is None


def test_summary_is_json_ready_with_string_keys():
    y_true, y_pred, _ = _random_binary(200, seed=6)
    groups = np.arange(200) % 2  # integer groups
    s = fairness_summary(y_true.reshape(-1, 1), y_pred, groups, n_resamples=100)
    assert set(s["groups"]) == {"0", "1"} and s["n_examples"] == 200
    assert s["bootstrap"] == {"method": "percentile", "stratified_by": "group",
                              "n_resamples": 100, "confidence": 0.95, "seed": 0}
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_torch_inputs_give_the_same_summary_as_numpy():
    import torch

    y_true, y_pred, g = _random_binary(300, seed=7)
    groups = (g == "M").astype(np.int64)
    as_numpy = fairness_summary(y_true, y_pred, groups, n_resamples=100, seed=1)
    as_torch = fairness_summary(torch.from_numpy(y_true), torch.from_numpy(y_pred),
                                torch.from_numpy(groups), n_resamples=100, seed=1)
    assert as_torch == as_numpy
