"""Background-only samples (no box) as negatives: the sampler's ``negative_fraction``.

The default (1.0) must plan every epoch exactly as the sampler did before the parameter
existed (the shipped pipeline's results stay bit-identical); a fraction below 1 keeps every
sample with boxes and a fresh, seeded draw of the negatives each epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dsod_core.data.store import StoreReader, StoreWriter
from dsod_core.engine.config import TrainConfig
from dsod_core.engine.sampler import StepBatchSampler, background_positions
from dsod_core.errors import ConfigError
from tests.conftest import make_sample


def previous_plan(
    n: int, batch: int, accumulate: int, world: int, rank: int, seed: int, epoch: int
):
    """The sampler's batches as the code before ``negative_fraction`` computed them
    (a verbatim copy of its ``__iter__``)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    n_micro = (n // (batch * accumulate * world)) * accumulate * world
    return [order[m * batch : (m + 1) * batch] for m in range(n_micro) if m % world == rank]


def _plan(sampler: StepBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


NEGATIVES = list(range(1, 40, 2))  # 20 of the 40 samples have no box


@pytest.mark.parametrize("negatives", [None, NEGATIVES])
def test_default_plans_the_same_batches_as_before(negatives) -> None:
    for seed, epoch, world, rank in ((0, 0, 1, 0), (3, 5, 2, 1), (7, 2, 1, 0)):
        sampler = StepBatchSampler(
            40, 4, accumulate=2, world_size=world, rank=rank, seed=seed, negatives=negatives
        )
        assert _plan(sampler, epoch) == previous_plan(40, 4, 2, world, rank, seed, epoch)
        assert sampler.steps_per_epoch == 40 // (4 * 2 * world)


def test_quarter_of_the_negatives_per_epoch_deterministic() -> None:
    def make(rank: int = 0, world: int = 1) -> StepBatchSampler:
        return StepBatchSampler(
            40, 5, world_size=world, rank=rank, seed=11, negatives=NEGATIVES, negative_fraction=0.25
        )

    sampler = make()
    assert sampler.epoch_size == 20 + 5  # every positive, round(0.25 * 20) negatives
    assert sampler.steps_per_epoch == 5 and len(sampler) == 5
    drawn = []
    for epoch in range(4):
        served = [i for b in _plan(sampler, epoch) for i in b]
        assert len(served) == len(set(served)) == 25
        assert set(served) - set(NEGATIVES) == set(range(0, 40, 2))  # all positives, once
        negs = sorted(set(served) & set(NEGATIVES))
        assert len(negs) == 5
        drawn.append(negs)
        assert _plan(make(), epoch) == _plan(sampler, epoch)  # same seed, same plan
    assert len({tuple(d) for d in drawn}) > 1  # a new draw per epoch
    # Two processes split the very same epoch between them.
    r0, r1 = make(0, 2), make(1, 2)
    assert r0.epoch_size == 25 and r0.steps_per_epoch == 2
    both = _plan(r0, 1) + _plan(r1, 1)
    assert sorted(i for b in both for i in b) == sorted(i for b in _plan(make(), 1)[:4] for i in b)
    other_seed = StepBatchSampler(40, 5, seed=12, negatives=NEGATIVES, negative_fraction=0.25)
    assert _plan(other_seed, 0) != _plan(make(), 0)


def test_zero_keeps_no_negatives_and_bad_fraction_refused() -> None:
    sampler = StepBatchSampler(40, 4, seed=0, negatives=NEGATIVES, negative_fraction=0.0)
    served = {i for b in _plan(sampler, 0) for i in b}
    assert served == set(range(0, 40, 2))
    with pytest.raises(ValueError, match="negative_fraction"):
        StepBatchSampler(40, 4, negatives=NEGATIVES, negative_fraction=1.5)


def _store(path: Path, boxes_per_sample: list[int]) -> Path:
    with StoreWriter(
        path, modality="test", class_names=["a", "b", "c"], channel_names=["x"]
    ) as writer:
        for i, n in enumerate(boxes_per_sample):
            writer.add(make_sample(i, 1, n_boxes=n, split="val" if i == 2 else "train"))
    return path


def test_background_positions_from_the_store(tmp_path: Path) -> None:
    boxes = [2, 0, 1, 0, 0, 3, 1, 0]  # sample 2 is val (and has a box)
    store = _store(tmp_path / "s.h5", boxes)
    reader = StoreReader(store)
    train = reader.split_indices("train")
    assert list(train) == [0, 1, 3, 4, 5, 6, 7]
    positions = background_positions(store, train)
    assert list(positions) == [1, 2, 3, 6]  # store samples 1, 3, 4, 7
    assert all(len(reader.read_targets(int(train[k]))["boxes"]) == 0 for k in positions)
    assert background_positions(store, train[[0, 4]]).size == 0


def test_training_data_thins_negatives(tmp_path: Path) -> None:
    from dsod_core.engine.trainer import setup_data

    store = _store(tmp_path / "s.h5", [1, 0, 1, 0, 0, 1, 0, 0, 1])  # 8 train: 3 with boxes
    reader = StoreReader(store)
    full = TrainConfig.from_dict({"store": str(store), "batch_size": 2})
    _, sampler = setup_data(full, reader)
    assert sampler.epoch_size == 8 and not sampler.thinned
    half = TrainConfig.from_dict({"store": str(store), "batch_size": 2, "negative_fraction": 0.4})
    _, sampler = setup_data(half, reader)
    assert sampler.thinned and sampler.epoch_size == 3 + 2  # 0.4 of 5 negatives
    none = TrainConfig.from_dict({"store": str(store), "batch_size": 4, "negative_fraction": 0})
    with pytest.raises(ConfigError, match="3 training samples per epoch"):
        setup_data(none, reader)


def test_negative_fraction_is_a_checked_described_param() -> None:
    from pipelines.check import describe

    assert TrainConfig.from_dict({"negative_fraction": "5e-1"}).negative_fraction == 0.5
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"negative_fraction": 2})
    assert "negative_fraction" in str(err.value) and "\n" not in str(err.value)
    rows = [line for line in describe().splitlines() if line.startswith("| `negative_fraction`")]
    assert len(rows) == 1 and "`1.0`" in rows[0], rows
    assert np.isclose(TrainConfig().negative_fraction, 1.0)
