"""NRRD reading for the ``medical`` adapter (``.nrrd``, or a detached ``.nhdr`` header with its
``.raw``/``.raw.gz`` data file): 3D Slicer's native volume format.

Read through SimpleITK's ``NrrdImageIO`` (ITK's own NRRD reader, teem's ``NrrdIO``):
:mod:`modalities.medical.itkio` reads the header and voxels and captures what ITK prints.

* Geometry: ``space directions`` and ``space origin`` give the voxel -> world affine in the
  header's ``space``. ITK turns ``right-anterior-superior`` (RAS, 3D Slicer's) and
  ``left-posterior-superior`` (LPS) alike into its physical space, LPS, so the affine is the
  same ``origin + direction @ (spacing * v)`` in LPS as for MetaImage and DICOM, turned to RAS
  and reoriented like NIfTI. A file without ``space`` (only ``spacings``) has an identity
  direction, as ITK reads it.
* :func:`data_file` names the file a detached header points at (``data file:``), so the
  adapter can refuse one outside the dataset root; multi-file data (``LIST`` or a ``%d``
  pattern) is refused.
* :func:`check_data_size`: raw data must hold exactly the declared bytes (``sizes`` x the size
  of ``type``, after ``byte skip``), gzip data must decompress to them; longer or shorter data
  is refused naming the data file and both sizes. Other encodings (ascii, bzip2) are left to
  ITK.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head
from modalities.medical.itkio import VolumeInfo, Warn, inflated_length, load_array
from modalities.medical.itkio import read_info as itk_read_info
from modalities.medical.nifti import LPS_TO_RAS, ArrayVolumeReader

SUFFIXES = (".nrrd", ".nhdr")


def is_nrrd(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def claims(path: Path) -> bool:
    """A ``.nrrd`` / ``.nhdr`` file starting with the ``NRRD000<n>`` magic line. Reads 8
    bytes; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    magic = head(path, 8)
    return magic[:7] == b"NRRD000" and magic[7:8].isdigit()


def header_fields(path: Path) -> tuple[dict[str, str], int]:
    """The ``field: value`` lines of a NRRD header (field names lower case, ``#`` comments and
    ``key:=value`` pairs left out) and the byte offset of the data after the blank line that
    ends an attached header (the file size for a detached one)."""
    try:
        with path.open("rb") as f:
            text = f.read(1 << 16)
    except OSError as exc:
        raise DataError(f"cannot read NRRD header: {exc}", path=path) from exc
    if not text.startswith(b"NRRD000"):
        raise DataError("not a NRRD file (no NRRD000<n> magic line)", path=path)
    fields: dict[str, str] = {}
    offset = 0
    for n, raw in enumerate(text.split(b"\n")):
        offset += len(raw) + 1
        line = raw.decode("latin-1").rstrip("\r")
        if n == 0 or line.startswith("#") or ":=" in line:
            continue
        if not line.strip():
            return fields, offset
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields, min(offset, len(text))


def data_file(path: Path) -> Path:
    """The file holding the voxels: ``path`` itself (attached data), or the ``data file`` a
    detached header names (relative to the header's folder)."""
    fields, _ = header_fields(path)
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        return path
    if name.upper().startswith("LIST") or "%" in name or len(name.split()) > 1:
        raise DataError(
            f"multi-file data file {name!r} is not supported (one data file)", path=path
        )
    return path.parent / name


def read_info(path: Path, warn: Warn | None = None) -> VolumeInfo:
    """Header-only read (:func:`modalities.medical.itkio.read_info`)."""
    return itk_read_info(path, "NrrdImageIO", "NRRD", warn)


def _declared(fields: dict[str, str], info: VolumeInfo) -> str:
    dims = " x ".join(str(s) for s in info.shape)
    return f"sizes {dims} of type {fields.get('type', '?')} = {info.data_bytes:,} bytes"


def _mismatch(have: int, info: VolumeInfo, fields: dict[str, str], path: Path, how: str) -> None:
    longer = "longer" if have > info.data_bytes else "shorter"
    raise DataError(
        f"{how} {have:,} bytes of voxel data, the header {path.name} declares "
        f"{_declared(fields, info)}; {longer} than declared",
        path=data_file(path),
    )


def check_data_size(path: Path, info: VolumeInfo, *, decompress: bool) -> None:
    """Raw data: the data file's size after ``byte skip`` against the declared bytes (``byte
    skip: -1``, data at the end, is only checked for being too short). Gzip data, when
    ``decompress``: the decompressed length, streamed. Other encodings: not checked here."""
    fields, offset = header_fields(path)
    data = data_file(path)
    start = offset if data == path else 0
    encoding = fields.get("encoding", "raw").lower()
    try:
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        lines = int(fields.get("line skip", fields.get("lineskip", "0")))
    except ValueError as exc:
        raise DataError(f"bad byte skip or line skip ({exc})", path=path) from exc
    if lines:
        return  # data after some text lines: left to ITK
    if encoding == "raw":
        try:
            have = data.stat().st_size - start - max(skip, 0)
        except OSError as exc:
            raise DataError(f"cannot read the data file ({exc})", path=data) from exc
        if have < info.data_bytes or (skip != -1 and have > info.data_bytes):
            _mismatch(have, info, fields, path, "holds")
    elif encoding in ("gzip", "gz") and decompress:
        total = inflated_length(data, start, "gzip")
        if total != info.data_bytes:
            _mismatch(total, info, fields, path, "decompresses to")


class NrrdReader(ArrayVolumeReader):
    """One NRRD volume as canonical (RAS) slices (decoded whole by :meth:`verify`)."""

    def __init__(self, path: Path, warn: Warn | None = None):
        self.info = read_info(Path(path), warn)
        self.warn = warn
        super().__init__(path, self.info.shape, LPS_TO_RAS @ self.info.affine_lps)

    def _load(self) -> np.ndarray:
        check_data_size(self.path, self.info, decompress=True)
        return load_array(self.path, "NrrdImageIO", "NRRD", self.warn)
