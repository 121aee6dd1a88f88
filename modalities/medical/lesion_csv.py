"""The medical modality's ``csv`` format: a LUNA16-style lesion CSV (``annotations_csv``), one
row per lesion, volumes named through ``series_map``.

The rows are parsed by :func:`modalities.medical.datalist.read_lesion_csv` (with the
datalist, the other lesion annotation of this modality); this module lists the units
(:func:`discover`) and tells such a CSV by its header line (:func:`claims`).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats import has_suffix, head
from modalities.medical.datalist import (
    CANDIDATE_COLUMNS,
    CSV_COLUMNS,
    iter_series,
    read_lesion_csv,
    volume_id,
)

if TYPE_CHECKING:
    from modalities.medical.adapter import MedicalAdapter


def claims(path: Path) -> bool:
    """A ``.csv`` whose header names the LUNA16 columns (``annotations.csv``: seriesuid,
    coordX, coordY, coordZ, diameter_mm; ``candidates.csv``: class instead of the
    diameter). Never raises."""
    if not has_suffix(path, (".csv",)):
        return False
    first = head(path).decode("utf-8-sig", "replace").splitlines()[:1]
    if not first:
        return False
    try:
        fields = {f.strip() for f in next(csv.reader(first))}
    except csv.Error:
        return False
    return set(CSV_COLUMNS) <= fields or set(CANDIDATE_COLUMNS) <= fields


def discover(adapter: MedicalAdapter) -> list[SampleRef]:
    """One ref per series (those with rows, and every series of a ``series_map`` mapping):
    a series with an unusable row, or without a volume, is refused; the volume's header is
    checked (no voxels); the split is the stable hash of the series uid. Each series is one
    unit of ``adapter.log.guard`` (``unit="volume"``)."""
    from modalities.medical.adapter import _naming

    p = adapter.params
    assert p.annotations_csv is not None
    path = adapter.resolve_inside_root(p.annotations_csv, adapter.root)
    rows, bad = read_lesion_csv(path, p.candidate_diameter_mm)
    refs = []
    for uid, rel in iter_series(rows, p.series_map):
        with (
            adapter.log.guard(adapter.root / rel if rel else path, unit="volume"),
            _naming(volume_id(rel) if rel else uid),
        ):
            if uid in bad:
                raise DataError(f"series {uid!r}: {bad[uid]}", path=path)
            if rel is None:
                raise DataError(f"series {uid!r} has no entry in series_map", path=path)
            image, fmt = adapter._locate_volume(
                rel, path, f"image file {rel!r} of series {uid!r} not found"
            )
            boxes = rows.get(uid, [])
            refs.append(
                SampleRef(
                    volume_id(rel),
                    adapter._split(uid),
                    {"image": image, "annotation": path},
                    {
                        "image": rel,
                        "boxes": boxes,
                        "labels": [0] * len(boxes),
                        "seriesuid": uid,
                        **fmt,
                    },
                )
            )
    return refs
