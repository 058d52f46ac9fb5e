"""Imbalance controls hit the asked share exactly, deterministically, with clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpscope.errors import ConfigError, DataError
from dpscope.fairness import share_counts, subsample_to_share, test_set_indices

FARRAND_SHARES = (0.7, 0.8, 0.9, 0.99, 0.999)


def _celeba_like(n: int = 60_000, seed: int = 0):
    """Groups F/M at about 58/42 and a target that is about 48 % positive."""
    rng = np.random.default_rng(seed)
    groups = np.where(rng.random(n) < 0.58, "F", "M")
    target = (rng.random(n) < 0.48).astype(np.int64)
    return groups, target


@pytest.mark.parametrize("share", FARRAND_SHARES)
def test_share_is_exact_for_farrand_subsets(share):
    groups, _ = _celeba_like()
    idx = subsample_to_share(groups, "F", share, seed=0, total=30_000)
    assert len(idx) == 30_000 and len(np.unique(idx)) == 30_000
    assert (groups[idx] == "F").sum() == round(share * 30_000)
    assert (groups[idx] == "F").mean() == pytest.approx(share, abs=1e-12)


@pytest.mark.parametrize("share", FARRAND_SHARES)
def test_largest_subset_without_total_has_exact_share(share):
    groups, _ = _celeba_like(20_000)
    idx = subsample_to_share(groups, "F", share, seed=1)
    n_female = int((groups == "F").sum())
    assert (groups[idx] == "F").mean() == pytest.approx(share, abs=1e-12)
    # no larger multiple of the share's denominator would fit in the available females
    denominator = {0.7: 10, 0.8: 5, 0.9: 10, 0.99: 100, 0.999: 1000}[share]
    assert (len(idx) + denominator) * share > n_female


def test_rounding_is_half_up_on_the_decimal_share():
    assert share_counts(0.999, 30_000) == (29_970, 30)
    assert share_counts(0.999, 500) == (499, 1)  # 0.5 minority rounds up to 1
    assert share_counts(0.7, 15) == (10, 5)  # 4.5 rounds up to 5
    assert share_counts(0.3, 10) == (3, 7)  # 0.1 + 0.2 style float error does not leak


@given(share=st.floats(0.01, 0.99), total=st.integers(200, 100_000))
@settings(max_examples=200, deadline=None)
def test_counts_sum_to_total_and_share_within_half_an_example(share, total):
    group, rest = share_counts(share, total)
    assert group + rest == total and group >= 1 and rest >= 1
    assert abs(group - share * total) <= 0.5 + 1e-9


def test_balance_by_balances_the_target_within_each_group():
    groups, target = _celeba_like()
    idx = subsample_to_share(groups, "F", 0.9, seed=2, total=10_001, balance_by=target)
    assert len(idx) == 10_001
    female, male = idx[groups[idx] == "F"], idx[groups[idx] == "M"]
    assert (len(female), len(male)) == share_counts(0.9, 10_001)
    assert np.bincount(target[female]).tolist() == [4_501, 4_500]  # remainder to label 0
    assert np.bincount(target[male]).tolist() == [500, 500]


def test_same_seed_same_subset_and_other_seed_other_subset():
    groups, _ = _celeba_like(5_000)
    a = subsample_to_share(groups, "M", 0.8, seed=3, total=1_000)
    assert np.array_equal(a, subsample_to_share(groups, "M", 0.8, seed=3, total=1_000))
    assert not np.array_equal(a, subsample_to_share(groups, "M", 0.8, seed=4, total=1_000))
    assert np.all(np.diff(a) > 0)


def test_subsampling_a_class_with_several_other_values():
    labels = np.repeat(np.arange(4), 1000)
    idx = subsample_to_share(labels, 2, 0.7, seed=0, total=1_000)
    assert (labels[idx] == 2).sum() == 700
    others = np.bincount(labels[idx], minlength=4)[[0, 1, 3]]
    assert others.sum() == 300 and others.min() > 60  # the rest drawn from all other classes


def test_test_set_options_balanced_and_same_imbalance():
    groups, target = _celeba_like(20_000, seed=5)
    same = test_set_indices(groups, "F", 0.99, "same_imbalance", seed=0, total=3_000)
    balanced = test_set_indices(groups, "F", 0.99, "balanced", seed=0, total=3_000,
                                balance_by=target)
    assert (groups[same] == "F").sum() == 2_970
    assert (groups[balanced] == "F").sum() == 1_500
    assert np.bincount(target[balanced]).tolist() == [1_500, 1_500]
    with pytest.raises(ConfigError, match=r"unknown test composition 'skewed'"):
        test_set_indices(groups, "F", 0.9, "skewed", seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("call,error,message", [
    (lambda g: subsample_to_share(g, "F", 0.999, seed=0, total=400), DataError,
     r"leaves 0 minority examples \(fewer than 1\); use more examples \(total >= 500\)"),
    (lambda g: subsample_to_share(g, "F", 70, seed=0), ConfigError,
     r"strictly between 0 and 1, got 70 \(give a fraction: 0.7 for 70 %\)"),
    (lambda g: subsample_to_share(g, "F", 0.0, seed=0), ConfigError, "strictly between"),
    (lambda g: subsample_to_share(g, "X", 0.9, seed=0), DataError,
     r"no example has the key 'X'; keys present: \['F', 'M'\]"),
    (lambda g: subsample_to_share(g, "F", 0.5, seed=0, total=100_000), DataError,
     r"need 50000 group examples but only \d+ exist"),
    (lambda g: subsample_to_share(g, "F", 0.9, seed=0, total=0), ConfigError,
     "total must be a positive integer"),
    (lambda g: subsample_to_share(g, "F", 0.9, seed=0, balance_by=np.zeros(3)), DataError,
     "balance_by has 3 entries"),
])
def test_refusals_say_what_is_wrong(call, error, message):
    groups, _ = _celeba_like(2_000)
    with pytest.raises(error, match=message):
        call(groups)


def test_too_few_minority_examples_for_any_subset_is_refused():
    groups = np.array(["F"] * 50 + ["M"])
    with pytest.raises(DataError, match="no subset has share 0.999"):
        subsample_to_share(groups, "F", 0.999, seed=0)


def test_balance_by_refuses_a_group_missing_a_label_value():
    groups = np.array(["F"] * 400 + ["M"] * 20)
    target = np.array([0, 1] * 200 + [0] * 20)  # no positive male
    with pytest.raises(DataError, match=r"need 3 rest examples balanced by label but only 1"):
        subsample_to_share(groups, "F", 0.99, seed=0, total=300, balance_by=target)
