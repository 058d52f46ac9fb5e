"""stratified_split: a partition that keeps class proportions, fixed by the seed."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpscope.data import stratified_split


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200),
    weights=st.lists(st.integers(1, 10), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_parts_partition_the_examples_with_class_proportions_within_one(labels, weights, seed):
    labels_t = torch.tensor(labels, dtype=torch.int64)
    fractions = tuple(w / sum(weights) for w in weights)
    parts = stratified_split(labels_t, fractions, seed)
    everything = torch.cat(parts)
    assert sorted(everything.tolist()) == list(range(len(labels)))  # disjoint and complete
    totals = np.bincount(labels, minlength=5)
    for part, fraction in zip(parts, fractions):
        assert torch.equal(part, part.sort().values)
        counts = torch.bincount(labels_t[part], minlength=5).numpy()
        assert np.all(np.abs(counts - fraction * totals) <= 1)
    again = stratified_split(labels_t, fractions, seed)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
