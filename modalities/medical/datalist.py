"""Lesion annotations of the ``medical`` adapter: MONAI detection datalists and LUNA16 CSVs.

Both give world boxes ``cccwhd`` (centre, size; mm). A datalist JSON holds ``training`` /
``validation`` / ``test`` lists of ``{"image", "box", "label"}`` entries (0-based labels); a
LUNA16-style CSV holds one sphere per row (``seriesuid, coordX, coordY, coordZ,
diameter_mm``). Parsing is pure: whole-file problems raise :class:`DataError`, per-entry
problems are raised by :func:`parse_entry` or returned per series by :func:`read_lesion_csv`,
so that the adapter can route them through its prepare log one volume at a time.

This module is also the medical modality's ``datalist`` format (:mod:`.formats`):
:func:`discover` lists the volumes of the ``datalist`` param and :func:`claims` tells a
datalist JSON by its keys. The CSV format is :mod:`.lesion_csv` (its parser stays here).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats import has_suffix, json_top_keys

if TYPE_CHECKING:
    from modalities.medical.adapter import MedicalAdapter

#: Datalist keys <-> splits (MONAI / LUNA16 tutorial naming).
DATALIST_KEYS = {"training": "train", "validation": "val", "test": "test"}
SPLIT_KEYS = {v: k for k, v in DATALIST_KEYS.items()}

CSV_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
CANDIDATE_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "class")

#: Suffixes dropped from a volume path to make its id (a DICOM folder has none).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd", ".nhdr")


def volume_id(rel: str) -> str:
    """A stable id of a volume from its path as written in the annotations."""
    name = rel.replace("\\", "/").rstrip("/")
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    # "folder#<SeriesInstanceUID>" (one series of a DICOM folder): "folder__<uid>"
    return name.replace("#", "__").replace("/", "__")


@dataclass
class Entry:
    """One volume's annotations: image path as written, boxes cccwhd mm, 0-based labels."""

    where: str
    image: str
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


def read_datalist(path: Path) -> tuple[list[tuple[str, str, Any]], bool]:
    """The raw entries ``[(where, split, entry)]`` of a datalist and whether it names splits
    (``validation`` or ``test`` present). Raises :class:`DataError` for an unusable file."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read datalist JSON: {exc}", path=path) from exc
    if not isinstance(doc, dict) or not any(k in doc for k in DATALIST_KEYS):
        raise DataError(f"datalist needs one of the keys {sorted(DATALIST_KEYS)}", path=path)
    out = []
    for key, split in DATALIST_KEYS.items():
        entries = doc.get(key, [])
        if not isinstance(entries, list):
            raise DataError(f"datalist key {key!r} must hold a list", path=path)
        out.extend((f"{key}[{n}]", split, entry) for n, entry in enumerate(entries))
    return out, "validation" in doc or "test" in doc


def parse_entry(entry: Any, where: str, path: Path) -> Entry:
    """Check one datalist entry; raises :class:`DataError` naming the datalist and entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise DataError(f"{where} needs an 'image' path", path=path)
    try:
        boxes = np.asarray(entry.get("box", []), dtype=np.float64).reshape(-1, 6)
        labels = np.asarray(entry.get("label", [0] * len(boxes)), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: 'box' must be [[cx, cy, cz, w, h, d], ...] and 'label' a list of ints "
            f"({exc})",
            path=path,
        ) from exc
    labels = labels.reshape(-1)
    if len(labels) != len(boxes):
        raise DataError(f"{where}: {len(boxes)} boxes but {len(labels)} labels", path=path)
    if not np.isfinite(boxes).all() or (boxes[:, 3:] <= 0).any():
        raise DataError(f"{where}: boxes need finite values and positive sizes", path=path)
    if not np.isfinite(labels).all() or (labels < 0).any() or (labels != np.round(labels)).any():
        raise DataError(f"{where}: labels must be ints >= 0", path=path)
    return Entry(where, entry["image"], boxes.tolist(), labels.astype(int).tolist())


def read_lesion_csv(
    path: Path, candidate_diameter: float | None = None
) -> tuple[dict[str, list[list[float]]], dict[str, str]]:
    """LUNA16-style rows -> ``({uid: [cccwhd boxes]}, {uid: reason})``: a row that cannot be
    used marks its whole series bad (a volume missing one of its lesions would teach the
    detector that the lesion is background). Raises :class:`DataError` for an unusable file
    (unreadable, columns missing, a row without a series uid).

    ``annotations.csv`` (``diameter_mm`` column): one sphere per row. ``candidates.csv``
    (``class`` column, no ``diameter_mm``): class-1 rows are spheres of
    ``candidate_diameter`` mm, class-0 rows (not nodules) only list their series, which is
    then read as lesion-free; without ``candidate_diameter`` such a file is refused."""
    rows: dict[str, list[list[float]]] = {}
    bad: dict[str, str] = {}
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            candidates = "diameter_mm" not in fields and "class" in fields
            need = set(CANDIDATE_COLUMNS if candidates else CSV_COLUMNS)
            missing = need - fields
            if missing:
                raise DataError(
                    f"CSV lacks columns {sorted(missing)} (annotations.csv needs "
                    f"{list(CSV_COLUMNS)}, candidates.csv {list(CANDIDATE_COLUMNS)})",
                    path=path,
                )
            if candidates and candidate_diameter is None:
                raise DataError(
                    "a candidates CSV (class column, no diameter_mm) gives no lesion size: set "
                    "the adapter param 'candidate_diameter_mm' to read its class-1 rows as "
                    "spheres of that diameter, or use annotations.csv",
                    path=path,
                )
            for line, row in enumerate(reader, start=2):
                uid = row.get("seriesuid")
                if not uid:
                    raise DataError(f"line {line}: empty seriesuid", path=path)
                rows.setdefault(uid, [])
                try:
                    x, y, z = (float(row[c]) for c in CSV_COLUMNS[1:4])  # type: ignore[arg-type]
                    if candidates:
                        cls = float(row["class"])  # type: ignore[arg-type]
                        d = float(candidate_diameter)  # type: ignore[arg-type]
                    else:
                        cls, d = 1.0, float(row["diameter_mm"])  # type: ignore[arg-type]
                except (TypeError, ValueError) as exc:
                    bad.setdefault(uid, f"line {line}: bad number ({exc})")
                    continue
                if cls not in (0.0, 1.0):
                    bad.setdefault(uid, f"line {line}: class must be 0 or 1, got {row['class']!r}")
                    continue
                if not all(map(math.isfinite, (x, y, z, d))) or d <= 0:
                    bad.setdefault(uid, f"line {line}: need finite coords and diameter > 0")
                    continue
                if cls == 1.0:
                    rows[uid].append([x, y, z, d, d, d])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read CSV: {exc}", path=path) from exc
    return rows, bad


def iter_series(
    rows: dict[str, list[list[float]]], series_map: str | dict[str, str]
) -> Iterator[tuple[str, str | None]]:
    """``(uid, image path as written or None when series_map has no entry)`` of every series:
    those with rows, plus (for a mapping) every mapped series, lesion-free ones included."""
    uids = sorted(set(rows) | (set(series_map) if isinstance(series_map, dict) else set()))
    for uid in uids:
        if isinstance(series_map, dict):
            yield uid, (str(series_map[uid]) if uid in series_map else None)
        else:
            yield uid, series_map.format(seriesuid=uid)


# --- the datalist format of the medical modality ----------------------------------------------
def claims(path: Path) -> bool:
    """A ``.json`` object holding one of the datalist keys (``training``, ``validation``,
    ``test``). Never raises."""
    if not has_suffix(path, (".json",)):
        return False
    keys = json_top_keys(path)
    return keys is not None and bool(keys & set(DATALIST_KEYS))


def discover(adapter: MedicalAdapter) -> list[SampleRef]:
    """One ref per datalist entry: entry checked, labels within ``class_names``, the volume
    located inside the root and its header checked (no voxels); its group (patient:
    :mod:`modalities.medical.units`); the split is the datalist key when the file names splits
    (``validation``/``test``), else the stable hash of the group (of the volume id when it has
    none). Each entry is one unit of ``adapter.log.guard`` (``unit="volume"``)."""
    from modalities.medical import dicom, units
    from modalities.medical.adapter import _naming

    p = adapter.params
    assert p.datalist is not None
    root = adapter.root
    path = adapter.resolve_inside_root(p.datalist, root)
    raw_entries, has_splits = read_datalist(path)
    refs: list[SampleRef] = []
    seen: set[str] = set()
    for where, split, raw in raw_entries:
        name = raw.get("image") if isinstance(raw, dict) else None
        known = isinstance(name, str)
        with (
            adapter.log.guard(root / name if known else path, unit="volume"),
            _naming(volume_id(name) if known else None),
        ):
            entry = parse_entry(raw, where, path)
            adapter._check_labels(entry.labels, where, path)
            adapter.resolve_inside_root(dicom.split_spec(entry.image)[0], path)
            vid = volume_id(entry.image)
            if vid in seen:
                raise DataError(f"{where}: image {entry.image!r} listed twice", path=path)
            seen.add(vid)
            patient = (None, None)
            if p.patient_key is not None:
                patient = units.entry_patient(raw, p.patient_key, where, path)
            image, fmt = adapter._locate_volume(
                entry.image, path, f"{where}: image file {entry.image!r} not found"
            )
            group = units.volume_group(root, p, image, fmt, patient)
            sp = split if has_splits else adapter._split(group[0] or vid)
            meta = {"image": entry.image, "boxes": entry.boxes, "labels": entry.labels, **fmt}
            meta.update(units.group_meta(group))
            refs.append(SampleRef(vid, sp, {"image": image, "annotation": path}, meta))
    return refs
