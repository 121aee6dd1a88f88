"""Trained demo models for the ``dsod detect`` tests: a modality's demo written in its native
format, prepared into a store and trained with the real engine (a tiny variant, few epochs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoModel:
    root: Path  # the demo data folder
    entry: dict[str, Any]  # its params.yaml dataset entry
    store: Path  # the prepared store
    run: Path  # models/<run> (model.pt, config.json)

    @property
    def model(self) -> Path:
        return self.run / "model.pt"


def train_demo_model(
    modality: str,
    tmp: Path,
    *,
    num_images: int = 40,
    image_size: int = 48,
    epochs: int = 2,
    adapter: dict[str, Any] | None = None,
    seed: int = 0,
    **train: Any,
) -> DemoModel:
    """Demo data of ``modality`` under ``tmp/data``, its store ``tmp/<modality>.h5`` and a
    dsod_tiny trained on it for ``epochs`` under ``tmp/models/<modality>-scratch``.
    ``adapter`` params are merged over the demo's own; ``train`` are TrainConfig fields."""
    from dsod_core.engine import TrainConfig
    from dsod_core.engine import train as run_training
    from modalities import get_adapter
    from pipelines.prepare import prepare

    root = tmp / "data" / modality
    if modality == "blobs":  # easy multispectral scenes (write_blob_scenes)
        modality = "multispectral"
        demo = write_blob_scenes(root, seed=seed)
    else:
        demo = get_adapter(modality).write_demo(
            root, num_images=num_images, image_size=image_size, seed=seed
        )
    entry = {
        "modality": modality,
        "root": str(root),
        "code": str(ROOT / "modalities" / modality),
        "adapter": {**demo, **(adapter or {})},
    }
    store = tmp / f"{modality}.h5"
    prepare(modality, entry, store, tmp / f"{modality}.report.json")
    run = tmp / "models" / f"{modality}-scratch"
    config = {
        "variant": "dsod_tiny",
        "input_size": image_size,
        "epochs": epochs,
        "batch_size": 8,
        "progress": False,
        "dvclive": False,
        "eval_every": 0,
        "seed": seed,
        **train,
    }
    run_training(TrainConfig(store=str(store), out_dir=str(run), **config))
    (run / "config.json").write_text(json.dumps({"dataset": modality, "init": "scratch"}))
    return DemoModel(root, entry, store, run)


def write_blob_scenes(
    root: Path, *, scenes: int = 4, size: int = 192, seed: int = 0, bands: int = 4
) -> dict[str, Any]:
    """Easy multispectral scenes for detection tests: bright squares (8-20 px, one class
    ``blob``) on a textured background, ``scene_XX.tif`` (uint16, UTM 33N, 10 m) with
    ``scene_XX.geojson`` labels in the raster's CRS. Returns the adapter params reading them."""
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from scipy.ndimage import zoom

    from modalities.multispectral.geojson import box_polygon, write_feature_collection

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_epsg(32633)
    for s in range(scenes):
        t = from_origin(500_000 + 5_000 * s, 4_000_000, 10, 10)
        coarse = rng.uniform(200, 500, (bands, size // 16 + 1, size // 16 + 1))
        data = zoom(coarse, (1, 16, 16), order=1)[:, :size, :size]
        data = data + rng.normal(0, 20, data.shape)
        feats, taken = [], np.zeros((size, size), dtype=bool)
        for _ in range(size * size // 900):
            w, h = (int(v) for v in rng.integers(8, 21, 2))
            x0, y0 = (int(v) for v in rng.integers(0, size - 21, 2))
            if taken[max(y0 - 3, 0) : y0 + h + 3, max(x0 - 3, 0) : x0 + w + 3].any():
                continue
            taken[y0 : y0 + h, x0 : x0 + w] = True
            data[:, y0 : y0 + h, x0 : x0 + w] = rng.uniform(1400, 1800, (bands, 1, 1))
            ring = box_polygon([x0, y0, x0 + w, y0 + h], t)
            feats.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {"class": "blob"},
                }
            )
        path = root / f"scene_{s:02d}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
            crs=crs, transform=t, tiled=True, blockxsize=64, blockysize=64,
        ) as ds:  # fmt: skip
            ds.write(np.clip(data, 0, 65535).astype(np.uint16))
        write_feature_collection(root / f"scene_{s:02d}.geojson", feats, crs, path.stem)
    return {
        "class_names": ["blob"],
        "chip_size": 48,
        "overlap": 16,
        "split_by": "chip",
        "empty_chip_rate": 0.3,
    }
