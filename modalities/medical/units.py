"""The independence unit of a medical volume: its patient (``Sample.group``).

Two series of one patient (a CT and its follow-up, a CT and an MR, the T1 and T2 of one brain)
are not independent samples: one in training and the other in test lets a model recognise the
patient. Every volume therefore carries a *group*, and every slice of the volume carries it too;
hash splits are drawn on the group, so a patient's volumes share one split. The group comes,
first match wins, from:

1. ``group_by`` (any layout): the volume's path under the root, by folder or regular expression
   (:mod:`modalities.formats.groups`; ``(BraTS20_Training_\\d+)`` groups a BraTS case's
   ``_t1``/``_t2``/``_flair`` files). It overrides every key below.
2. ``patient_key`` (datalist): a field every datalist entry must carry (``"patient_id"``); an
   entry without it is refused naming the datalist and the entry.
3. ``patients_csv`` (LUNA16 CSV layout): a CSV mapping ``seriesuid`` (or TCIA's
   ``Series UID``) to the patient column ``patient_key`` (default ``patient_id``; LIDC-IDRI's
   ``metadata.csv``: ``Subject ID``); a series it does not name is refused.
4. DICOM headers: ``PatientID`` (0010,0020); without one ``StudyInstanceUID`` (0020,000D); without
   that the series itself. The fallbacks are counted in the prepare report
   (``groups_from_study_uid``, ``groups_from_series_uid``) with one warning.
5. Otherwise none: the volume is its own unit (NIfTI, MetaImage and NRRD headers name no
   patient).

Explicit splits (``split_files``, datalist keys) stay authoritative: a patient they put in two
splits is refused by the prepare stage's straddle check, never moved silently.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats.groups import group_of

if TYPE_CHECKING:
    from modalities.medical.adapter import MedicalAdapter
    from modalities.medical.params import MedicalParams

#: Accepted names of the series column of ``patients_csv`` (LUNA16's, TCIA's metadata.csv).
SERIES_COLUMNS = ("seriesuid", "Series UID")
#: The patient column of ``patients_csv`` when ``patient_key`` is null.
DEFAULT_PATIENT_COLUMN = "patient_id"
#: DICOM header keys of a located volume's meta, in the order they name the group.
DICOM_KEYS = (
    ("patient_id", "PatientID"),
    ("study_uid", "StudyInstanceUID"),
    ("dicom_series", "SeriesInstanceUID"),
)

#: ``(group, where it came from)``; ``(None, None)``: the volume is its own unit.
Group = tuple[str | None, str | None]


def read_patients_csv(path: Path, column: str) -> dict[str, str]:
    """``{series uid: patient}`` of a patients CSV (module docstring); raises
    :class:`DataError` naming the file for missing columns, an empty cell or a series given two
    patients."""
    out: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or []]
            reader.fieldnames = fields
            series = next((c for c in SERIES_COLUMNS if c in fields), None)
            if series is None or column not in fields:
                raise DataError(
                    f"patients CSV needs a series column ({' or '.join(SERIES_COLUMNS)}) and the "
                    f"patient column {column!r} (patient_key); its columns are {fields}",
                    path=path,
                )
            for line, row in enumerate(reader, start=2):
                uid, patient = (row.get(series) or "").strip(), (row.get(column) or "").strip()
                if not uid or not patient:
                    raise DataError(
                        f"line {line}: empty {series if not uid else column!r}", path=path
                    )
                if out.setdefault(uid, patient) != patient:
                    raise DataError(
                        f"line {line}: series {uid} has two patients, {out[uid]!r} and {patient!r}",
                        path=path,
                    )
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read patients CSV: {exc}", path=path) from exc
    return out


def entry_patient(raw: dict[str, Any], key: str, where: str, path: Path) -> Group:
    """The patient of one datalist entry (field ``key``, a non-empty string or integer)."""
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise DataError(
            f"{where} has no patient in field {key!r} (patient_key: every entry needs a "
            f"non-empty string or integer there), got {value!r}",
            path=path,
        )
    return str(value).strip(), "patient_key"


def series_patient(patients: dict[str, str] | None, uid: str, path: Path | None) -> Group:
    """The patient of LUNA16 series ``uid`` from ``patients_csv`` (None: not given)."""
    if patients is None:
        return None, None
    if uid not in patients:
        raise DataError(f"names no patient for series {uid} (patients_csv)", path=path)
    return patients[uid], "patients_csv"


def volume_group(
    root: Path, params: MedicalParams, image: Path, fmt: dict[str, Any], patient: Group
) -> Group:
    """The group of the volume at ``image`` (its ``meta`` from ``locate_volume``: ``fmt``;
    ``patient`` from the annotations), by the order of the module docstring."""
    if params.group_by is not None:
        rel = os.path.relpath(os.path.abspath(image), os.path.abspath(root))
        return group_of(rel, params.group_by, path=str(image)), "group_by"
    if patient[0] is not None:
        return patient
    if fmt.get("format") == "dicom":
        for key, source in DICOM_KEYS:
            if fmt.get(key):
                return str(fmt[key]), source
    return None, None


def group_meta(group: Group) -> dict[str, Any]:
    """The ref meta of a group: ``group`` (``Sample.group`` of every slice) and its source."""
    return {"group": group[0], "group_source": group[1]}


def report(adapter: MedicalAdapter, refs: list[SampleRef]) -> None:
    """Count the DICOM volumes grouped without a PatientID (one warning), and warn when
    several DICOM volumes share one PatientID only (anonymised alike: one split for all)."""
    sources = Counter(r.meta.get("group_source") for r in refs)
    study, series = sources["StudyInstanceUID"], sources["SeriesInstanceUID"]
    if study or series:
        adapter._count("groups_from_study_uid", study)
        adapter._count("groups_from_series_uid", series)
        adapter.log.warn(
            f"{study + series} DICOM volume(s) without PatientID: grouped by StudyInstanceUID "
            f"({study}) or by the series itself ({series}); if their patient is known, say it "
            "with group_by, patient_key/patients_csv or split_files",
            adapter.root,
        )
    by_id = {r.meta["group"] for r in refs if r.meta.get("group_source") == "PatientID"}
    if len(by_id) == 1 and sources["PatientID"] > 1 and len(refs) == sources["PatientID"]:
        adapter.log.warn(
            f"all {len(refs)} DICOM volumes have the one PatientID {next(iter(by_id))!r}, so "
            "they are one patient and lie in one split; if the IDs were anonymised alike, "
            "set group_by or split_files",
            adapter.root,
        )
