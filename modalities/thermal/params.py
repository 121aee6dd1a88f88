"""The params of the ``thermal`` adapter, validated by :meth:`AdapterParams.parse`.

The labels, folders, splits and class options are the shared labelled-image layer's
(:class:`modalities.formats.collection.CollectionParams`, the same keys for every 2D
modality); the fields below are the thermal ones: how a frame's values become the channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import param
from modalities.formats.collection import CollectionParams


@dataclass(frozen=True)
class ThermalParams(CollectionParams):
    """Params of :class:`modalities.thermal.adapter.ThermalAdapter`."""

    intensity: Literal["agc", "scale", "temperature"] = param(
        "agc",
        "how 16-bit radiometric frames become the channel: agc = the frame's agc_percentiles "
        "window to [0, 1] (as a camera's 8-bit AGC does); scale = counts / counts_max; "
        "temperature = counts x radiometric_gain + radiometric_offset kelvin, in "
        "temperature_unit (8-bit frames are then refused: they hold no temperatures)",
    )
    agc_percentiles: tuple[float, float] = param(
        (1.0, 99.0),
        "intensity agc: the percentiles of each 16-bit frame mapped to 0 and 1 (clipped outside)",
        min=0,
        max=100,
    )
    counts_max: float = param(
        65535.0,
        "intensity scale: the count that maps to 1 (65535 for 16-bit, 16383 for 14-bit data)",
        min=0,
        min_exclusive=True,
    )
    radiometric_gain: float = param(
        0.01,
        "intensity temperature: kelvin per count (FLIR TLinear: 0.01 high resolution, 0.1 low)",
        min=0,
        min_exclusive=True,
    )
    radiometric_offset: float = param(
        0.0, "intensity temperature: kelvin at count 0 (kelvin = counts x gain + offset)"
    )
    temperature_unit: Literal["kelvin", "celsius"] = param(
        "kelvin", "intensity temperature: the channel's unit (temperature_k / temperature_c)"
    )
    grey_tolerance: int = param(
        48,
        "an 8-bit frame stored as RGB or palette is read as grey (mean of its channels) when "
        "the median per-pixel channel spread is at most this many levels; more is a "
        "false-colour image, refused",
        min=0,
        max=255,
    )
    max_pixels: float = param(
        50e6,
        "refuse a frame whose header declares more pixels, checked before decoding",
        min=0,
        min_exclusive=True,
    )

    def check(self) -> None:
        self.check_collection()
        low, high = self.agc_percentiles
        if low >= high:
            self.fail(
                "agc_percentiles", f"low must be below high, got {list(self.agc_percentiles)}"
            )
