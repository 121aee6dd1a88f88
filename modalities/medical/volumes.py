"""Opening a volume as the annotations name it, for the ``medical`` adapter.

The reader is chosen by how the volume is written: ``folder#<SeriesInstanceUID>`` or a folder
tree is a DICOM series (:mod:`modalities.medical.dicom`), a ``.mhd``/``.mha`` file a MetaImage
(:mod:`modalities.medical.metaimage`), a ``.nrrd``/``.nhdr`` file NRRD
(:mod:`modalities.medical.nrrd`), any other file NIfTI (:mod:`modalities.medical.nifti`).
:func:`locate_volume` checks the header only (no voxels) and returns the ``meta`` that
:func:`open_volume` needs later. A DICOM folder's series index (headers only) is cached in a
:data:`DicomIndex` the caller owns, so a tree holding many series that the annotations name
one by one is walked once. :func:`slice_grid`, :func:`prepare_slice` and :func:`mri_range` turn
an open volume (any format) into stored slice images.

The adapter's checks are passed in explicitly: ``resolve(relative, referenced_from)`` (refuse a
path escaping the dataset root, :meth:`~modalities.base.ModalityAdapter.resolve_inside_root`),
``check_size(path, shape)`` (refuse a declared size over ``max_voxels``), and a
:class:`Policy`: what to do with files of a DICOM folder that are not DICOM, and where
warnings go (the prepare log).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dsod_core.data.sample import NativeImage
from dsod_core.errors import DataError
from modalities.formats import has_suffix
from modalities.medical import dicom, metaimage, nrrd
from modalities.medical.itkio import Warn
from modalities.medical.nifti import (
    ArrayVolumeReader,
    SliceReader,
    check_header,
    declared_shape,
    load_header,
)

# Percentiles of an MRI volume are computed on at most this many voxels (a regular in-plane
# stride over every slice), so the statistics never need the whole volume in memory.
_MRI_STAT_VOXELS = 2_000_000

#: DICOM folder -> its index (series by ``SeriesInstanceUID``, files that are not DICOM).
DicomIndex = dict[Path, dicom.FolderIndex]
#: ``check_size(path, shape)``: raise :class:`DataError` when ``shape`` is too large.
CheckSize = Callable[[Path, tuple[int, ...]], None]
#: ``resolve(relative, referenced_from)``: the path inside the dataset root.
Resolve = Callable[[str | Path, Path], Path]


def check_nifti_header(image: Path, check_size: CheckSize) -> None:
    """Header-only checks of one NIfTI volume, before any voxel work."""
    img = load_header(image)
    check_size(image, declared_shape(img, image))
    check_header(img, image)


@dataclass(frozen=True)
class Policy:
    """``stray``: files of a DICOM folder without the DICM prefix refuse the series
    (``error``, naming the first) or are left out with one warning per folder (``skip``);
    ``warn(reason, path)``: where warnings go (None: nowhere)."""

    stray: str = "error"
    warn: Warn | None = None


def _stray_files(folder: Path, found: dicom.FolderIndex, policy: Policy) -> None:
    """Apply ``policy`` to the files of ``folder`` that are not DICOM, and hand pydicom's
    captured warnings to the report, once per folder."""
    strays = found.not_dicom
    if strays and policy.stray == "error":
        more = f" (and {len(strays) - 1} other such file(s) in {folder})" if len(strays) > 1 else ""
        raise DataError(
            f"not a DICOM file (no DICM prefix){more}; a DICOM series folder holds the series' "
            "files only: move it out, or set the adapter param dicom_stray_files: skip to leave "
            "such files out with a warning",
            path=strays[0],
        )
    if found.reported or policy.warn is None:
        return
    found.reported = True
    if strays:
        names = ", ".join(str(p.relative_to(folder)) for p in strays[:5])
        policy.warn(
            f"{len(strays)} file(s) that are not DICOM left out of the DICOM folder "
            f"(dicom_stray_files: skip): {names}{', ...' if len(strays) > 5 else ''}",
            folder,
        )
    if found.notes:
        shown = "; ".join(found.notes[:5])
        policy.warn(f"pydicom warned {len(found.notes)} time(s): {shown}", folder)


def dicom_geometry(
    folder: Path,
    uid: str | None,
    index: DicomIndex,
    check_size: CheckSize,
    policy: Policy = Policy(),
) -> dicom.SeriesGeometry:
    """The checked geometry of one series of a DICOM folder (headers only, the folder indexed
    once into ``index``), with the declared size checked by ``check_size`` first."""
    if folder not in index:
        index[folder] = dicom.index_folder(folder)
    _stray_files(folder, index[folder], policy)
    uid, headers = dicom.select_series(folder, uid, index[folder].series)
    first = headers[0]
    check_size(folder, (first.columns or 0, first.rows or 0, len(headers)))
    return dicom.series_geometry(folder, uid, headers)


def locate_volume(
    spec: str,
    referenced_from: Path,
    not_found: str,
    *,
    resolve: Resolve,
    check_size: CheckSize,
    index: DicomIndex,
    policy: Policy = Policy(),
) -> tuple[Path, dict[str, Any]]:
    """Resolve a volume as the annotations write it and check its header (no voxels).

    ``spec`` is a NIfTI file, a MetaImage (``.mhd``/``.mha``), a NRRD (``.nrrd``/``.nhdr``), a
    DICOM folder tree (holding one series) or ``folder#<SeriesInstanceUID>``. Returns the path
    and the ``meta`` that :func:`open_volume` needs to open it; ``not_found`` is the message
    when the path does not exist."""
    rel, uid = dicom.split_spec(spec)
    path = resolve(rel, referenced_from)
    if uid is not None or path.is_dir():
        if not path.is_dir():
            raise DataError(not_found, path=referenced_from)
        geometry = dicom_geometry(path, uid, index, check_size, policy)
        meta = {"format": "dicom", "dicom_series": geometry.uid}
        if geometry.patient:
            meta["patient_id"] = geometry.patient
        if geometry.study:
            meta["study_uid"] = geometry.study
        return path, meta
    if not path.is_file():
        raise DataError(not_found, path=referenced_from)
    for fmt, module, key in (
        ("metaimage", metaimage, "ElementDataFile"),
        ("nrrd", nrrd, "data file"),
    ):
        if has_suffix(path, module.SUFFIXES):
            info = module.read_info(path, policy.warn)
            check_size(path, info.shape)
            data = module.data_file(path)
            resolve(data, path)
            if not data.is_file():
                raise DataError(f"its {key} {data.name!r} is not found", path=path)
            if fmt == "metaimage":
                metaimage.check_data_size(path, info)
            else:
                nrrd.check_data_size(path, info, decompress=False)
            return path, {"format": fmt}
    check_nifti_header(path, check_size)
    return path, {"format": "nifti"}


def open_volume(
    path: Path,
    meta: dict[str, Any],
    *,
    index: DicomIndex,
    check_size: CheckSize,
    policy: Policy = Policy(),
) -> SliceReader | ArrayVolumeReader:
    """The reader of a volume located by :func:`locate_volume` (``meta`` its result)."""
    fmt = meta.get("format", "nifti")
    if fmt == "dicom":
        geometry = dicom_geometry(path, meta["dicom_series"], index, check_size, policy)
        return dicom.DicomSeriesReader(path, geometry)
    if fmt == "metaimage":
        return metaimage.MetaImageReader(path, policy.warn)
    if fmt == "nrrd":
        return nrrd.NrrdReader(path, policy.warn)
    return SliceReader(path)


def slice_grid(
    reader: SliceReader | ArrayVolumeReader, target_spacing: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored slice size ``(W, H)``, the scale (input voxels per stored pixel) and the
    ``(x, y, z=k) -> RAS mm`` affine of the stored slices, resampled in-plane to
    ``target_spacing`` mm (``None``: not resampled)."""
    n_i, n_j, _ = reader.shape
    # In-plane resampling: output pixel edges aligned with input voxel edges, so stored
    # pixel x covers input voxels [x*s, (x+1)*s).
    if target_spacing is not None:
        out_ij = np.maximum(
            1, np.round(np.array([n_i, n_j]) * reader.spacing[:2] / target_spacing)
        ).astype(int)
    else:
        out_ij = np.array([n_i, n_j])
    scale = np.array([n_i, n_j]) / out_ij  # input voxels per stored pixel
    pix = np.eye(4)
    pix[0, 0], pix[1, 1] = scale
    pix[:2, 3] = -0.5
    return out_ij, scale, reader.affine @ pix  # (x, y, z=k) -> RAS mm


def prepare_slice(canonical: np.ndarray, out_ij: np.ndarray) -> np.ndarray:
    """Canonical ``[n_i, n_j]`` -> stored ``[H=n_j', W=n_i']``, resampled if asked."""
    img = canonical.T
    if (img.shape[1], img.shape[0]) != (int(out_ij[0]), int(out_ij[1])):
        zoom = (out_ij[1] / img.shape[0], out_ij[0] / img.shape[1])
        # grid_mode: pixel edges (not centres) align, matching the continuous pixel
        # coordinates of the boxes and the affine.
        img = ndimage.zoom(img, zoom, order=1, grid_mode=True, mode="nearest")
    return img


def mri_range(
    reader: SliceReader | ArrayVolumeReader, percentiles: Sequence[float]
) -> tuple[float, float]:
    """The ``percentiles`` (low, high) of a volume's voxels, on a regular in-plane stride of at
    most ``_MRI_STAT_VOXELS`` voxels over every slice."""
    n_i, n_j, n_k = reader.shape
    stride = max(1, int(math.ceil(math.sqrt(n_i * n_j * n_k / _MRI_STAT_VOXELS))))
    values = np.concatenate([reader.slice(k)[::stride, ::stride].ravel() for k in reader.order()])
    lo, hi = np.percentile(values, percentiles)
    if not hi > lo:
        hi = lo + 1.0  # a constant volume: keep the map finite
    return float(lo), float(hi)


def native_slices(slices: list[np.ndarray], windows, mri_range) -> NativeImage | None:
    """The slices' whole-number intensities (CT HU, MRI values) as int16/uint16 codes with
    each channel's window (``Sample.native``), channels in the adapter's order (window-major,
    then context slices); None when they are not whole numbers of 16 bits (resampled, float
    sources). The store keeps them only if they reproduce the image exactly."""
    bounds = [(w[1], w[2]) for w in windows] or [mri_range]
    stack = np.stack([s for _ in bounds for s in slices])
    lo = np.repeat([float(b[0]) for b in bounds], len(slices))
    hi = np.repeat([float(b[1]) for b in bounds], len(slices))
    for dtype in (np.int16, np.uint16):
        info = np.iinfo(dtype)
        if info.min <= stack.min() and stack.max() <= info.max:
            codes = stack.astype(dtype)
            if np.array_equal(codes, stack):
                return NativeImage(codes, low=lo, high=hi, shift=lo, divisor=hi - lo)
    return None
