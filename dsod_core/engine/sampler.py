"""Batch plan shared by single- and multi-process training.

Every epoch draws one permutation from ``(seed, epoch)`` and cuts it into micro-batches of
``batch_size``. An optimiser step consumes ``world_size * accumulate`` consecutive
micro-batches; process ``r`` takes those whose position within the step is ``r`` modulo the
world size. Hence one process with ``accumulate = 2`` sees exactly the same micro-batches (and
BatchNorm batch statistics) as two processes with ``accumulate = 1``: the global batch and the
BN grouping do not depend on how many processes share the work. (A DistributedSampler would
interleave samples across ranks and change the BN groups.)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        accumulate: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def steps_per_epoch(self) -> int:
        per_step = self.batch_size * self.accumulate * self.world_size
        return self.num_samples // per_step

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulate

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        b = self.batch_size
        n_micro = self.steps_per_epoch * self.accumulate * self.world_size
        for m in range(n_micro):
            if m % self.world_size == self.rank:
                yield order[m * b : (m + 1) * b]
