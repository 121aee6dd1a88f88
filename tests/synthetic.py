"""A tiny synthetic detection store for engine tests: squares and discs on noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsod_core.data.sample import Sample
from dsod_core.data.store import StoreWriter


def write_synthetic_store(
    path: str | Path,
    n: int = 96,
    size: int = 48,
    channels: int = 2,
    seed: int = 0,
    splits=(0.7, 0.15),
    object_scale=(0.3, 0.5),
) -> Path:
    """Classes differ by shape only (same intensity): a detector must learn shape."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    with StoreWriter(
        path,
        modality="synthetic",
        class_names=["square", "disc"],
        channel_names=[f"c{i}" for i in range(channels)],
    ) as w:
        for i in range(n):
            img = rng.normal(0, 0.25, (channels, size, size)).astype(np.float32)
            boxes, labels = [], []
            for _ in range(int(rng.integers(1, 3))):
                s = rng.uniform(*object_scale) * size
                x, y = rng.uniform(0, size - s, 2)
                lab = int(rng.integers(1, 3))
                if lab == 1:
                    m = (xx >= x) & (xx < x + s) & (yy >= y) & (yy < y + s)
                else:
                    m = (xx - x - s / 2) ** 2 + (yy - y - s / 2) ** 2 < (s / 2) ** 2
                img[:, m] += 1.0
                boxes.append([x, y, x + s, y + s])
                labels.append(lab)
            u = i / n
            split = "train" if u < splits[0] else ("val" if u < splits[0] + splits[1] else "test")
            w.add(Sample(img, np.array(boxes), np.array(labels), f"s{i}", "synthetic", split))
    return Path(path)
