"""Params of the thermal adapter: one frozen dataclass, validated by ``AdapterParams.parse``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import AdapterParams, param


@dataclass(frozen=True)
class ThermalParams(AdapterParams):
    image_dir: str = param("thermal", "folder of 16-bit PNG frames under root")
    annotation_dir: str = param("Annotations", "folder of VOC XML files, one per frame")
    kelvin_per_count: float = param(0.01, "radiometric gain: kelvin per raw count", min=0)
    kelvin_offset: float = param(0.0, "radiometric offset in kelvin")
    class_names: list[str] | None = param(None, "names of labels 1..K; null = from the data")
    unknown_class: Literal["error", "skip"] = param("error", "an object of another class")
    val_fraction: float = param(0.15, "fraction of frames in val (stable hash)", min=0, max=1)
    test_fraction: float = param(0.15, "fraction of frames in test (stable hash)", min=0, max=1)
    seed: int = param(0, "seed of the split hash")
    max_pixels: float = param(50e6, "refuse a frame whose header declares more pixels", min=1)

    def check(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            self.fail("test_fraction", "val_fraction + test_fraction must stay below 1")
