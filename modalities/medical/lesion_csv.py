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
from modalities.medical.dicom import split_spec

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


def _absent(adapter: MedicalAdapter, rel: str | None) -> bool:
    """Whether the series' volume is not there at all (no ``series_map`` entry, or no file
    or folder at its path): a series of another LUNA16 subset."""
    if rel is None:
        return True
    folder, _ = split_spec(rel)
    return not (adapter.root / folder).exists()


def _missing_series(
    adapter: MedicalAdapter, path: Path, missing: list[str], rows: dict[str, list]
) -> None:
    """Report the series whose volume is absent: one warning with the count and the first
    uids (``missing_series: skip``), or one error (``error``)."""
    p = adapter.params
    n_rows = sum(len(rows.get(uid, [])) for uid in missing)
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    what = (
        f"{len(missing)} series ({n_rows} lesion row(s)) have no volume under the dataset root "
        f"(series_map {p.series_map!r}" + (")" if isinstance(p.series_map, str) else " entries)")
    )
    adapter._count("missing_series", len(missing))
    if p.missing_series == "error":
        raise DataError(f"{what}: {shown} (missing_series: error)", path=path)
    adapter.log.warn(
        f"{what}, left out: {shown} (a subset of the data; set missing_series: error to "
        "refuse this)",
        path,
    )


def _patients(adapter: MedicalAdapter) -> tuple[Path | None, dict[str, str] | None]:
    """The ``patients_csv`` path and its ``{series uid: patient}`` (None, None: not set)."""
    from modalities.medical.units import DEFAULT_PATIENT_COLUMN, read_patients_csv

    p = adapter.params
    if p.patients_csv is None:
        return None, None
    path = adapter.resolve_inside_root(p.patients_csv, adapter.root)
    return path, read_patients_csv(path, p.patient_key or DEFAULT_PATIENT_COLUMN)


def discover(adapter: MedicalAdapter) -> list[SampleRef]:
    """One ref per series (those with rows, and every series of a ``series_map`` mapping):
    series whose volume is absent (another LUNA16 subset) are counted and reported once
    (``missing_series``); a series with an unusable row is refused; the volume's header is
    checked (no voxels); its group (patient: ``patients_csv``, DICOM headers or ``group_by``,
    :mod:`modalities.medical.units`); the split is the stable hash of the group (of the series
    uid when it has none). Each series is one unit of ``adapter.log.guard``
    (``unit="volume"``)."""
    from modalities.medical import units
    from modalities.medical.adapter import _naming

    p = adapter.params
    assert p.annotations_csv is not None
    path = adapter.resolve_inside_root(p.annotations_csv, adapter.root)
    rows, bad = read_lesion_csv(path, p.candidate_diameter_mm)
    patients_path, patients = _patients(adapter)
    series = list(iter_series(rows, p.series_map))
    missing = [uid for uid, rel in series if _absent(adapter, rel)]
    if missing:
        _missing_series(adapter, path, missing, rows)
    refs = []
    for uid, rel in series:
        if uid in missing:
            continue
        with (
            adapter.log.guard(adapter.root / rel if rel else path, unit="volume"),
            _naming(volume_id(rel) if rel else uid),
        ):
            if uid in bad:
                raise DataError(f"series {uid!r}: {bad[uid]}", path=path)
            assert rel is not None  # absent series are left out above
            patient = units.series_patient(patients, uid, patients_path)
            image, fmt = adapter._locate_volume(
                rel, path, f"image file {rel!r} of series {uid!r} not found"
            )
            group = units.volume_group(adapter.root, p, image, fmt, patient)
            boxes = rows.get(uid, [])
            refs.append(
                SampleRef(
                    volume_id(rel),
                    adapter._split(group[0] or uid),
                    {"image": image, "annotation": path},
                    {
                        "image": rel,
                        "boxes": boxes,
                        "labels": [0] * len(boxes),
                        "seriesuid": uid,
                        **fmt,
                        **units.group_meta(group),
                    },
                )
            )
    return refs
