"""The background counts of a multispectral discover: rasters or scenes without an object,
chips with objects, chips without one kept as negatives (``empty_chip_rate``) or left out, and
objects ``class_map`` dropped: ``multispectral_<key>`` counts of the prepare report (counts,
not warnings: background is ordinary data); only ``class_map`` drops are also warned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

KEYS = (
    "units", "background_units", "chips_with_objects", "empty_chips_kept", "empty_chips_dropped",
    "class_map_dropped",
)  # fmt: skip


def new_counts() -> dict[str, int]:
    """Every count of :data:`KEYS` at 0."""
    return dict.fromkeys(KEYS, 0)


def report(bg: dict[str, int], log: Any, root: Path, empty_chip_rate: float) -> None:
    """The background counts (rasters or scenes without a label, chips without a box kept by
    ``empty_chip_rate`` and left out) into ``log.counts``; a warning for ``class_map`` drops.
    ``empty_chip_rate`` is the params' (the report's ``adapter_params`` say it)."""
    log.counts.update({f"multispectral_{k}": v for k, v in bg.items()})
    if bg["class_map_dropped"]:
        log.warn(
            f"class_map dropped {bg['class_map_dropped']} object(s) of the classes it maps "
            "to '' or null",
            root,
        )
