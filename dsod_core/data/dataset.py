"""A torch Dataset over one split of an HDF5 store, with box-aware augmentation.

Augmentation randomness is derived from ``(seed, epoch, sample index)`` rather than from a
global RNG, so an epoch's data are identical however many workers load them and whether or
not training was interrupted and resumed (:meth:`DetectionDataset.set_epoch`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from dsod_core.loss import CROWD_LABEL
from dsod_core.data.store import StoreReader
from dsod_core.data.subsets import nested_unit_subsets

Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class DetectionDataset(Dataset):
    """Items of one split, normalised with the store's train statistics.

    Each item is a dict: ``image`` float32 ``[C, H, W]`` (normalised, then transformed),
    ``boxes`` float32 ``[N, 4]`` xyxy pixels of the transformed image, ``labels`` int64
    ``[N]``, ``difficult`` bool ``[N]``, ``index`` (the store index) and ``orig_size``
    ``(H, W)`` of the stored image (to map predictions back).

    Crowd regions (the store's ``crowd`` flag) keep their box but get the label
    :data:`~dsod_core.loss.CROWD_LABEL` (-1) *before* the transforms run, so the
    transforms move, crop and drop them with the other boxes and the flag cannot drift out of
    step; :class:`~dsod_core.loss.MultiBoxLoss` never matches a label -1 box and ignores the
    default boxes covering it. ``crowd_label=None`` keeps the stored labels instead. Metrics
    never read these items: evaluation scores against ``StoreReader.read_targets``, which
    returns the real labels and the ``crowd`` flag.
    """

    def __init__(
        self,
        store: str | os.PathLike | StoreReader,
        split: str,
        transform: Transform | None = None,
        seed: int = 0,
        crowd_label: int | None = CROWD_LABEL,
        normalisation: tuple[np.ndarray, np.ndarray] | None = None,
        fraction: float = 1.0,
    ):
        self.reader = store if isinstance(store, StoreReader) else StoreReader(store)
        self.split = split
        self.indices = self.reader.split_indices(split)
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
        if fraction < 1.0:  # whole source units, nested across fractions for one seed
            units = self.reader.unit_keys(self.indices)
            keep = nested_unit_subsets(units, [fraction], seed=int(seed))[float(fraction)]
            self.indices = self.indices[keep]
        self.transform = transform
        self.seed = int(seed)
        self.crowd_label = None if crowd_label is None else int(crowd_label)
        self.epoch = 0
        # A trained model brings the statistics it was trained with (its model.pt): scoring it
        # on another store, e.g. a test-only one, must normalise as in training.
        mean, std = normalisation if normalisation is not None else (self.reader.mean, self.reader.std)
        self._mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self._std = np.asarray(std, dtype=np.float32)[:, None, None]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = int(self.indices[i])
        image = self.reader.read_image(index)
        t = self.reader.read_targets(index)
        labels = t["labels"].astype(np.int64)
        if self.crowd_label is not None and t["crowd"].any():
            labels = np.where(t["crowd"], self.crowd_label, labels)
        item = {
            "image": ((image - self._mean) / self._std).astype(np.float32),
            "boxes": t["boxes"].astype(np.float32),
            "labels": labels,
            "difficult": t["difficult"],
        }
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            item = self.transform(item, rng)
        item["index"] = index
        item["orig_size"] = tuple(image.shape[1:])
        return item
