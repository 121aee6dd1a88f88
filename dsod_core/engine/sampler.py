"""Batch plan shared by single- and multi-process training.

Every epoch draws one permutation from ``(seed, epoch)`` and cuts it into micro-batches of
``batch_size``. An optimiser step consumes ``world_size * accumulate`` consecutive
micro-batches; process ``r`` takes those whose position within the step is ``r`` modulo the
world size. Hence one process with ``accumulate = 2`` sees exactly the same micro-batches (and
BatchNorm batch statistics) as two processes with ``accumulate = 1``: the global batch and the
BN grouping do not depend on how many processes share the work. (A DistributedSampler would
interleave samples across ranks and change the BN groups.)

Background-only samples (no box: negatives) can be thinned per epoch: with
``negative_fraction < 1`` each epoch keeps every sample with boxes and a fresh draw of
``round(negative_fraction * negatives)`` of the others, both the draw and the order from
``(seed, epoch)``, so every process plans the same epoch. At 1.0 (the default) the plan is the
one above, index for index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import h5py
import numpy as np
import torch
from torch.utils.data import Sampler


def background_positions(store: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Positions ``k`` (into ``indices``, the store indices a dataset serves) of the samples
    with no box, from the shapes of the store's ``boxes`` datasets: metadata only, no box
    and no pixel is read."""
    with h5py.File(store, "r") as f:
        samples = f["samples"]
        empty = [k for k, i in enumerate(indices) if samples[f"{int(i):07d}/boxes"].shape[0] == 0]
    return np.asarray(empty, dtype=np.int64)


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
        negatives: Sequence[int] | None = None,
        negative_fraction: float = 1.0,
    ):
        """``negatives``: the positions (in ``range(num_samples)``) of the background-only
        samples; ``negative_fraction``: the share of them drawn into each epoch."""
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.accumulate = accumulate
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.negatives = sorted({int(i) for i in (() if negatives is None else negatives)})
        if not 0.0 <= negative_fraction <= 1.0:
            raise ValueError(f"negative_fraction must lie in [0, 1], got {negative_fraction!r}")
        self.negative_fraction = float(negative_fraction)
        self.thinned = bool(self.negatives) and self.negative_fraction < 1.0
        self.negatives_per_epoch = len(self.negatives)
        self.positives = list(range(num_samples))
        if self.thinned:
            drop = set(self.negatives)
            self.positives = [i for i in range(num_samples) if i not in drop]
            self.negatives_per_epoch = math.floor(self.negative_fraction * len(drop) + 0.5)

    @property
    def epoch_size(self) -> int:
        """Samples in one epoch's plan (before cutting it into whole steps)."""
        if not self.thinned:
            return self.num_samples
        return len(self.positives) + self.negatives_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def steps_per_epoch(self) -> int:
        per_step = self.batch_size * self.accumulate * self.world_size
        return self.epoch_size // per_step

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accumulate

    def epoch_order(self) -> list[int]:
        """This epoch's samples in the order they are served."""
        if not self.thinned:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                return torch.randperm(self.num_samples, generator=g).tolist()
            return list(range(self.num_samples))
        k = self.negatives_per_epoch
        if not self.shuffle:  # the first k negatives, in index order
            return sorted(self.positives + self.negatives[:k])
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        drawn = torch.randperm(len(self.negatives), generator=g)[:k].tolist()
        pool = sorted(self.positives + [self.negatives[j] for j in drawn])
        return [pool[j] for j in torch.randperm(len(pool), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        order = self.epoch_order()
        b = self.batch_size
        n_micro = self.steps_per_epoch * self.accumulate * self.world_size
        for m in range(n_micro):
            if m % self.world_size == self.rank:
                yield order[m * b : (m + 1) * b]
