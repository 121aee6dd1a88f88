"""SimpleITK reading shared by the MetaImage and NRRD formats of the ``medical`` adapter.

* :func:`native_output` captures what ITK's C++ code writes to the process's standard output
  and error (MetaIO's ``M_ReadElementsData: data not read completely``, ITK warnings): the
  lines go into our one-line :class:`~dsod_core.errors.DataError` or into the prepare report
  (``warn``), never to the terminal.
* :func:`read_info` reads one header through a named ITK ImageIO (``MetaImageIO``,
  ``NrrdImageIO``) and refuses what is not a 3D scalar volume of integers or reals. ITK's
  physical space is LPS whatever the file states (``NrrdImageIO`` turns a
  ``space: right-anterior-superior`` header into LPS itself), so the voxel -> LPS affine is
  ``origin + direction @ (spacing * v)`` for every format read here.
* :func:`load_array` decodes the volume whole, ``(x, y, z)`` index order, float32.
"""

from __future__ import annotations

import ctypes
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dsod_core.errors import DataError

#: ``warn(reason, path)``: where captured library lines that did not stop a read go.
Warn = Callable[[str, Path], None]

_SCALAR_TYPES = {
    sitk.sitkUInt8: 1,
    sitk.sitkInt8: 1,
    sitk.sitkUInt16: 2,
    sitk.sitkInt16: 2,
    sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4,
    sitk.sitkUInt64: 8,
    sitk.sitkInt64: 8,
    sitk.sitkFloat32: 4,
    sitk.sitkFloat64: 8,
}

try:  # C stdio of this process, flushed around a capture (C++ streams write through it)
    _LIBC = ctypes.CDLL(None)
except (OSError, TypeError):  # pragma: no cover - no C library to load (Windows)
    _LIBC = None


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if _LIBC is not None:
        _LIBC.fflush(None)


@contextmanager
def native_output() -> Iterator[list[str]]:
    """Capture file descriptors 1 and 2 while the block runs; the list yielded receives the
    non-empty lines written there (filled when the block ends, also when it raises)."""
    lines: list[str] = []
    _flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as tmp:
        try:
            for fd in saved:
                os.dup2(tmp.fileno(), fd)
            yield lines
        finally:
            _flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            lines.extend(" ".join(ln.split()) for ln in text.splitlines() if ln.strip())


def itk_reason(exc: BaseException, captured: list[str] | None = None) -> str:
    """The ITK message of a SimpleITK exception on one line (without the source location),
    followed by what the library printed while failing."""
    text = " ".join(str(exc).split())
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1]
        text = text.split("): ", 1)[-1]
    if captured:
        text += " [" + "; ".join(captured) + "]"
    return text


def _forward(captured: list[str], path: Path, warn: Warn | None) -> None:
    """Captured lines of a read that succeeded: one warning (ITK warnings), or dropped when
    there is no report to put them in."""
    if captured and warn is not None:
        warn("the ITK reader reported: " + "; ".join(captured), path)


def _reader(path: Path, io: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO(io)
    reader.SetFileName(str(path))
    return reader


@dataclass
class VolumeInfo:
    """Header of one volume: size ``(x, y, z)`` (ITK index order), voxel -> LPS mm affine,
    the ITK pixel type and the bytes of one voxel (all components)."""

    shape: tuple[int, int, int]
    affine_lps: np.ndarray
    pixel_id: int
    components: int
    voxel_bytes: int

    @property
    def data_bytes(self) -> int:
        """The bytes of voxel data the header declares."""
        return int(np.prod(self.shape)) * self.voxel_bytes


def read_info(path: Path, io: str, what: str, warn: Warn | None = None) -> VolumeInfo:
    """Header-only read with the ITK ImageIO ``io``; ``what`` names the format in messages.
    Raises :class:`DataError` naming the file and the problem."""
    reader = _reader(path, io)
    try:
        with native_output() as captured:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = itk_reason(exc, captured)
        raise DataError(f"cannot read {what} header: {reason}", path=path) from exc
    _forward(captured, path, warn)
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    if dim != 3:
        raise DataError(f"expected a 3D volume, the header declares {dim}D {list(size)}", path=path)
    if min(size) < 1:
        raise DataError(f"the header declares dimensions {list(size)}", path=path)
    pixel_id, components = reader.GetPixelID(), reader.GetNumberOfComponents()
    if components != 1 or pixel_id not in _SCALAR_TYPES:
        raise DataError(
            f"unsupported voxel type {sitk.GetPixelIDValueAsString(pixel_id)} with "
            f"{components} component(s) (need one integer or real)",
            path=path,
        )
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = reader.GetOrigin()
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(
            f"singular or non-finite geometry (spacing {spacing.tolist()}, direction "
            f"{direction.ravel().tolist()})",
            path=path,
        )
    shape = (size[0], size[1], size[2])
    return VolumeInfo(shape, affine, pixel_id, components, _SCALAR_TYPES[pixel_id] * components)


def load_array(path: Path, io: str, what: str, warn: Warn | None = None) -> np.ndarray:
    """The voxels of ``path`` as float32 ``[x, y, z]``; a decoding failure raises
    :class:`DataError` naming the file, with what ITK printed."""
    try:
        with native_output() as captured:
            image = _reader(path, io).Execute()
    except RuntimeError as exc:
        raise DataError(
            f"cannot read the {what} voxels (data truncated or corrupt?): "
            f"{itk_reason(exc, captured)}",
            path=path,
        ) from exc
    _forward(captured, path, warn)
    # GetArrayViewFromImage is [z, y, x]; the reader's index order is (x, y, z).
    return np.asarray(sitk.GetArrayViewFromImage(image), dtype=np.float32).transpose(2, 1, 0)


def inflated_length(data: Path, start: int, what: str = "compressed") -> int:
    """How many bytes the zlib/gzip stream of ``data`` from byte ``start`` decompresses to,
    streamed in 4 MiB steps (MetaImage ``.zraw``/``LOCAL`` and NRRD ``gzip`` data). Raises
    :class:`DataError` naming ``data`` for a corrupt stream or one that ends early."""
    import zlib

    inflate = zlib.decompressobj(47)  # zlib or gzip header
    total = 0
    try:
        with data.open("rb") as f:
            f.seek(start)
            while chunk := f.read(1 << 22):
                total += len(inflate.decompress(chunk))
                if inflate.eof:
                    break
        total += len(inflate.flush())
    except (OSError, zlib.error) as exc:
        raise DataError(f"corrupt {what} voxel data ({exc})", path=data) from exc
    if not inflate.eof:
        raise DataError(
            f"{what} voxel data ends early (stream cut after {total:,} bytes)", path=data
        )
    return total
