"""The params of the ``medical`` adapter (a frozen dataclass) and the CT window presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dsod_core.errors import ConfigError
from modalities.base import AdapterParams, param
from modalities.formats.groups import GROUP_BY_DOC, check_group_by

#: Named CT windows, ``(lo, hi)`` in HU (lung: WL -600/WW 1500; mediastinum: 40/400; bone:
#: 300/1500).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
}

#: Default ``max_voxels``: a 512 x 512 x 1000 volume (a thin-slice whole-body CT).
DEFAULT_MAX_VOXELS = 512 * 512 * 1000


def parse_windows(spec: list[Any]) -> list[tuple[str, float, float]]:
    """``windows`` -> ``[(name, lo, hi)]``; raises :class:`ConfigError` on a bad entry."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"medical adapter param 'windows': {why}")

    out: list[tuple[str, float, float]] = []
    for w in spec:
        if isinstance(w, str):
            if w not in CT_WINDOWS:
                raise bad(
                    f"unknown CT window {w!r}; named windows: {sorted(CT_WINDOWS)} "
                    "(or give [lo, hi])"
                )
            out.append((w, *CT_WINDOWS[w]))
        elif isinstance(w, list | tuple) and len(w) == 2:
            lo, hi = float(w[0]), float(w[1])
            out.append((f"w{lo:g}_{hi:g}", lo, hi))
        elif isinstance(w, dict) and set(w) == {"name", "lo", "hi"}:
            try:
                out.append((str(w["name"]), float(w["lo"]), float(w["hi"])))
            except (TypeError, ValueError):
                raise bad(f"window {w!r} needs numbers lo and hi") from None
        else:
            raise bad(f"bad window {w!r}; use a name, [lo, hi] or {{name, lo, hi}}")
        if not out[-1][1] < out[-1][2]:
            raise bad(f"window {w!r} needs lo < hi")
    if len({name for name, _, _ in out}) != len(out):
        raise bad("window names must be distinct")
    return out


#: Why ``world_frame`` must be stated for a datalist (its boxes may be in either frame).
WORLD_FRAME_HELP = (
    "a datalist does not fix the frame of its boxes; state world_frame: LPS (ITK, DICOM, "
    "SimpleITK, LUNA16 and MONAI's LUNA16 datalists: x grows to the patient's left, y to "
    "posterior) or world_frame: RAS (NIfTI/nibabel, 3D Slicer: x grows to the patient's "
    "right, y to anterior); z grows to superior in both"
)


@dataclass(frozen=True)
class MedicalParams(AdapterParams):
    """Params of :class:`modalities.medical.MedicalAdapter` (``docs/modalities/medical.md``)."""

    datalist: str | None = param(
        None, "MONAI detection datalist JSON, relative to root (or set annotations_csv)"
    )
    annotations_csv: str | None = param(
        None,
        "LUNA16-style CSV, relative to root: annotations.csv (seriesuid, coordX, coordY, "
        "coordZ, diameter_mm) or candidates.csv (.., class; see candidate_diameter_mm)",
    )
    series_map: str | dict[str, str] = param(
        "{seriesuid}.nii.gz",
        "CSV series uid -> volume (.nii/.nii.gz, .mhd/.mha, .nrrd/.nhdr, DICOM folder or "
        "folder#uid): a template or a {uid: path} mapping",
    )
    missing_series: Literal["skip", "error"] = param(
        "skip",
        "CSV rows whose series volume is absent (another LUNA16 subset): counted and left out "
        "with one warning (skip), or refused (error)",
    )
    csv_class: str = param("nodule", "name of the one class of CSV annotations")
    candidate_diameter_mm: float | None = param(
        None,
        "diameter (mm) given to the class-1 rows of a candidates.csv (it has no size); "
        "null refuses a CSV without diameter_mm",
        min=0.0,
        min_exclusive=True,
    )
    world_frame: Literal["LPS", "RAS"] | None = param(
        None,
        "frame of annotation boxes and written 3D predictions: LPS (ITK/DICOM/LUNA16) or RAS "
        "(NIfTI/nibabel/Slicer); required with a datalist, LPS (fixed) for a LUNA16 CSV",
    )
    class_names: list[str] | None = param(
        None, "names of datalist labels 0..K-1 (stored as 1..K); null = lesion_<l> from the data"
    )
    intensity: Literal["ct", "mri_percentile"] = param(
        "ct", "intensity mapping: CT windows in HU, or per-volume MRI percentiles"
    )
    windows: list[str | list[float] | dict[str, Any]] = param(
        default_factory=lambda: ["lung", "mediastinum"],
        doc="CT windows: names (lung, mediastinum, bone), [lo, hi] or {name, lo, hi}",
    )
    mri_percentiles: list[float] = param(
        default_factory=lambda: [1.0, 99.0],
        doc="[lo, hi] per-volume percentiles mapped to [0, 1] (mri_percentile)",
        min=0.0,
        max=100.0,
    )
    slice_context: int = param(1, "neighbouring slices each side stacked as channels", min=0)
    target_spacing: float | None = param(
        None,
        "in-plane spacing (mm) to resample slices to; null keeps the voxel grid",
        min=0.0,
        min_exclusive=True,
    )
    min_cross_section: float = param(
        0.2,
        "lesion sections under this fraction of the largest are small_section",
        min=0.0,
        max=1.0,
    )
    small_section: Literal["difficult", "drop"] = param(
        "difficult", "what small lesion sections become: difficult boxes, or dropped"
    )
    negative_slice_rate: float = param(
        0.1, "fraction of lesion-free slices kept (stable per slice)", min=0.0, max=1.0
    )
    test_all_slices: bool = param(True, "keep every slice of test volumes (full-scan FROC)")
    split_files: dict[str, str] = param(
        default_factory=dict,
        doc="split (train/val/test) -> text file relative to root listing its volumes, one a "
        "line: volume id, image path, series uid, PatientID or group ('#' comments); overrides "
        "datalist keys and the hash",
    )
    group_by: str | None = param(None, GROUP_BY_DOC)
    patient_key: str | None = param(
        None,
        "the patient of each volume (splits keep it whole): a field every datalist entry must "
        "have (e.g. patient_id), or the patient column of patients_csv (default patient_id); "
        "null = DICOM PatientID, else the volume",
    )
    patients_csv: str | None = param(
        None,
        "LUNA16 CSV layout: CSV relative to root naming each series' patient, columns "
        "seriesuid (or 'Series UID') and patient_key; null = DICOM PatientID, else the series",
    )
    dicom_stray_files: Literal["error", "skip"] = param(
        "error",
        "files without the DICM prefix in a DICOM series folder: refuse the series naming the "
        "file (error), or leave them out with one warning (skip)",
    )
    val_fraction: float = param(
        0.15, "validation share when the annotations give no splits", min=0.0, max=1.0
    )
    test_fraction: float = param(
        0.15,
        "test share when the annotations give no splits (1: an evaluation-only dataset)",
        min=0.0,
        max=1.0,
    )
    seed: int = param(0, "seed of the split hash and of the negative-slice choice", min=0)
    max_voxels: int = param(
        DEFAULT_MAX_VOXELS, "largest voxel count a volume header may declare", min=1
    )
    link_iou: float = param(
        0.3, "3D linking: least overlap of a detection with a track's last box", min=0.0, max=1.0
    )
    link_overlap: Literal["iou", "iomin"] = param(
        "iou", "3D linking overlap: IoU, or intersection over the smaller box"
    )
    link_gap: int = param(1, "3D linking: slices a track may skip", min=0)
    link_score: Literal["max", "mean"] = param("max", "3D lesion score from its slice scores")
    link_extent: Literal["ellipsoid", "slab"] = param(
        "ellipsoid", "3D lesion extent: ellipsoid fit of the slice boxes, or their slab union"
    )
    link_min_slices: int = param(1, "3D linking: shortest track kept", min=0)

    @property
    def frame(self) -> Literal["LPS", "RAS"]:
        """The frame of the annotation boxes (``world_frame``; LPS for a LUNA16 CSV)."""
        return self.world_frame or "LPS"

    def check(self) -> None:
        if (self.datalist is None) == (self.annotations_csv is None):
            self.fail("datalist", "set exactly one of 'datalist' or 'annotations_csv'")
        if self.datalist is not None and self.world_frame is None:
            self.fail("world_frame", WORLD_FRAME_HELP)
        if self.annotations_csv is not None and self.world_frame == "RAS":
            self.fail(
                "world_frame",
                "a LUNA16-style CSV holds world coordinates in LPS (the ITK/DICOM patient "
                "frame) by definition; drop world_frame or set it to LPS (convert the CSV to "
                "a datalist for RAS boxes)",
            )
        if self.intensity == "ct":
            if not self.windows:
                self.fail("windows", "list at least one CT window")
            parse_windows(self.windows)
        mp = self.mri_percentiles
        if len(mp) != 2 or not mp[0] < mp[1]:
            self.fail("mri_percentiles", f"must be [lo, hi] with 0 <= lo < hi <= 100, got {mp!r}")
        if self.val_fraction + self.test_fraction > 1:
            # == 1 is an evaluation-only dataset (no train split; to score a trained model)
            self.fail("val_fraction", "val_fraction + test_fraction must be <= 1")
        if isinstance(self.series_map, str):
            try:
                self.series_map.format(seriesuid="x")
            except (KeyError, IndexError, ValueError):
                self.fail(
                    "series_map",
                    f"a template may only use {{seriesuid}}, got {self.series_map!r}",
                )
        self._check_groups()
        bad_splits = sorted(set(self.split_files) - {"train", "val", "test"})
        if bad_splits:
            self.fail("split_files", f"keys must be train, val or test, got {bad_splits}")
        cn = self.class_names
        if cn is not None and (not cn or not all(cn) or len(set(cn)) != len(cn)):
            self.fail("class_names", f"must be a list of distinct non-empty names, got {cn!r}")

    def _check_groups(self) -> None:
        """``group_by``, ``patient_key`` and ``patients_csv``: one source of the patient,
        each for its layout."""
        if why := check_group_by(self.group_by):
            self.fail("group_by", why)
        if self.group_by is not None:
            for name in ("patient_key", "patients_csv"):
                if getattr(self, name) is not None:
                    self.fail(name, "set either group_by (from the path) or " + name)
        if self.patients_csv is not None and self.datalist is not None:
            self.fail(
                "patients_csv",
                "belongs to the LUNA16 CSV layout (annotations_csv); with a datalist name the "
                "entries' patient field with patient_key",
            )
        if self.annotations_csv is not None and self.patient_key and not self.patients_csv:
            self.fail(
                "patient_key",
                "with annotations_csv it names the patient column of patients_csv; set "
                "patients_csv (LUNA16's CSV names series only)",
            )
        if self.patient_key is not None and not self.patient_key.strip():
            self.fail("patient_key", "must be a non-empty field name or null")


@dataclass(frozen=True)
class MedicalDetectParams(AdapterParams):
    """Options of ``dsod detect`` on volumes (flag ``--volume-mask``)."""

    volume_mask: bool = param(False, "also write the candidates as a NIfTI label volume")
