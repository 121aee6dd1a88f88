"""DICOM series reading for the ``medical`` adapter (pydicom): a folder tree -> one CT volume.

* :func:`index_folder` walks a folder tree and groups the DICOM image files by
  ``SeriesInstanceUID`` (headers only, ``stop_before_pixels``). Files without the ``DICM``
  prefix of the DICOM file format are listed apart (:attr:`FolderIndex.not_dicom`): the
  adapter refuses the series naming the first of them, or leaves them out with one warning
  (``dicom_stray_files``), so a stray or damaged file is never reported as a gap between two
  slices. DICOM files that are not images (no ``Rows``: DICOMDIR, structured reports) are
  ignored; a file with the ``DICM`` prefix that cannot be parsed is refused (it may be a
  slice). pydicom's warnings and log lines are captured (:attr:`FolderIndex.notes`, then the
  prepare report), never printed. ``PatientID`` and ``StudyInstanceUID`` of the first slice
  are kept: the volume's independence unit (:mod:`modalities.medical.units`).
* :func:`select_series` refuses a folder holding several series without a
  ``folder#<SeriesInstanceUID>`` selection, naming a file, the modality and the file count of
  each series; the files of one series must share one ``Modality``.
* :func:`series_geometry` orders the slices by ``ImagePositionPatient`` projected on the slice
  normal (the cross product of the two ``ImageOrientationPatient`` direction cosines), never by
  file name or ``InstanceNumber``, and refuses what is not one regular grid: slices of
  different orientations, sizes or pixel spacings, two slices at one position, irregular
  spacing or missing slices, positions that drift across the normal (gantry tilt). It refuses
  rather than resamples. Tolerance: ``max(0.01 mm, 1 % of the median slice step)``.
* The voxel -> patient affine is built from ``ImageOrientationPatient``, ``PixelSpacing`` (its
  first value is the spacing between rows, i.e. along the column direction) and the ordered
  positions, in DICOM's LPS patient frame, then turned to RAS (``LPS_TO_RAS``) for
  :class:`~modalities.medical.nifti.ArrayVolumeReader`, which reorients like the NIfTI path.
* :class:`DicomSeriesReader` decodes every slice through ``Dataset.pixel_array`` (whatever
  pixel-data plugins pydicom has installed: uncompressed, RLE, ...; a transfer syntax none of
  them decodes is refused naming the file and the transfer syntax UID) and applies
  ``RescaleSlope`` / ``RescaleIntercept`` (Hounsfield units for CT), slice by slice.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from dsod_core.errors import DataError
from modalities.formats import head
from modalities.medical.nifti import LPS_TO_RAS, ArrayVolumeReader

#: Slice-spacing tolerance: a step may differ from the median step by this many mm ...
SPACING_TOL_MM = 0.01
#: ... or by this fraction of the median step, whichever is larger (also the tolerance of a
#: step's component across the slice normal, the gantry-tilt check).
SPACING_TOL_REL = 0.01
#: Largest difference of two slices' ImageOrientationPatient direction cosines.
ORIENTATION_TOL = 1e-4

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"ct/folder#1.2.840.1"`` -> ``("ct/folder", "1.2.840.1")``; without a ``#<uid>`` tail
    (a UID: digits and dots) the spec is a plain path: ``(spec, None)``."""
    head, sep, tail = spec.rpartition("#")
    if sep and head and _UID.fullmatch(tail):
        return head, tail
    return spec, None


#: How many files :func:`claims` looks at in a folder before giving up.
CLAIM_SCAN_LIMIT = 10_000


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a file of the DICOM file format: ``DICM`` after the 128-byte
    preamble (what pydicom requires too; files without it are ignored by
    :func:`index_folder`). Never raises."""
    return head(path, 132)[128:132] == b"DICM"


def claims(path: Path) -> bool:
    """A DICOM file (:func:`is_dicom_file`), a folder holding one anywhere below it (the first
    :data:`CLAIM_SCAN_LIMIT` files, in sorted order, are looked at), or a series named
    ``folder#<SeriesInstanceUID>`` of such a folder. Never raises."""
    path = Path(path)
    folder, uid = split_spec(str(path))
    if uid is not None and not path.exists():
        path = Path(folder)
    try:
        if not path.is_dir():
            return uid is None and is_dicom_file(path)
        seen = 0
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for name in sorted(filenames):
                if is_dicom_file(Path(dirpath) / name):
                    return True
                seen += 1
                if seen >= CLAIM_SCAN_LIMIT:
                    return False
    except OSError:
        return False
    return False


@dataclass(frozen=True)
class SliceHeader:
    """What the geometry needs of one DICOM image file (kept small: a tree may hold many)."""

    path: Path
    rows: int | None
    columns: int | None
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    frames: int
    samples_per_pixel: int
    modality: str = ""
    patient: str = ""
    study: str = ""


@dataclass
class FolderIndex:
    """A walked DICOM folder tree: image headers by ``SeriesInstanceUID``, the files that are
    not DICOM (no ``DICM`` prefix), and what pydicom warned about (``"<file>: <message>"``)."""

    series: dict[str, list[SliceHeader]] = field(default_factory=dict)
    not_dicom: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reported: bool = False


class _Lines(logging.Handler):
    def __init__(self, out: list[str]):
        super().__init__(logging.DEBUG)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(one_line(record.getMessage()))


@contextmanager
def pydicom_messages() -> Iterator[list[str]]:
    """Capture pydicom's Python warnings and ``pydicom`` logger lines (warning and above)
    while the block runs, instead of printing them."""
    out: list[str] = []
    logger = logging.getLogger("pydicom")
    handler = _Lines(out)
    handler.setLevel(logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield out
            finally:
                out.extend(one_line(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _floats(ds: pydicom.Dataset, keyword: str) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        return tuple(float(v) for v in (value if isinstance(value, list | tuple) else list(value)))
    except (TypeError, ValueError):
        return None


def read_slice_header(path: Path, notes: list[str] | None = None) -> tuple[str, SliceHeader] | None:
    """``(SeriesInstanceUID, header)`` of a DICOM image file; ``None`` for a file that is not
    DICOM (no ``DICM`` prefix) or not an image. A damaged DICOM file raises :class:`DataError`
    (with pydicom's warnings); warnings of a file read well go to ``notes``."""
    try:
        with pydicom_messages() as said:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 - pydicom's parser raises many types on bad input
        extra = f"; pydicom: {'; '.join(said)}" if said else ""
        raise DataError(f"damaged DICOM file ({one_line(exc)}{extra})", path=path) from exc
    if notes is not None:
        notes.extend(f"{path.name}: {line}" for line in said)
    uid = ds.get("SeriesInstanceUID")
    if not uid or "Rows" not in ds:
        return None
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"bad image size tags ({one_line(exc)})", path=path) from exc
    return str(uid), SliceHeader(
        Path(path),
        rows,
        cols,
        _floats(ds, "ImageOrientationPatient"),
        _floats(ds, "ImagePositionPatient"),
        _floats(ds, "PixelSpacing"),
        frames,
        samples,
        str(ds.get("Modality", "") or ""),
        str(ds.get("PatientID", "") or "").strip(),
        str(ds.get("StudyInstanceUID", "") or "").strip(),
    )


def index_folder(folder: Path) -> FolderIndex:
    """Every DICOM image file under ``folder`` (recursively, in sorted order) by series UID,
    and the files that are not DICOM."""
    found_index = FolderIndex()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_dicom_file(path):
                found_index.not_dicom.append(path)
                continue
            found = read_slice_header(path, found_index.notes)
            if found is not None:
                found_index.series.setdefault(found[0], []).append(found[1])
    return found_index


def _describe(uid: str, headers: list[SliceHeader], folder: Path) -> str:
    modalities = sorted({h.modality or "?" for h in headers})
    first = headers[0].path
    shown = first.relative_to(folder) if folder in first.parents else first.name
    return f"{uid} ({'/'.join(modalities)}, {len(headers)} file(s), e.g. {shown})"


def select_series(
    folder: Path, uid: str | None, index: dict[str, list[SliceHeader]]
) -> tuple[str, list[SliceHeader]]:
    """The series ``uid`` of the folder's index (or its only series when ``uid`` is None)."""
    if not index:
        raise DataError("no DICOM image file in this folder tree", path=folder)
    if uid is None:
        if len(index) > 1:
            order = sorted(index, key=lambda u: -len(index[u]))
            shown = "; ".join(_describe(u, index[u], folder) for u in order[:3])
            more = ", ..." if len(index) > 3 else ""
            raise DataError(
                f"holds {len(index)} DICOM series: {shown}{more}; a file of another series "
                "or modality does not belong in a series folder: move it out, or select one "
                "series by writing the image path as '<folder>#<SeriesInstanceUID>'",
                path=folder,
            )
        uid = next(iter(index))
    if uid not in index:
        raise DataError(
            f"no DICOM series {uid} in this folder tree ({len(index)} series found)", path=folder
        )
    return uid, index[uid]


@dataclass
class SeriesGeometry:
    """A checked series: files in slice order, shape ``(columns, rows, slices)`` and the
    voxel ``(column, row, slice)`` -> LPS mm affine."""

    uid: str
    files: list[Path]
    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    slice_step_mm: float
    patient: str = ""
    study: str = ""


def series_geometry(folder: Path, uid: str, headers: list[SliceHeader]) -> SeriesGeometry:
    """Order and check the slices of one series (module docstring); raises :class:`DataError`
    naming the folder (or the file) and the problem."""

    def fail(why: str, path: Path = folder) -> None:
        raise DataError(f"DICOM series {uid}: {why}", path=path)

    if len(headers) < 2:
        fail(
            f"has {len(headers)} slice; a volume needs at least 2 (the slice step comes from "
            "the positions)"
        )
    first = headers[0]
    _check_slice_headers(headers, fail)
    rows, cols, spacing, row_cos, col_cos = _in_plane_axes(first, fail)
    normal = np.cross(row_cos, col_cos)
    positions = np.array([h.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    names = [headers[i].path.name for i in order]
    step, tol = _regular_step(along, names, fail)
    deltas = np.diff(positions, axis=0)
    across = np.linalg.norm(deltas - np.outer(deltas @ normal, normal), axis=1)
    if across.max() > tol:
        angle = float(np.degrees(np.arctan2(across.max(), step)))
        fail(
            f"slice positions move {across.max():.3f} mm across the slice normal per slice "
            f"(gantry tilt of about {angle:.1f} degrees); refused, not resampled"
        )
    affine = np.eye(4)
    # voxel (column c, row r, slice s): P = IPP_0 + row_cos * c * dc + col_cos * r * dr + s * d
    # with dr = PixelSpacing[0] (between rows) and dc = PixelSpacing[1] (between columns).
    affine[:3, 0] = row_cos * spacing[1]
    affine[:3, 1] = col_cos * spacing[0]
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine[:3, 3] = positions[0]
    return SeriesGeometry(
        uid,
        [headers[i].path for i in order],
        (cols, rows, len(headers)),
        affine,
        step,
        first.patient,
        first.study,
    )


def _check_slice_headers(headers: list[SliceHeader], fail: Callable[..., None]) -> None:
    """Refuse (through ``fail``) a slice that is multi-frame or not greyscale, lacks a valid
    orientation, position or pixel spacing, or differs from the first slice in size, pixel
    spacing or orientation."""
    first = headers[0]
    for h in headers:
        if h.modality != first.modality:
            fail(
                f"Modality {h.modality or '(none)'} differs from {first.modality or '(none)'} "
                f"of {first.path.name}; a series holds one modality",
                h.path,
            )
        if h.frames != 1:
            fail(f"multi-frame image ({h.frames} frames) is not supported", h.path)
        if h.samples_per_pixel != 1:
            fail(
                f"{h.samples_per_pixel} samples per pixel; a greyscale CT/MR slice is needed",
                h.path,
            )
        for name, value, n in (
            ("ImageOrientationPatient", h.orientation, 6),
            ("ImagePositionPatient", h.position, 3),
            ("PixelSpacing", h.pixel_spacing, 2),
        ):
            if value is None or len(value) != n or not np.isfinite(value).all():
                fail(f"missing or bad {name} (need {n} numbers)", h.path)
        if (h.rows, h.columns) != (first.rows, first.columns):
            fail(
                f"slice size {h.rows} x {h.columns} differs from {first.rows} x "
                f"{first.columns} of {first.path.name}",
                h.path,
            )
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=0, atol=1e-4):
            fail(
                f"PixelSpacing {list(h.pixel_spacing)} differs from "
                f"{list(first.pixel_spacing)} of {first.path.name}",
                h.path,
            )
        diff = np.abs(np.subtract(h.orientation, first.orientation)).max()
        if diff > ORIENTATION_TOL:
            fail(
                f"ImageOrientationPatient differs from that of {first.path.name}; a series "
                "needs one orientation for all slices",
                h.path,
            )


def _in_plane_axes(
    first: SliceHeader, fail: Callable[..., None]
) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, PixelSpacing, row direction, column direction)`` of the first slice,
    the directions normalised; refuses (through ``fail``) an empty size, a non-positive
    spacing or directions that are not orthonormal."""
    rows, cols = int(first.rows), int(first.columns)  # type: ignore[arg-type]
    if rows < 1 or cols < 1:
        fail(f"declares {rows} x {cols} pixels", first.path)
    spacing = np.asarray(first.pixel_spacing, dtype=np.float64)
    if (spacing <= 0).any():
        fail(f"PixelSpacing {spacing.tolist()} must be positive", first.path)
    iop = np.asarray(first.orientation, dtype=np.float64)
    row_cos, col_cos = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > 1e-3
        or abs(np.linalg.norm(col_cos) - 1) > 1e-3
        or abs(row_cos @ col_cos) > 1e-3
    ):
        fail(
            f"ImageOrientationPatient {iop.tolist()} is not two orthonormal directions", first.path
        )
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    return rows, cols, spacing, row_cos, col_cos


def _regular_step(
    along: np.ndarray, names: list[str], fail: Callable[..., None]
) -> tuple[float, float]:
    """The slice step (median, mm) of the sorted positions ``along`` the normal and its
    tolerance; refuses (through ``fail``) two slices at one position, missing slices and
    irregular spacing."""
    steps = np.diff(along)
    same = np.nonzero(steps <= SPACING_TOL_MM)[0]
    if same.size:
        i = int(same[0])
        fail(
            f"two slices at one position ({along[i]:.3f} mm along the normal: {names[i]} and "
            f"{names[i + 1]}); one series must be one acquisition"
        )
    step = float(np.median(steps))
    tol = max(SPACING_TOL_MM, SPACING_TOL_REL * step)
    bad = np.nonzero(np.abs(steps - step) > tol)[0]
    if bad.size:
        i = int(bad[0])
        gap = float(steps[i])
        ratio = gap / step
        if ratio > 1.5 and abs(ratio - round(ratio)) * step <= tol:
            fail(
                f"missing slices: a gap of {gap:.3f} mm between {names[i]} and {names[i + 1]} "
                f"({round(ratio) - 1} slice(s) of {step:.3f} mm missing); refused, not "
                "resampled"
            )
        fail(
            f"irregular slice spacing: {gap:.3f} mm between {names[i]} and {names[i + 1]}, "
            f"{step:.3f} mm elsewhere (tolerance {tol:.3f} mm); refused, not resampled"
        )
    return step, tol


def _decode(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """The pixel array and dataset of one slice; pydicom's warnings are captured, and named in
    the error when decoding fails."""
    try:
        with pydicom_messages() as said:
            ds = pydicom.dcmread(path)
            ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
            try:
                return ds.pixel_array, ds
            except Exception as exc:  # noqa: BLE001 - decoder plugins raise many types
                name = getattr(ts, "name", "")
                raise DataError(
                    f"cannot decode pixel data of transfer syntax {ts}"
                    f"{f' ({name})' if name and name != str(ts) else ''}: {one_line(exc)}",
                    path=path,
                ) from exc
    except DataError as exc:
        if said:
            raise DataError(f"{exc.reason}; pydicom: {'; '.join(said)}", path=path) from exc
        raise
    except Exception as exc:  # noqa: BLE001 - see read_slice_header
        extra = f"; pydicom: {'; '.join(said)}" if said else ""
        raise DataError(f"damaged DICOM file ({one_line(exc)}{extra})", path=path) from exc


class DicomSeriesReader(ArrayVolumeReader):
    """One checked DICOM series as canonical (RAS) slices (decoded whole by :meth:`verify`)."""

    def __init__(self, folder: Path, geometry: SeriesGeometry):
        self.geometry = geometry
        super().__init__(folder, geometry.shape, LPS_TO_RAS @ geometry.affine_lps)

    def _load(self) -> np.ndarray:
        cols, rows, _ = self.file_shape
        out = np.empty(self.file_shape, dtype=np.float32)
        for k, path in enumerate(self.geometry.files):
            arr, ds = _decode(path)
            if arr.shape != (rows, cols):
                raise DataError(
                    f"pixel data of shape {list(arr.shape)}, the series has {rows} x {cols}",
                    path=path,
                )
            try:
                slope = float(ds.get("RescaleSlope", 1.0))
                inter = float(ds.get("RescaleIntercept", 0.0))
            except (TypeError, ValueError) as exc:
                raise DataError(f"bad RescaleSlope/RescaleIntercept ({exc})", path=path) from exc
            if not (np.isfinite(slope) and np.isfinite(inter)):
                raise DataError("RescaleSlope/RescaleIntercept not finite", path=path)
            out[:, :, k] = (arr.astype(np.float64) * slope + inter).T
        return out
