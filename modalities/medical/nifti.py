"""NIfTI reading for the ``medical`` adapter: header checks, full-integrity check, RAS slices.

* :func:`load_header` opens a ``.nii`` / ``.nii.gz`` lazily (nibabel reads the header only) and
  :func:`declared_shape` returns the dimensions it declares, refusing non-positive ones, so
  the adapter can check the declared size before any voxel is touched.
* :func:`check_header` refuses what cannot be a 3D scan (2D or multi-frame images, a singular
  or non-finite affine, voxel types other than integers and reals).
* :class:`SliceReader` reorients to the closest canonical orientation, RAS
  (``nibabel.orientations.io_orientation``), and returns one canonical axial slice at a time
  through ``img.dataobj`` (memory-mapped for ``.nii``; for ``.nii.gz`` the stream is kept open
  and slices are read in increasing file order, so a pass decompresses the volume once).
* :meth:`SliceReader.verify` reads the whole file once, in bounded chunks, before any slice of
  it is used: a ``.nii.gz`` must decompress to its end-of-stream marker with a matching CRC and
  length, the data must cover ``vox_offset + prod(shape) * itemsize`` bytes, and every voxel
  must stay finite after the header's scaling. A volume damaged anywhere is refused whole.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation
from nibabel.spatialimages import HeaderDataError

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head

READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
    gzip.BadGzipFile,
)

# Bytes decompressed / read per step of the integrity check (bounded memory).
_CHUNK_BYTES = 1 << 22
_F32_MAX = float(np.finfo(np.float32).max)


#: File-name suffixes of NIfTI volumes.
SUFFIXES = (".nii", ".nii.gz")
#: ``sizeof_hdr``, the first field of a NIfTI header: 348 (NIfTI-1) or 540 (NIfTI-2).
_HEADER_SIZES = (348, 540)


def claims(path: Path) -> bool:
    """A ``.nii`` / ``.nii.gz`` file whose first header field (``sizeof_hdr``, either byte
    order; decompressed for ``.nii.gz``) is 348 or 540. Reads 4 bytes; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    if has_suffix(path, (".nii.gz",)):
        try:
            with gzip.open(path, "rb") as fh:
                first = fh.read(4)
        except (OSError, EOFError, zlib.error):
            return False
    else:
        first = head(path, 4)
    if len(first) < 4:
        return False
    return any(int.from_bytes(first, order) in _HEADER_SIZES for order in ("little", "big"))


def load_header(path: Path) -> Any:
    """The nibabel image of ``path``, header only (the voxels stay on disk)."""
    try:
        img = nib.load(str(path))
    except READ_ERRORS as exc:
        raise DataError(f"cannot read NIfTI header: {exc}", path=path) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"not a NIfTI image ({type(img).__name__})", path=path)
    return img


def declared_shape(img: Any, path: Path) -> tuple[int, ...]:
    """The dimensions the header declares; refuses zero or negative ones."""
    shape = tuple(int(s) for s in img.header.get_data_shape())
    if not shape or min(shape) < 1:
        raise DataError(
            f"the header declares dimensions {list(shape)}; every dimension must be >= 1",
            path=path,
        )
    return shape


def check_header(img: Any, path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(file shape (3 axes), file voxel -> RAS mm affine)``; refuses what is not a 3D scan."""
    shape = declared_shape(img, path)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DataError(f"expected a 3D volume, got an image of shape {shape}", path=path)
    dtype = np.dtype(img.header.get_data_dtype())
    if dtype.kind not in "iuf":
        raise DataError(f"unsupported voxel type {dtype} (need integers or reals)", path=path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError("the NIfTI affine is singular or not finite", path=path)
    return (shape[0], shape[1], shape[2]), affine


def _read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``f``; returns the bytes read (fewer only at the end of the data)."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _values_need_check(dtype: np.dtype, slope: float, inter: float) -> bool:
    """Whether stored voxels of ``dtype`` may be non-finite (float) or overflow float32 after
    the header's scaling, so each one must be checked."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return max(abs(int(info.min)), int(info.max)) * abs(slope) + abs(inter) > _F32_MAX


class SliceReader:
    """Canonical (RAS) axial slices of one NIfTI file, read lazily.

    ``slice(k)`` returns float32 ``[n_i, n_j]`` of canonical slice ``k``; the file is touched
    only through ``dataobj`` slabs of one slice (and by :meth:`verify`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            # keep_file_open: a .nii.gz stream stays open, so reading slices in file order
            # decompresses the volume once instead of once per slice.
            self.img = nib.load(str(path), keep_file_open=True)
        except READ_ERRORS as exc:
            raise DataError(f"cannot read NIfTI header: {exc}", path=path) from exc
        if not isinstance(self.img, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"not a NIfTI image ({type(self.img).__name__})", path=path)
        shape, affine = check_header(self.img, self.path)
        self.file_shape = shape
        self.ornt = io_orientation(affine)
        # canonical voxel -> RAS mm
        self.affine = affine @ inv_ornt_aff(self.ornt, shape)
        self.shape = tuple(shape[int(np.nonzero(self.ornt[:, 0] == ax)[0][0])] for ax in range(3))
        self.spacing = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self._s_axis = int(np.nonzero(self.ornt[:, 0] == 2)[0][0])
        self._s_flip = self.ornt[self._s_axis, 1] < 0
        self._ndim = len(self.img.shape)

    def file_index(self, k: int) -> int:
        """Index along the file's slice axis of canonical slice ``k`` (and the reverse)."""
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
        except READ_ERRORS as exc:
            raise DataError(
                f"cannot read slice {k} (file truncated or corrupt?): {exc}", path=self.path
            ) from exc
        out = apply_orientation(slab, self.ornt)[:, :, 0]
        if not np.isfinite(out).all():
            raise DataError(f"slice {k} holds NaN or infinite values", path=self.path)
        return out

    # --- the full-integrity check ---------------------------------------------------------
    def verify(self) -> None:
        """Read the whole file once (bounded chunks) and refuse it when it is damaged anywhere:
        a truncated or corrupt gzip stream, data shorter than the header declares, or a voxel
        that is NaN/inf (or overflows float32 after the header's scaling)."""
        proxy = self.img.dataobj
        dtype = np.dtype(proxy.dtype)
        shape = tuple(int(s) for s in proxy.shape)
        offset = int(proxy.offset)
        n_items = math.prod(shape)
        need = offset + n_items * dtype.itemsize
        slope, inter = self._finite_scaling(proxy)
        check_values = _values_need_check(dtype, slope, inter)
        compressed = self.path.name.lower().endswith(".gz")
        if not compressed:
            size = os.path.getsize(self.path)
            if size < need:
                raise self._truncated(size, need, offset, n_items, dtype.itemsize)
            if not check_values:
                return
        pos = 0
        chunk_items = max(1, _CHUNK_BYTES // dtype.itemsize)
        buf = bytearray(chunk_items * dtype.itemsize)
        try:
            with gzip.open(self.path, "rb") if compressed else open(self.path, "rb") as f:
                # the header and extensions up to vox_offset
                while pos < offset:
                    got = _read_full(f, memoryview(buf)[: min(len(buf), offset - pos)])
                    if not got:
                        break
                    pos += got
                done = 0
                while pos >= offset and done < n_items:
                    want = min(chunk_items, n_items - done) * dtype.itemsize
                    got = _read_full(f, memoryview(buf)[:want])
                    pos += got
                    if got < want:
                        break
                    if check_values:
                        self._check_values(
                            np.frombuffer(buf, dtype, want // dtype.itemsize),
                            done,
                            shape,
                            slope,
                            inter,
                        )
                    done += want // dtype.itemsize
                if pos < need:
                    raise self._truncated(pos, need, offset, n_items, dtype.itemsize)
                if compressed:  # the rest, so the gzip trailer (CRC, length) is checked
                    while f.readinto(buf):  # type: ignore[attr-defined]
                        pass
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
            raise DataError(
                f"truncated or corrupt gzip stream ({exc}); decompressed {pos:,} bytes, the "
                f"header declares {need:,}",
                path=self.path,
            ) from exc

    def _finite_scaling(self, proxy: Any) -> tuple[float, float]:
        """The header's ``(slope, intercept)`` (1 and 0 when unset); refuses non-finite ones."""
        slope = 1.0 if proxy.slope is None else float(proxy.slope)
        inter = 0.0 if proxy.inter is None else float(proxy.inter)
        if not (math.isfinite(slope) and math.isfinite(inter)):
            raise DataError(
                f"the header's scaling (slope {slope}, intercept {inter}) is not finite",
                path=self.path,
            )
        return slope, inter

    def _truncated(
        self, end: int, need: int, offset: int, n_items: int, itemsize: int
    ) -> DataError:
        """The error for data that ends at byte ``end`` before the ``need`` bytes declared."""
        return DataError(
            f"data ends at byte {end:,}, header declares {need:,} "
            f"({offset:,} + {n_items:,} voxels x {itemsize} bytes; file truncated?)",
            path=self.path,
        )

    def _check_values(
        self, arr: np.ndarray, start: int, shape: tuple[int, ...], slope: float, inter: float
    ) -> None:
        bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
        what = "holds NaN or infinite values"
        if not bad.any():
            lo, hi = float(arr.min()), float(arr.max())
            if max(abs(lo), abs(hi)) * abs(slope) + abs(inter) <= _F32_MAX:
                return
            bad = np.abs(arr.astype(np.float64)) * abs(slope) + abs(inter) > _F32_MAX
            what = "holds values beyond float32 after the header's scaling"
        first = start + int(np.argmax(bad))
        voxel = [int(v) for v in np.unravel_index(first, shape, order="F")]
        k = self.file_index(voxel[self._s_axis])
        raise DataError(f"slice {k} {what} (first at file voxel {voxel})", path=self.path)

    def close(self) -> None:
        # Drop the proxy so the kept-open file handle is released now, not at GC time.
        self.img = None  # type: ignore[assignment]


# --- volumes read whole (DICOM series, MetaImage) ------------------------------------------
#: LPS <-> RAS: the patient frame of DICOM and ITK (x to the patient's left, y to posterior)
#: and nibabel's (x to the right, y to anterior) differ by the sign of x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ArrayVolumeReader:
    """The :class:`SliceReader` interface over a volume decoded whole (DICOM, MetaImage).

    ``shape`` is the volume's voxel grid ``(n_i, n_j, n_k)`` in its own index order and
    ``affine_ras`` its voxel -> RAS mm affine; the volume is reoriented to the closest
    canonical orientation (RAS) exactly as :class:`SliceReader` does for NIfTI
    (``io_orientation`` + ``inv_ornt_aff``), so the adapter sees one convention for all
    formats. Subclasses implement :meth:`_load`, returning the voxels ``[n_i, n_j, n_k]``
    (float32, HU for CT); :meth:`verify` calls it once and checks every voxel is finite."""

    def __init__(self, path: Path, shape: tuple[int, int, int], affine_ras: np.ndarray):
        self.path = Path(path)
        affine_ras = np.asarray(affine_ras, dtype=np.float64)
        if not np.isfinite(affine_ras).all() or abs(np.linalg.det(affine_ras[:3, :3])) < 1e-9:
            raise DataError("the voxel -> world affine is singular or not finite", path=path)
        self.file_shape = tuple(int(s) for s in shape)
        self.ornt = io_orientation(affine_ras)
        self.affine = affine_ras @ inv_ornt_aff(self.ornt, self.file_shape)
        self.shape = tuple(
            self.file_shape[int(np.nonzero(self.ornt[:, 0] == ax)[0][0])] for ax in range(3)
        )
        self.spacing = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        self._data: np.ndarray | None = None

    def _load(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def verify(self) -> None:
        """Decode the whole volume (every file of it) and refuse NaN or infinite voxels."""
        data = np.asarray(self._load(), dtype=np.float32)
        if data.shape != self.file_shape:
            raise DataError(
                f"decoded voxels have shape {list(data.shape)}, the header declares "
                f"{list(self.file_shape)}",
                path=self.path,
            )
        if not np.isfinite(data).all():
            raise DataError("the volume holds NaN or infinite values", path=self.path)
        self._data = apply_orientation(data, self.ornt)

    def order(self) -> list[int]:
        return list(range(self.shape[2]))

    def slice(self, k: int) -> np.ndarray:
        if self._data is None:
            self.verify()
        assert self._data is not None
        return np.ascontiguousarray(self._data[:, :, k])

    def close(self) -> None:
        self._data = None
