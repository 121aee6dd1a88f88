"""Params of the heightmap adapter: one frozen dataclass, validated by ``AdapterParams.parse``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import AdapterParams, param


@dataclass(frozen=True)
class HeightmapParams(AdapterParams):
    tile_dir: str = param("tiles", "folder of float32 .npy elevation tiles (metres) under root")
    label_dir: str = param("labels", "folder of YOLO .txt files, one per tile (none: no objects)")
    names_file: str = param("classes.txt", "class names of the YOLO indices, one a line")
    relative: bool = param(True, "subtract each tile's median elevation (heights above ground)")
    class_names: list[str] | None = param(None, "names of labels 1..K; null = names_file")
    val_fraction: float = param(0.15, "fraction of tiles in val (stable hash)", min=0, max=1)
    test_fraction: float = param(0.15, "fraction of tiles in test (stable hash)", min=0, max=1)
    seed: int = param(0, "seed of the split hash")
    max_pixels: float = param(50e6, "refuse a tile whose header declares more pixels", min=1)
    unknown_class: Literal["error", "skip"] = param("error", "a YOLO index past the names")

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            self.fail("test_fraction", "val_fraction + test_fraction must stay below 1")
