"""The medical adapter's independence units: a patient's volumes share one split.

Real files written by the formats' own tools: DICOM series by pydicom (and the real slices of
``tests/data/medical_real``), NIfTI volumes by nibabel, datalists by json, CSVs as text. The
groups are what the files say (PatientID, the datalist's patient field, the patients CSV, the
path by ``group_by``); over many patients a split per volume would split some of them with near
certainty, so "every patient in one split" is a real check; contradicting explicit splits are
refused by the prepare stage's straddle check."""

from __future__ import annotations

import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid

from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog, assign_split
from modalities.medical import MedicalAdapter
from pipelines.prepare import prepare
from tests.test_medical_formats import write_slice

DATA = Path(__file__).parent / "data" / "medical_real"
HASH = {"val_fraction": 0.3, "test_fraction": 0.3, "slice_context": 0}
N_PATIENTS = 24


def _series(folder: Path, patient: str | None, study: str | None = None) -> str:
    """A 2-slice CT series in ``folder``; returns its SeriesInstanceUID."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    for s in range(2):
        write_slice(
            folder / f"IM{s}.dcm",
            np.full((3, 3), 1000, np.uint16),
            series=uid,
            position=(0.0, 0.0, 2.0 * s),
            spacing=(1.0, 1.0),
            patient=patient,
            study=study,
        )
    return uid


def _nifti(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)).to_filename(path)


def _datalist(root: Path, entries: dict[str, list[dict]]) -> dict:
    (root / "datalist.json").write_text(json.dumps(entries))
    return {"datalist": "datalist.json", "world_frame": "RAS"}


def _splits_by_group(refs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for ref in refs:
        out[ref.meta["group"]].add(ref.split)
    return out


def _dicom_patients(root: Path) -> list[dict]:
    """Two series (a CT and its follow-up) of each of N_PATIENTS patients, in folders whose
    names say nothing of the patient (the group must come from the headers)."""
    entries = []
    for n in range(2 * N_PATIENTS):
        _series(root / f"s{n:03d}", f"PAT-{n % N_PATIENTS:03d}")
        entries.append({"image": f"s{n:03d}", "box": [], "label": []})
    return entries


def test_dicom_series_of_one_patient_share_a_split(tmp_path: Path) -> None:
    params = {**_datalist(tmp_path, {"training": _dicom_patients(tmp_path)}), **HASH}
    ad = MedicalAdapter(tmp_path, {**params, "negative_slice_rate": 1.0})
    refs = ad.discover()
    by_group = _splits_by_group(refs)
    assert sorted(by_group) == [f"PAT-{n:03d}" for n in range(N_PATIENTS)]
    assert {r.meta["group_source"] for r in refs} == {"PatientID"}
    assert all(len(s) == 1 for s in by_group.values())
    assert set().union(*by_group.values()) == {"train", "val", "test"}
    # the per-volume hash of before would have split patients between splits
    per_volume = defaultdict(set)
    for ref in refs:
        per_volume[ref.meta["group"]].add(assign_split(ref.ref_id, 0.3, 0.3))
    assert any(len(s) > 1 for s in per_volume.values())
    # every slice of a volume carries the volume's patient
    samples = list(ad.read(refs[0]))
    assert len(samples) == 2 and {s.group for s in samples} == {refs[0].meta["group"]}
    assert {s.unit for s in samples} == {refs[0].meta["group"]}
    assert ad.warnings == []


def test_dicom_without_patient_id_falls_back_to_study_then_series(tmp_path: Path) -> None:
    study = generate_uid()
    _series(tmp_path / "a", "P1")
    _series(tmp_path / "b", None, study)
    series = _series(tmp_path / "c", None, None)
    entries = [{"image": name, "box": [], "label": []} for name in "abc"]
    log = PrepareLog()
    ad = MedicalAdapter(tmp_path, {**_datalist(tmp_path, {"training": entries}), **HASH}, log=log)
    refs = {r.ref_id: r for r in ad.discover()}
    assert [refs[k].meta["group"] for k in "abc"] == ["P1", study, series]
    assert [refs[k].meta["group_source"] for k in "abc"] == [
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ]
    assert log.counts["groups_from_study_uid"] == 1
    assert log.counts["groups_from_series_uid"] == 1
    (warning,) = log.warnings
    assert "2 DICOM volume(s) without PatientID" in warning["reason"]


def test_real_dicom_slices_are_grouped_by_their_patient_ids(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("build_example", DATA / "build_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)  # a CT series of pydicom's CT_small.dcm, an MR of MR_small.dcm
    ad = MedicalAdapter(tmp_path, {"datalist": "datalist.json", "world_frame": "LPS"})
    groups = {r.ref_id: r.meta["group"] for r in ad.discover()}
    assert groups == {"ct": "1CT1", "mr": "4MR1", "ball": None}  # NRRD names no patient


def test_split_files_putting_a_patient_in_two_splits_is_refused_by_prepare(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    _series(root / "ct1", "P7")
    _series(root / "ct2", "P7")  # the same patient's second series
    _series(root / "ct3", "P8")
    _nifti(root / "lesion.nii.gz")
    entries = [{"image": f"ct{n}", "box": [], "label": []} for n in (1, 2, 3)]
    entries.append({"image": "lesion.nii.gz", "box": [[1.5, 1.5, 1.0, 2, 2, 2]], "label": [0]})
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("ct1\nct3\nlesion\n")
    (root / "splits" / "test.txt").write_text("ct2\n")
    params = {
        **_datalist(root, {"training": entries}),
        "slice_context": 0,
        "negative_slice_rate": 1.0,  # every slice written: the check sees stored samples
        "split_files": {"train": "splits/train.txt", "test": "splits/test.txt"},
    }
    entry = {"modality": "medical", "root": str(root), "adapter": params}
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'P7' in train and test"):
        prepare("units", entry, out / "d.h5", out / "d.report.json")
    # listing the patient instead keeps its series together, and the report counts patients
    (root / "splits" / "train.txt").write_text("P7\nlesion\n")
    (root / "splits" / "test.txt").write_text("P8\n")
    report = prepare("units", entry, out / "d.h5", out / "d.report.json")
    assert report["units"]["train"] == 2 and report["units"]["test"] == 1
    assert report["units"]["straddling"] == 0


def test_datalist_patient_key_groups_and_is_required(tmp_path: Path) -> None:
    entries = []
    for n in range(2 * N_PATIENTS):
        _nifti(tmp_path / f"v{n:03d}.nii.gz")
        entries.append({"image": f"v{n:03d}.nii.gz", "patient_id": f"case{n // 2}"})
    params = {**_datalist(tmp_path, {"training": entries}), **HASH, "patient_key": "patient_id"}
    refs = MedicalAdapter(tmp_path, params).discover()
    by_group = _splits_by_group(refs)
    assert sorted(by_group) == sorted(f"case{n}" for n in range(N_PATIENTS))
    assert all(len(s) == 1 for s in by_group.values())
    assert set().union(*by_group.values()) == {"train", "val", "test"}
    del entries[5]["patient_id"]
    _datalist(tmp_path, {"training": entries})
    with pytest.raises(DataError, match=r"datalist\.json: .*training\[5\] has no patient in field"):
        MedicalAdapter(tmp_path, params).discover()


def test_datalist_keys_stay_authoritative_and_a_straddle_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a1", "a2", "b1"):
        _nifti(root / f"{name}.nii.gz")
    box = {"box": [[1.5, 1.5, 1.0, 2, 2, 2]], "label": [0]}
    doc = {
        "training": [
            {"image": "a1.nii.gz", "patient_id": "A", **box},
            {"image": "b1.nii.gz", "patient_id": "B", **box},
        ],
        "validation": [{"image": "a2.nii.gz", "patient_id": "A", **box}],
    }
    params = {**_datalist(root, doc), "patient_key": "patient_id", "slice_context": 0}
    refs = {r.ref_id: r.split for r in MedicalAdapter(root, params).discover()}
    assert refs == {"a1": "train", "b1": "train", "a2": "val"}  # not moved
    entry = {"modality": "medical", "root": str(root), "adapter": params}
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"'A' in train and val"):
        prepare("units", entry, out / "d.h5", out / "d.report.json")
    report = prepare("units", entry, out / "d.h5", out / "d.report.json", straddle="warn")
    assert report["units"]["straddling_units"] == ["A"]


def test_group_by_regex_and_folder_and_a_path_that_does_not_match(tmp_path: Path) -> None:
    entries = []
    for case in range(1, N_PATIENTS + 1):
        for seq in ("t1", "flair"):
            name = f"BraTS20_Training_{case:03d}/BraTS20_Training_{case:03d}_{seq}.nii.gz"
            _nifti(tmp_path / name)
            entries.append({"image": name})
    params = {**_datalist(tmp_path, {"training": entries}), **HASH}
    regex = {**params, "group_by": r"(BraTS20_Training_\d+)"}  # as docs/modalities/medical.md
    by_group = _splits_by_group(MedicalAdapter(tmp_path, regex).discover())
    assert sorted(by_group) == [f"BraTS20_Training_{c:03d}" for c in range(1, N_PATIENTS + 1)]
    assert all(len(s) == 1 for s in by_group.values())
    assert set().union(*by_group.values()) == {"train", "val", "test"}
    folder = _splits_by_group(MedicalAdapter(tmp_path, {**params, "group_by": "folder"}).discover())
    assert folder == by_group
    _nifti(tmp_path / "extra_scan.nii.gz")
    _datalist(tmp_path, {"training": [*entries, {"image": "extra_scan.nii.gz"}]})
    with pytest.raises(DataError, match=r"extra_scan\.nii\.gz.*does not match the path"):
        MedicalAdapter(tmp_path, regex).discover()


def test_group_by_overrides_dicom_patient_id(tmp_path: Path) -> None:
    _series(tmp_path / "visit" / "x1", "anonymous")
    _series(tmp_path / "visit" / "x2", "anonymous")
    entries = [{"image": "visit/x1"}, {"image": "visit/x2"}]
    params = {**_datalist(tmp_path, {"training": entries}), **HASH}
    log = PrepareLog()
    refs = MedicalAdapter(tmp_path, params, log=log).discover()
    assert {r.meta["group"] for r in refs} == {"anonymous"}
    (warning,) = log.warnings  # alike anonymised IDs: said, since they make one patient
    assert "one PatientID 'anonymous'" in warning["reason"]
    regex = {**params, "group_by": r"/(x\d)$"}
    assert [r.meta["group"] for r in MedicalAdapter(tmp_path, regex).discover()] == ["x1", "x2"]


def test_luna16_patients_csv(tmp_path: Path) -> None:
    uids = [f"1.3.6.1.4.1.14519.5.2.1.{n}" for n in range(2 * N_PATIENTS)]
    for uid in uids:
        _nifti(tmp_path / f"{uid}.nii.gz")
    rows = "".join(f"{uid},1.0,1.0,1.0,2.0\n" for uid in uids)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n" + rows)
    # TCIA's metadata.csv naming (LIDC-IDRI): Series UID, Subject ID
    meta = "".join(f"{uid},LIDC-IDRI-{n // 2:04d},CT\n" for n, uid in enumerate(uids))
    (tmp_path / "metadata.csv").write_text("Series UID,Subject ID,Modality\n" + meta)
    params = {
        "annotations_csv": "annotations.csv",
        "patients_csv": "metadata.csv",
        "patient_key": "Subject ID",
        **HASH,
    }
    by_group = _splits_by_group(MedicalAdapter(tmp_path, params).discover())
    assert sorted(by_group) == [f"LIDC-IDRI-{n:04d}" for n in range(N_PATIENTS)]
    assert all(len(s) == 1 for s in by_group.values())
    assert set().union(*by_group.values()) == {"train", "val", "test"}
    (tmp_path / "metadata.csv").write_text("Series UID,Subject ID\n" + meta.split("\n", 1)[1])
    with pytest.raises(DataError, match=rf"metadata\.csv: .*names no patient for series {uids[0]}"):
        MedicalAdapter(tmp_path, params).discover()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"group_by": "(unclosed"}, "group_by.*regular expression"),
        ({"group_by": "folder", "patient_key": "pid"}, "group_by"),
        ({"patients_csv": "p.csv"}, "patients_csv.*LUNA16 CSV layout"),
    ],
)
def test_group_params_are_checked(tmp_path: Path, extra: dict, match: str) -> None:
    params = {"datalist": "d.json", "world_frame": "RAS", **extra}
    with pytest.raises(ConfigError, match=match):
        MedicalAdapter(tmp_path, params)


def test_patient_key_without_patients_csv_is_refused_for_luna16(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="patient_key.*set patients_csv"):
        MedicalAdapter(tmp_path, {"annotations_csv": "a.csv", "patient_key": "Subject ID"})
