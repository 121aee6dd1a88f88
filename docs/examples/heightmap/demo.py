"""Synthetic elevation tiles written in the native format: float32 .npy + YOLO txt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.io import write_atomic, write_with

CLASSES = ("building", "tree")


def write_demo(out_dir: Path, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    (out_dir / "tiles").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(exist_ok=True)
    write_atomic(out_dir / "classes.txt", "\n".join(CLASSES) + "\n")
    yy, xx = np.mgrid[0:image_size, 0:image_size]
    for i in range(num_images):
        ground = rng.uniform(100, 400) + rng.uniform(-0.05, 0.05) * (xx + yy)  # a slope
        metres = ground + rng.normal(0.0, 0.1, ground.shape)
        lines = []
        for _ in range(int(rng.integers(1, 3))):
            k = int(rng.integers(len(CLASSES)))
            w = int(rng.integers(image_size // 6, image_size // 3))
            x, y = (int(v) for v in rng.integers(0, image_size - w, 2))
            if CLASSES[k] == "building":  # a flat roof 6-12 m up
                metres[y : y + w, x : x + w] += rng.uniform(6, 12)
            else:  # a cone-shaped crown
                r = np.hypot(xx - (x + w / 2), yy - (y + w / 2)) / (w / 2)
                metres += np.clip(1 - r, 0, None) * rng.uniform(8, 15)
            cx, cy, s = (x + w / 2) / image_size, (y + w / 2) / image_size, w / image_size
            lines.append(f"{k} {cx:.6f} {cy:.6f} {s:.6f} {s:.6f}")
        tile = metres.astype(np.float32)
        write_with(out_dir / "tiles" / f"t{i:04d}.npy", lambda tmp, t=tile: _save(tmp, t))
        write_atomic(out_dir / "labels" / f"t{i:04d}.txt", "\n".join(lines) + "\n")
    return {}


def _save(path: Path, tile: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save adds no ".npy" to the temp name
        np.save(fh, tile)
