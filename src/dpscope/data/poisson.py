"""Batch samplers: Poisson sampling for private training, shuffled fixed-size batches otherwise.

Both yield index tensors, one per logical step, `len(sampler)` per epoch, from a seeded
`torch.Generator`, and save their exact position (`state_dict`) so a resumed run, even one
resumed mid-epoch, continues with the very same batches.

Poisson sampling is what the accountant analyses (`PoissonSampledDpEvent`): every example joins
every step independently with probability q, so batch sizes vary (Binomial(N, q)) and an empty
batch is a valid batch; the training step must still add noise for it. Shuffled batches are NOT
Poisson: they carry `sampling = "shuffle"`, and a privacy plan refuses to claim epsilon for them
unless told to and then says so.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

from dpscope.errors import ConfigError


class PoissonSampler:
    """Each step, each of `dataset_size` examples is in the batch with probability `sample_rate`.

    An epoch is round(1/q) steps, so each example is seen once per epoch in expectation.
    """

    sampling = "poisson"

    def __init__(self, dataset_size: int, sample_rate: float, *, seed: int = 0) -> None:
        if dataset_size < 1:
            raise ConfigError(f"dataset_size must be >= 1, got {dataset_size}")
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate}; use batch_size / N")
        self.dataset_size = int(dataset_size)
        self.sample_rate = float(sample_rate)
        self.steps_per_epoch = max(1, round(1 / self.sample_rate))
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.epoch_batches()

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        """The remaining batches of the current epoch: (B,) int64 indices, B ~ Binomial(N, q)."""
        for _ in range(self.steps_per_epoch - self.step_in_epoch):
            included = torch.rand(self.dataset_size, generator=self.generator) < self.sample_rate
            self._advance()
            yield included.nonzero().squeeze(1)

    def _advance(self) -> None:
        # The position moves before the batch is handed out, so a state_dict taken after
        # receiving batch k resumes with batch k + 1.
        self.step_in_epoch += 1
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "generator": self.generator.get_state(), "sample_rate": self.sample_rate,
                "dataset_size": self.dataset_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_same(self, state, ("sample_rate", "dataset_size"))
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.generator.set_state(state["generator"])


class ShuffledBatchSampler:
    """Fixed-size batches of a fresh random permutation each epoch (non-private training).

    Not Poisson sampling: a private run using it gets no proven guarantee (see the privacy plan).
    """

    sampling = "shuffle"

    def __init__(self, dataset_size: int, batch_size: int, *, drop_last: bool = False, seed: int = 0) -> None:
        if dataset_size < 1 or batch_size < 1:
            raise ConfigError(f"dataset_size and batch_size must be >= 1, got {dataset_size}, {batch_size}")
        self.dataset_size = int(dataset_size)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.step_in_epoch = 0
        self._epoch_start_state = self.generator.get_state()  # regenerates the current permutation

    def __len__(self) -> int:
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return -(-self.dataset_size // self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.epoch_batches()

    def epoch_batches(self) -> Iterator[torch.Tensor]:
        """The remaining batches of the current epoch, each (batch_size,) int64 (last may be short)."""
        generator = torch.Generator().set_state(self._epoch_start_state)
        batches = torch.randperm(self.dataset_size, generator=generator).split(self.batch_size)[: len(self)]
        for batch in batches[self.step_in_epoch:]:
            self.step_in_epoch += 1
            if self.step_in_epoch == len(self):
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._epoch_start_state = generator.get_state()
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "generator": self._epoch_start_state, "batch_size": self.batch_size,
                "dataset_size": self.dataset_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_same(self, state, ("batch_size", "dataset_size"))
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self._epoch_start_state = state["generator"]


def physical_chunks(indices: torch.Tensor, physical_batch_size: int) -> list[torch.Tensor]:
    """Split a logical batch into chunks of at most `physical_batch_size` (virtual batches).

    The clipped gradient sums of the chunks add up to the logical batch's sum; noise is added
    once per logical step, never per chunk. An empty batch gives no chunks, and the step must
    still be taken: the optimizer noises an all-zero sum.
    """
    if physical_batch_size < 1:
        raise ConfigError(f"physical_batch_size must be >= 1, got {physical_batch_size}")
    return list(indices.split(physical_batch_size)) if len(indices) else []


def _check_same(sampler: Any, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if state[key] != getattr(sampler, key):
            raise ConfigError(f"sampler state has {key}={state[key]}, this sampler {getattr(sampler, key)}; "
                              "resume with the run's original configuration")
