"""Poisson sampling includes each example with probability q, and resumes exactly."""

from __future__ import annotations

import pytest
import torch
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


@pytest.mark.parametrize("make", [lambda: PoissonSampler(50, 0.1, seed=7),
                                  lambda: ShuffledBatchSampler(50, 8, seed=7)])
def test_resume_mid_epoch_reproduces_the_exact_sequence(make):
    reference = make()
    expected = [b.tolist() for _ in range(3) for b in reference.epoch_batches()]
    sampler = make()
    seen = []
    for batch in sampler.epoch_batches():
        seen.append(batch.tolist())
        if len(seen) == 3:
            break
    state = sampler.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    while len(seen) < len(expected):
        seen.extend(b.tolist() for b in resumed.epoch_batches())
    assert seen == expected
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
