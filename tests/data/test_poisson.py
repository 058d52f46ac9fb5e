"""Poisson sampling includes each example with probability q, and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dpscope.data.poisson import PoissonSampler, ShuffledBatchSampler, physical_chunks
from dpscope.errors import ConfigError


def test_inclusion_frequencies_match_sample_rate():
    n, q, epochs = 200, 0.05, 40
    sampler = PoissonSampler(n, q, seed=3)
    counts = torch.zeros(n)
    steps = 0
    for _ in range(epochs):
        for batch in sampler:
            counts[batch] += 1
            steps += 1
    assert steps == epochs * 20
    # all inclusions pooled: Binomial(n * steps, q)
    assert stats.binomtest(int(counts.sum()), n * steps, q).pvalue > 1e-3
    # each example separately: Binomial(steps, q); no example is systematically favoured
    pvalues = [stats.binomtest(int(c), steps, q).pvalue for c in counts]
    assert min(pvalues) > 1e-5


def test_batch_sizes_are_binomial_and_vary():
    sampler = PoissonSampler(1000, 0.01, seed=0)
    sizes = torch.tensor([len(b) for _ in range(10) for b in sampler], dtype=torch.float64)
    assert sizes.std() > 0
    assert sizes.mean().item() == pytest.approx(10, abs=0.7)  # 1000 draws of Binomial(1000, 0.01)


def test_empty_batches_are_valid_index_tensors():
    sampler = PoissonSampler(10, 0.01, seed=0)  # P(empty) = 0.99^10 ~ 0.9
    batches = list(sampler)
    empty = [b for b in batches if len(b) == 0]
    assert len(batches) == 100 and empty
    assert all(b.dtype == torch.int64 and b.shape == (0,) for b in empty)
    assert physical_chunks(empty[0], 4) == []


def _take(sampler, count):
    """The next `count` batches, across epoch boundaries."""
    batches = []
    while len(batches) < count:
        for batch in sampler.epoch_batches():
            batches.append(batch.tolist())
            if len(batches) == count:
                break
    return batches


@pytest.mark.parametrize("make", [lambda: PoissonSampler(50, 0.1, seed=7),
                                  lambda: ShuffledBatchSampler(50, 8, seed=7)])
def test_resume_mid_epoch_reproduces_the_exact_sequence(make):
    total = 3 * len(make())
    expected = _take(make(), total)
    sampler = make()
    seen = _take(sampler, 3)
    resumed = make()
    resumed.load_state_dict(sampler.state_dict())
    assert seen + _take(resumed, total - 3) == expected
    assert resumed.epoch == 3


def test_steps_per_epoch_is_round_one_over_q():
    assert len(PoissonSampler(100, 0.3)) == 3
    assert len(PoissonSampler(100, 1 / 256)) == 256
    assert len(PoissonSampler(100, 1.0)) == 1


def test_different_seeds_give_different_batches():
    a = [b.tolist() for b in PoissonSampler(100, 0.1, seed=0)]
    b = [b.tolist() for b in PoissonSampler(100, 0.1, seed=1)]
    assert a != b


def test_shuffled_sampler_covers_each_example_once_per_epoch_and_is_flagged():
    sampler = ShuffledBatchSampler(23, 5, seed=0)
    batches = list(sampler)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(torch.cat(batches).tolist()) == list(range(23))
    assert len(list(ShuffledBatchSampler(23, 5, drop_last=True))) == 4
    assert sampler.sampling == "shuffle" and PoissonSampler(10, 0.5).sampling == "poisson"


def test_physical_chunks_partition_the_logical_batch():
    indices = torch.arange(10)
    chunks = physical_chunks(indices, 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ConfigError, match="physical_batch_size"):
        physical_chunks(indices, 0)


def test_bad_arguments_and_mismatched_state_are_refused():
    with pytest.raises(ConfigError, match="sample_rate"):
        PoissonSampler(10, 0.0)
    state = PoissonSampler(10, 0.5).state_dict()
    with pytest.raises(ConfigError, match="sample_rate"):
        PoissonSampler(10, 0.25).load_state_dict(state)


@settings(max_examples=15, deadline=None)
@given(stop=st.integers(0, 29), q=st.sampled_from([0.1, 0.25, 0.5]), seed=st.integers(0, 2**31))
def test_resume_after_any_number_of_batches_continues_the_same_sequence(stop, q, seed):
    expected = _take(PoissonSampler(20, q, seed=seed), 30)
    sampler = PoissonSampler(20, q, seed=seed)
    seen = _take(sampler, stop)
    resumed = PoissonSampler(20, q, seed=0)
    resumed.load_state_dict(sampler.state_dict())
    assert seen + _take(resumed, 30 - stop) == expected
