"""The ``medical`` modality: NIfTI CT/MRI volumes -> axial 2.5D slices; 3D lesions in world mm.

Conventions (``docs/modalities/medical.md`` has the long form):

* Volumes are read with nibabel and reoriented to the closest canonical orientation, RAS
  (``nibabel.orientations.io_orientation``). The 2D samples are the axial slices: canonical
  voxel axis ``k`` (towards Superior). A stored slice image is ``[C, H, W]`` with ``H`` along
  canonical voxel axis ``j`` (towards Anterior) and ``W`` along ``i`` (towards Right): pixel
  ``(x, y)`` (continuous, pixel centre at +0.5) is voxel ``(i, j) = (x - 0.5, y - 0.5)``.
* ``Sample.affine`` = ``A_ras @ S @ T``: ``A_ras`` the canonical voxel->RAS mm affine, ``S``
  the in-plane resampling scale (identity without resampling), ``T`` the shift
  ``(-0.5, -0.5, k)``; its third column is the slice step, so it is invertible.
* Reading is lazy: one slice at a time through ``img.dataobj`` (memory-mapped for ``.nii``;
  for ``.nii.gz`` the stream is kept open and read in increasing file order, so a volume is
  decompressed once), holding only the ``2k+1`` slices of the 2.5D context.
* Annotations are world boxes ``cccwhd`` (centre, size; mm) in ``world_frame`` (LPS by default,
  the LUNA16/ITK convention of MONAI's detection datalists) from a MONAI datalist JSON, or
  LUNA16-style CSV rows (``seriesuid, coordX, coordY, coordZ, diameter_mm``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from scipy import ndimage

from dsod_core.data.sample import Sample
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.medical_link import (
    apply_affine,
    ellipsoid_slice_cuts,
    link_volume,
    lps_ras_flip,
    slice_to_volume_affine,
)
from modalities.registry import register

log = logging.getLogger(__name__)

#: Named CT windows, ``(lo, hi)`` in HU (lung: WL -600/WW 1500; mediastinum: 40/400; bone:
#: 300/1500).
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),
    "mediastinum": (-160.0, 240.0),
    "bone": (-450.0, 1050.0),
}

#: Datalist keys <-> splits (MONAI / LUNA16 tutorial naming).
DATALIST_KEYS = {"training": "train", "validation": "val", "test": "test"}
SPLIT_KEYS = {v: k for k, v in DATALIST_KEYS.items()}

_READ_ERRORS = (ImageFileError, OSError, EOFError, zlib.error, ValueError, gzip.BadGzipFile)

# Percentiles of an MRI volume are computed on at most this many voxels (a regular in-plane
# stride over every slice), so the statistics never need the whole volume in memory.
_MRI_STAT_VOXELS = 2_000_000


def _volume_id(rel: str) -> str:
    name = rel.replace("\\", "/")
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("/", "__")


def _unit_hash(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


class _SliceReader:
    """Canonical (RAS) axial slices of one NIfTI file, read lazily.

    ``slice(k)`` returns float32 ``[n_i, n_j]`` of canonical slice ``k``; the file is touched
    only through ``dataobj`` slabs of one slice."""

    def __init__(self, path: Path):
        self.path = path
        try:
            # keep_file_open: a .nii.gz stream stays open, so reading slices in file order
            # decompresses the volume once instead of once per slice.
            self.img = nib.load(str(path), keep_file_open=True)
        except _READ_ERRORS as exc:
            raise DataError(f"cannot read NIfTI header: {exc}", path=path) from exc
        if not isinstance(self.img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"not a NIfTI image ({type(self.img).__name__})", path=path)
        shape = tuple(int(s) for s in self.img.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3 or min(shape) < 1:
            raise DataError(f"expected a 3D volume, got an image of shape {shape}", path=path)
        self.file_shape = shape
        affine = np.asarray(self.img.affine, dtype=np.float64)
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            raise DataError("the NIfTI affine is singular or not finite", path=path)
        self.ornt = io_orientation(affine)
        # canonical voxel -> RAS mm
        self.affine = affine @ inv_ornt_aff(self.ornt, shape)
        self.shape = tuple(shape[int(np.nonzero(self.ornt[:, 0] == ax)[0][0])] for ax in range(3))
        self.spacing = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self._s_axis = int(np.nonzero(self.ornt[:, 0] == 2)[0][0])
        self._s_flip = self.ornt[self._s_axis, 1] < 0
        self._ndim = len(self.img.shape)

    def file_index(self, k: int) -> int:
        """Index along the file's slice axis of canonical slice ``k``."""
        return self.shape[2] - 1 - k if self._s_flip else k

    def order(self) -> list[int]:
        """Canonical slice indices in increasing file order (forward-only stream reads)."""
        n = self.shape[2]
        return list(range(n - 1, -1, -1)) if self._s_flip else list(range(n))

    def slice(self, k: int) -> np.ndarray:
        idx: list[Any] = [slice(None)] * self._ndim
        t = self.file_index(k)
        idx[self._s_axis] = slice(t, t + 1)
        if self._ndim == 4:
            idx[3] = 0
        try:
            slab = np.asarray(self.img.dataobj[tuple(idx)], dtype=np.float32)
        except _READ_ERRORS as exc:
            raise DataError(
                f"cannot read slice {k} (file truncated or corrupt?): {exc}", path=self.path
            ) from exc
        out = apply_orientation(slab, self.ornt)[:, :, 0]
        if not np.isfinite(out).all():
            raise DataError(f"slice {k} holds NaN or infinite values", path=self.path)
        return out

    def close(self) -> None:
        # Drop the proxy so the kept-open file handle is released now, not at GC time.
        self.img = None  # type: ignore[assignment]


@register("medical")
class MedicalAdapter(ModalityAdapter):
    """NIfTI CT/MRI volumes with world-mm lesion boxes -> axial 2.5D slice samples.

    Params (defaults in :attr:`param_defaults`):
        datalist: MONAI detection datalist JSON (relative to root) — or
        annotations_csv + series_map: LUNA16-style CSV; ``series_map`` is a ``{uid: path}``
            dict or a template like ``"{seriesuid}.nii.gz"``; csv_class names its one class.
        world_frame: ``"LPS"`` (ITK/LUNA16/MONAI tutorial) or ``"RAS"`` (nibabel), for both
            reading annotations and writing 3D predictions.
        class_names: names of datalist labels 0..K-1 (our labels are 1..K); default
            ``lesion_<l>``.
        intensity: ``"ct"`` (HU windows) or ``"mri_percentile"``.
        windows: CT windows: names of :data:`CT_WINDOWS`, ``[lo, hi]`` or
            ``{"name", "lo", "hi"}``; one channel group each, scaled to [0, 1].
        mri_percentiles: ``[lo, hi]`` percentiles per volume mapped to [0, 1].
        slice_context: k neighbours each side stacked as channels (edges replicate).
        target_spacing: in-plane spacing (mm) to resample to, or None.
        min_cross_section: slices cutting less than this fraction of a lesion's largest
            cross-section give ``small_section`` boxes: ``"difficult"`` or ``"drop"``.
        negative_slice_rate: fraction of lesion-free slices kept (deterministic per slice);
            test_all_slices: keep every slice of test volumes (full-scan FROC).
        val_fraction, test_fraction, split_seed: splits when the annotations have none.
        on_error: ``"raise"`` or ``"skip"`` (bad volumes/entries are recorded in
            :attr:`skipped` and logged).
        link_iou, link_overlap, link_gap, link_score, link_extent, link_min_slices: 3D linking of
            predictions (:func:`modalities.medical_link.link_volume`).
    """

    world_units = "mm"
    param_defaults = {
        "datalist": None,
        "annotations_csv": None,
        "series_map": "{seriesuid}.nii.gz",
        "csv_class": "nodule",
        "world_frame": "LPS",
        "class_names": None,
        "intensity": "ct",
        "windows": ["lung", "mediastinum"],
        "mri_percentiles": [1.0, 99.0],
        "slice_context": 1,
        "target_spacing": None,
        "min_cross_section": 0.2,
        "small_section": "difficult",
        "negative_slice_rate": 0.1,
        "test_all_slices": True,
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "split_seed": 0,
        "on_error": "raise",
        "link_iou": 0.3,
        "link_overlap": "iou",
        "link_gap": 1,
        "link_score": "max",
        "link_extent": "ellipsoid",
        "link_min_slices": 1,
    }

    def __init__(self, root: str | Path, params: dict[str, Any] | None = None):
        super().__init__(root, params)
        self._class_names: list[str] | None = None
        #: ``[{"path": str, "reason": str}]`` of what ``on_error: skip`` left out.
        self.skipped: list[dict[str, str]] = []

    # --- params -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params

        def bad(msg: str) -> None:
            raise ConfigError(f"medical adapter: {msg}")

        if (p["datalist"] is None) == (p["annotations_csv"] is None):
            bad("set exactly one of 'datalist' or 'annotations_csv'")
        if p["world_frame"] not in ("LPS", "RAS"):
            bad(f"world_frame must be 'LPS' or 'RAS', got {p['world_frame']!r}")
        if p["intensity"] not in ("ct", "mri_percentile"):
            bad(f"intensity must be 'ct' or 'mri_percentile', got {p['intensity']!r}")
        self._windows = self._parse_windows(p["windows"]) if p["intensity"] == "ct" else []
        if p["intensity"] == "ct" and not self._windows:
            bad("windows must list at least one CT window")
        mp = p["mri_percentiles"]
        if not (isinstance(mp, list | tuple) and len(mp) == 2 and 0 <= mp[0] < mp[1] <= 100):
            bad(f"mri_percentiles must be [lo, hi] with 0 <= lo < hi <= 100, got {mp!r}")
        sc = p["slice_context"]
        if not isinstance(sc, int) or isinstance(sc, bool) or sc < 0:
            bad(f"slice_context must be an int >= 0, got {sc!r}")
        ts = p["target_spacing"]
        if ts is not None and (not isinstance(ts, int | float) or ts <= 0):
            bad(f"target_spacing must be a positive number (mm) or null, got {ts!r}")
        for key in (
            "min_cross_section",
            "negative_slice_rate",
            "val_fraction",
            "test_fraction",
            "link_iou",
        ):
            v = p[key]
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
                bad(f"{key} must be a number in [0, 1], got {v!r}")
        if p["val_fraction"] + p["test_fraction"] >= 1:
            bad("val_fraction + test_fraction must be < 1")
        if p["small_section"] not in ("difficult", "drop"):
            bad(f"small_section must be 'difficult' or 'drop', got {p['small_section']!r}")
        if p["on_error"] not in ("raise", "skip"):
            bad(f"on_error must be 'raise' or 'skip', got {p['on_error']!r}")
        if p["link_score"] not in ("max", "mean"):
            bad(f"link_score must be 'max' or 'mean', got {p['link_score']!r}")
        if p["link_overlap"] not in ("iou", "iomin"):
            bad(f"link_overlap must be 'iou' or 'iomin', got {p['link_overlap']!r}")
        if p["link_extent"] not in ("ellipsoid", "slab"):
            bad(f"link_extent must be 'ellipsoid' or 'slab', got {p['link_extent']!r}")
        for key in ("link_gap", "link_min_slices", "split_seed"):
            if not isinstance(p[key], int) or isinstance(p[key], bool) or p[key] < 0:
                bad(f"{key} must be an int >= 0, got {p[key]!r}")
        cn = p["class_names"]
        if cn is not None and (
            not isinstance(cn, list)
            or not cn
            or not all(isinstance(c, str) and c for c in cn)
            or len(set(cn)) != len(cn)
        ):
            bad(f"class_names must be a list of distinct non-empty strings, got {cn!r}")
        sm = p["series_map"]
        if not isinstance(sm, str | dict):
            bad("series_map must be a template string or a {seriesuid: path} mapping")

    @staticmethod
    def _parse_windows(spec: Any) -> list[tuple[str, float, float]]:
        if not isinstance(spec, list):
            raise ConfigError(f"medical adapter: windows must be a list, got {spec!r}")
        out = []
        for w in spec:
            if isinstance(w, str):
                if w not in CT_WINDOWS:
                    raise ConfigError(
                        f"medical adapter: unknown CT window {w!r}; named "
                        f"windows: {sorted(CT_WINDOWS)} (or give [lo, hi])"
                    )
                out.append((w, *CT_WINDOWS[w]))
            elif isinstance(w, list | tuple) and len(w) == 2:
                lo, hi = float(w[0]), float(w[1])
                out.append((f"w{lo:g}_{hi:g}", lo, hi))
            elif isinstance(w, dict) and set(w) == {"name", "lo", "hi"}:
                out.append((str(w["name"]), float(w["lo"]), float(w["hi"])))
            else:
                raise ConfigError(
                    f"medical adapter: bad window {w!r}; use a name, [lo, hi] or {{name, lo, hi}}"
                )
            if not out[-1][1] < out[-1][2]:
                raise ConfigError(f"medical adapter: window {w!r} needs lo < hi")
        if len({name for name, _, _ in out}) != len(out):
            raise ConfigError("medical adapter: window names must be distinct")
        return out

    # --- what the data looks like -----------------------------------------------------------
    @property
    def _offsets(self) -> list[int]:
        k = self.params["slice_context"]
        return list(range(-k, k + 1))

    @property
    def channel_names(self) -> list[str]:
        """``<window>@<offset>``, window-major: ``lung@-1, lung@0, lung@+1, mediastinum@-1..``
        (``mri@..`` in MRI mode)."""
        groups = [w[0] for w in self._windows] if self._windows else ["mri"]
        return [f"{g}@{o:+d}" if o else f"{g}@0" for g in groups for o in self._offsets]

    @property
    def class_names(self) -> list[str]:
        if self.params["class_names"] is not None:
            return list(self.params["class_names"])
        if self._class_names is None:
            raise ConfigError("medical adapter: class_names are known after discover()")
        return list(self._class_names)

    # --- discovery --------------------------------------------------------------------------
    def _fail(self, reason: str, path: str | Path) -> None:
        """Raise, or record a skip when ``on_error: skip``."""
        if self.params["on_error"] == "raise":
            raise DataError(reason, path=path)
        self.skipped.append({"path": str(path), "reason": reason})
        log.warning("skipped %s: %s", path, reason)

    def discover(self) -> list[SampleRef]:
        """Parse the annotations (datalist or CSV), check that every volume file exists and
        assign splits; no pixels are read."""
        self.skipped = []
        if self.params["datalist"] is not None:
            refs = self._discover_datalist()
        else:
            refs = self._discover_csv()
        if self.params["class_names"] is None:
            if self.params["datalist"] is None:
                self._class_names = [self.params["csv_class"]]
            else:
                top = max((max(r.meta["labels"], default=-1) for r in refs), default=-1)
                self._class_names = [f"lesion_{i}" for i in range(max(top + 1, 1))]
        n_cls = len(self.class_names)
        for r in refs:
            if any(lab >= n_cls for lab in r.meta["labels"]):
                raise DataError(
                    f"a label of {r.ref_id} exceeds the {n_cls} class_names",
                    path=r.paths["annotation"],
                )
        return refs

    def _discover_datalist(self) -> list[SampleRef]:
        path = self.resolve_inside_root(self.params["datalist"], self.root)
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read datalist JSON: {exc}", path=path) from exc
        if not isinstance(doc, dict) or not any(k in doc for k in DATALIST_KEYS):
            raise DataError(f"datalist needs one of the keys {sorted(DATALIST_KEYS)}", path=path)
        has_splits = "validation" in doc or "test" in doc
        refs: list[SampleRef] = []
        seen: set[str] = set()
        for key, split in DATALIST_KEYS.items():
            entries = doc.get(key, [])
            if not isinstance(entries, list):
                raise DataError(f"datalist key {key!r} must hold a list", path=path)
            for n, entry in enumerate(entries):
                where = f"{key}[{n}]"
                if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                    raise DataError(f"{where} needs an 'image' path", path=path)
                try:
                    boxes = np.asarray(entry.get("box", []), dtype=np.float64).reshape(-1, 6)
                    labels = np.asarray(entry.get("label", [0] * len(boxes)), dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise DataError(
                        f"{where}: 'box' must be [[cx, cy, cz, w, h, d], ...] "
                        f"and 'label' a list of ints ({exc})",
                        path=path,
                    ) from exc
                labels = labels.reshape(-1)
                if len(labels) != len(boxes):
                    raise DataError(
                        f"{where}: {len(boxes)} boxes but {len(labels)} labels", path=path
                    )
                if not np.isfinite(boxes).all() or (boxes[:, 3:] <= 0).any():
                    raise DataError(
                        f"{where}: boxes need finite values and positive sizes", path=path
                    )
                if (labels < 0).any() or (labels != np.round(labels)).any():
                    raise DataError(f"{where}: labels must be ints >= 0", path=path)
                image = self.resolve_inside_root(entry["image"], path)
                vid = _volume_id(entry["image"])
                if vid in seen:
                    raise DataError(f"{where}: image {entry['image']!r} listed twice", path=path)
                seen.add(vid)
                if not image.is_file():
                    self._fail(f"{where}: image file {entry['image']!r} not found", path)
                    continue
                sp = (
                    split
                    if has_splits
                    else assign_split(
                        vid,
                        self.params["val_fraction"],
                        self.params["test_fraction"],
                        self.params["split_seed"],
                    )
                )
                refs.append(
                    SampleRef(
                        vid,
                        sp,
                        {"image": image, "annotation": path},
                        {
                            "image": entry["image"],
                            "boxes": boxes.tolist(),
                            "labels": labels.astype(int).tolist(),
                        },
                    )
                )
        return refs

    def _discover_csv(self) -> list[SampleRef]:
        path = self.resolve_inside_root(self.params["annotations_csv"], self.root)
        rows: dict[str, list[list[float]]] = {}
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                need = {"seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"}
                missing = need - set(reader.fieldnames or [])
                if missing:
                    raise DataError(f"CSV lacks columns {sorted(missing)}", path=path)
                for line, row in enumerate(reader, start=2):
                    try:
                        x, y, z, d = (
                            float(row[c]) for c in ("coordX", "coordY", "coordZ", "diameter_mm")
                        )
                    except (TypeError, ValueError) as exc:
                        raise DataError(f"line {line}: bad number ({exc})", path=path) from exc
                    if not all(map(math.isfinite, (x, y, z, d))) or d <= 0:
                        raise DataError(
                            f"line {line}: need finite coords and diameter > 0", path=path
                        )
                    rows.setdefault(row["seriesuid"], []).append([x, y, z, d, d, d])
        except OSError as exc:
            raise DataError(f"cannot read CSV: {exc}", path=path) from exc
        smap = self.params["series_map"]
        uids = sorted(set(rows) | (set(smap) if isinstance(smap, dict) else set()))
        refs = []
        for uid in uids:
            if isinstance(smap, dict):
                if uid not in smap:
                    self._fail(f"series {uid!r} has no entry in series_map", path)
                    continue
                rel = str(smap[uid])
            else:
                rel = smap.format(seriesuid=uid)
            image = self.resolve_inside_root(rel, path)
            if not image.is_file():
                self._fail(f"image file {rel!r} of series {uid!r} not found", path)
                continue
            boxes = rows.get(uid, [])
            sp = assign_split(
                uid,
                self.params["val_fraction"],
                self.params["test_fraction"],
                self.params["split_seed"],
            )
            refs.append(
                SampleRef(
                    _volume_id(rel),
                    sp,
                    {"image": image, "annotation": path},
                    {"image": rel, "boxes": boxes, "labels": [0] * len(boxes), "seriesuid": uid},
                )
            )
        return refs

    # --- reading ----------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """Yield the kept axial slices of one volume as samples (see module docstring).

        With ``on_error: skip`` the volume is first read through once to check it (so a
        volume is either wholly yielded or wholly skipped); with ``raise`` a bad slice raises
        :class:`DataError` when reached.
        """
        try:
            samples = self._read(ref)
            if self.params["on_error"] == "skip":
                self._check_volume(ref)
            yield from samples
        except DataError as exc:
            if self.params["on_error"] == "raise":
                raise
            self.skipped.append({"path": exc.path or str(ref.paths["image"]), "reason": exc.reason})
            log.warning("skipped %s", exc)

    def _check_volume(self, ref: SampleRef) -> None:
        reader = _SliceReader(ref.paths["image"])
        try:
            for k in reader.order():
                reader.slice(k)
        finally:
            reader.close()

    def _lesion_cuts(
        self, ref: SampleRef, reader: _SliceReader, volume_affine: np.ndarray, scale: np.ndarray
    ):
        """Per slice: list of (box xyxy px in the stored image, label 1..K, fraction)."""
        boxes = np.asarray(ref.meta["boxes"], dtype=np.float64).reshape(-1, 6)
        if self.params["world_frame"] == "LPS":
            boxes = lps_ras_flip(boxes)
        n_i, n_j, n_k = reader.shape
        inv = np.linalg.inv(volume_affine)
        per_slice: dict[int, list[tuple[np.ndarray, int, float]]] = {}
        for box, lab in zip(boxes, ref.meta["labels"]):
            c = apply_affine(inv, box[:3][None])[0]  # (x, y, z) volume pixels
            limits = np.array([n_i, n_j]) / scale  # stored image size (W, H)
            if not (
                0 <= c[0] <= limits[0] and 0 <= c[1] <= limits[1] and -0.5 <= c[2] <= n_k - 0.5
            ):
                frame = self.params["world_frame"]
                as_given = box[:3] if frame == "RAS" else lps_ras_flip(box[:3])
                raise DataError(
                    f"box centred at {as_given.round(2).tolist()} mm ({frame}) lies outside "
                    f"the volume {ref.meta['image']!r}",
                    path=ref.paths["annotation"],
                )
            for cut in ellipsoid_slice_cuts(volume_affine, box, n_k):
                per_slice.setdefault(cut.slice_index, []).append(
                    (cut.box, int(lab) + 1, cut.fraction)
                )
        return per_slice

    def _read(self, ref: SampleRef) -> Iterator[Sample]:
        reader = _SliceReader(ref.paths["image"])
        try:
            yield from self._read_slices(ref, reader)
        finally:
            reader.close()

    def _read_slices(self, ref: SampleRef, reader: _SliceReader) -> Iterator[Sample]:
        p = self.params
        n_i, n_j, n_k = reader.shape
        # In-plane resampling: output pixel edges aligned with input voxel edges, so stored
        # pixel x covers input voxels [x*s, (x+1)*s).
        if p["target_spacing"] is not None:
            out_ij = np.maximum(
                1, np.round(np.array([n_i, n_j]) * reader.spacing[:2] / p["target_spacing"])
            ).astype(int)
        else:
            out_ij = np.array([n_i, n_j])
        scale = np.array([n_i, n_j]) / out_ij  # input voxels per stored pixel
        pix = np.eye(4)
        pix[0, 0], pix[1, 1] = scale
        pix[:2, 3] = -0.5
        volume_affine = reader.affine @ pix  # (x, y, z=k) -> RAS mm
        cuts = self._lesion_cuts(ref, reader, volume_affine, scale)
        # Slices whose every lesion section is dropped as too small are ambiguous (lesion
        # tissue without a box): kept neither as positives nor as negatives.
        small_dropped = p["small_section"] == "drop"
        positive = {
            k
            for k, c in cuts.items()
            if not small_dropped or any(f >= p["min_cross_section"] for _, _, f in c)
        }
        keep = self._slices_to_keep(ref, n_k, positive, set(cuts))
        if not keep:
            return
        mri_range = self._mri_range(reader) if p["intensity"] == "mri_percentile" else None
        ctx = p["slice_context"]
        cache: dict[int, np.ndarray] = {}
        order = reader.order()
        step = 1 if order[0] == 0 else -1
        w_out, h_out = int(out_ij[0]), int(out_ij[1])
        for k in order:
            if k not in keep:
                continue
            # Drop slices behind the context window (file order only moves forward).
            for old in [j for j in cache if (j - k) * step < -ctx]:
                del cache[old]
            needed = [min(max(k + o, 0), n_k - 1) for o in self._offsets]
            for j in sorted(set(needed), key=lambda j: j * step):
                if j not in cache:
                    cache[j] = self._prepare_slice(reader.slice(j), out_ij)
            channels = []
            for lo, hi in [(w[1], w[2]) for w in self._windows] or [mri_range]:
                for j in needed:
                    channels.append(np.clip((cache[j] - lo) / (hi - lo), 0.0, 1.0))
            image = np.stack(channels).astype(np.float32)
            boxes, labels, difficult = [], [], []
            for box, lab, frac in cuts.get(k, []):
                # cuts are already in stored pixels (volume_affine includes the resampling)
                b = np.clip(box, 0, [w_out, h_out, w_out, h_out])
                if b[2] - b[0] < 0.5 or b[3] - b[1] < 0.5:
                    continue  # a sliver left after clipping at the image border
                small = frac < p["min_cross_section"]
                if small and p["small_section"] == "drop":
                    continue
                boxes.append(b)
                labels.append(lab)
                difficult.append(small)
            meta = {
                "units": "mm",
                "world_frame": "RAS",
                "annotation_world_frame": p["world_frame"],
                "volume_id": ref.ref_id,
                "image": ref.meta["image"],
                "slice_index": int(k),
                "num_slices": int(n_k),
                "volume_shape": [int(n_i), int(n_j), int(n_k)],
                "spacing_mm": [float(s) for s in reader.spacing],
                "pixel_spacing_mm": [
                    float(reader.spacing[0] * scale[0]),
                    float(reader.spacing[1] * scale[1]),
                ],
                "intensity": p["intensity"],
                "split": ref.split,
                "datalist_key": SPLIT_KEYS[ref.split],
            }
            if mri_range is not None:
                meta["mri_range"] = [float(mri_range[0]), float(mri_range[1])]
            yield Sample(
                image=image,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                difficult=np.asarray(difficult, dtype=bool),
                sample_id=f"{ref.ref_id}_k{k:04d}",
                source=str(ref.paths["image"]),
                split=ref.split,
                affine=volume_affine @ _translate_z(k),
                meta=meta,
            )

    @staticmethod
    def _prepare_slice(canonical: np.ndarray, out_ij: np.ndarray) -> np.ndarray:
        """Canonical ``[n_i, n_j]`` -> stored ``[H=n_j', W=n_i']``, resampled if asked."""
        img = canonical.T
        if (img.shape[1], img.shape[0]) != (int(out_ij[0]), int(out_ij[1])):
            zoom = (out_ij[1] / img.shape[0], out_ij[0] / img.shape[1])
            # grid_mode: pixel edges (not centres) align, matching the continuous pixel
            # coordinates of the boxes and the affine.
            img = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
        return img

    def _mri_range(self, reader: _SliceReader) -> tuple[float, float]:
        n_i, n_j, n_k = reader.shape
        stride = max(1, int(math.ceil(math.sqrt(n_i * n_j * n_k / _MRI_STAT_VOXELS))))
        values = np.concatenate(
            [reader.slice(k)[::stride, ::stride].ravel() for k in reader.order()]
        )
        lo, hi = np.percentile(values, self.params["mri_percentiles"])
        if not hi > lo:
            hi = lo + 1.0  # a constant volume: keep the map finite
        return float(lo), float(hi)

    def _slices_to_keep(
        self, ref: SampleRef, n_k: int, positive: set[int], crossing: set[int]
    ) -> set[int]:
        p = self.params
        if ref.split == "test" and p["test_all_slices"]:
            return set(range(n_k))
        rate = p["negative_slice_rate"]
        keep = set(positive)
        for k in range(n_k):
            if k not in crossing and _unit_hash(f"{p['split_seed']}:{ref.ref_id}:{k}") < rate:
                keep.add(k)
        return keep

    # --- back to the world ------------------------------------------------------------------
    def export_predictions(self, items: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Link per-slice detections of each volume into 3D lesions and write
        ``predictions_3d.json`` in the datalist convention (``{key: [{"image", "box" cccwhd
        mm in world_frame, "label" 0-based, "score"}]}``), plus the per-slice world boxes of
        the base class (``predictions_world.json``)."""
        out_dir = Path(out_dir)
        paths = super().export_predictions(items, out_dir)
        p = self.params
        volumes: dict[str, dict[str, Any]] = {}
        for item in items:
            meta = item["meta"]
            k = int(meta["slice_index"])
            vol = volumes.setdefault(
                meta["volume_id"],
                {
                    "image": meta["image"],
                    "key": meta.get("datalist_key", "test"),
                    "affine": slice_to_volume_affine(np.asarray(item["affine"]), k),
                    "dets": {},
                },
            )
            det = item["detections"]
            vol["dets"][k] = {key: np.asarray(det[key]) for key in ("boxes", "scores", "labels")}
        doc: dict[str, list[dict[str, Any]]] = {}
        for vid in sorted(volumes):
            vol = volumes[vid]
            lesions = link_volume(
                vol["dets"],
                vol["affine"],
                p["link_iou"],
                p["link_gap"],
                p["link_score"],
                p["link_extent"],
                p["link_min_slices"],
                p["link_overlap"],
            )
            boxes = np.array([les.box for les in lesions]).reshape(-1, 6)
            if p["world_frame"] == "LPS":
                boxes = lps_ras_flip(boxes)
            doc.setdefault(vol["key"], []).append(
                {
                    "image": vol["image"],
                    "box": boxes.round(4).tolist(),
                    "label": [les.label - 1 for les in lesions],
                    "score": [round(les.score, 6) for les in lesions],
                }
            )
        path = out_dir / "predictions_3d.json"
        _write_json(path, doc)
        return [*paths, path]

    def extra_metrics(self, exported: list[Path], split: str) -> dict[str, Any]:
        """FROC of the linked 3D lesions (LUNA16 rules; ``dsod_core.metrics.froc``)."""
        from dsod_core.metrics.froc import froc_from_datalists

        path = next((p for p in exported if Path(p).name == "predictions_3d.json"), None)
        if path is None:
            return {}
        preds = json.loads(Path(path).read_text())
        result = froc_from_datalists(preds, self.reference_datalist(split), key=SPLIT_KEYS[split])
        return {
            "froc_cpm": float(result["cpm"]),
            "froc_sensitivities": {
                str(k): float(v) for k, v in zip(result["fp_rates"], result["sensitivities"])
            },
        }

    def reference_datalist(self, split: str = "test") -> dict[str, list[dict[str, Any]]]:
        """The annotations of one split in the datalist convention of
        :meth:`export_predictions` (key, ``image``, cccwhd ``box`` in ``world_frame``, 0-based
        ``label``), for :func:`dsod_core.metrics.froc.froc_from_datalists`. Runs
        :meth:`discover` (cheap)."""
        if split not in SPLIT_KEYS:
            raise ConfigError(f"split must be one of {sorted(SPLIT_KEYS)}, got {split!r}")
        entries = [
            {"image": r.meta["image"], "box": r.meta["boxes"], "label": r.meta["labels"]}
            for r in self.discover()
            if r.split == split
        ]
        return {SPLIT_KEYS[split]: entries}

    def render(self, image: np.ndarray) -> np.ndarray:
        """Grey uint8 ``[H, W, 3]`` of the first window's centre slice (values in [0, 1])."""
        ch = np.asarray(image[self.params["slice_context"]], dtype=np.float64)
        g = np.clip(ch, 0.0, 1.0)
        return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)

    # --- demo -------------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Synthetic chest-CT-like volumes (HU, int16 ``.nii.gz``, 0.8 x 0.8 x 2.5 mm, LPS-like
        affine with flipped x/y) with solid nodules and ground-glass opacities, plus
        ``datalist.json`` (cccwhd, LPS world mm). See :mod:`modalities.medical_demo`."""
        from modalities.medical_demo import write_medical_demo

        return write_medical_demo(
            out_dir,
            num_images=num_images,
            image_size=image_size,
            seed=seed,
            params_defaults=cls.param_defaults,
        )


def _translate_z(k: int) -> np.ndarray:
    t = np.eye(4)
    t[2, 3] = float(k)
    return t


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
