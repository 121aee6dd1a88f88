"""MetaImage reading for the ``medical`` adapter (``.mhd`` + ``.raw``/``.zraw``, or ``.mha``).

MetaImage (MetaIO) is LUNA16's native format. It is read through SimpleITK's ``MetaImageIO``
(ITK's own MetaIO implementation: a well-kept library that reads the whole header,
``TransformMatrix``, ``Offset``, ``ElementSpacing``, ``ElementType``, ``ElementDataFile``,
``CompressedData``/``CompressedDataSize``, byte order, header sizes), rather than a hand parser
(:mod:`modalities.medical.itkio`: header, voxels, and ITK's printed lines captured).

* :func:`read_info` reads the header only and refuses what is not a 3D scalar volume of
  integers or reals; :func:`data_file` names the file the header points at
  (``ElementDataFile``), so the adapter can refuse one outside the dataset root.
* :func:`check_data_size`: the voxel bytes the header declares (``DimSize`` x
  ``ElementNumberOfChannels`` x the size of ``ElementType``) against the data: the ``.raw``
  file's size (less ``HeaderSize``) at discovery, the decompressed length of a ``.zraw``
  stream when the volume is read. Longer or shorter data is refused naming the data file and
  both sizes (MetaIO itself reads a file that is too long silently, sheared).
* Geometry: ITK's physical space is LPS; the physical point of continuous index ``v`` is
  ``origin + direction @ (spacing * v)``. That voxel -> LPS affine is turned to RAS
  (``LPS_TO_RAS``) for :class:`~modalities.medical.nifti.ArrayVolumeReader`, which reorients
  like the NIfTI path. (``AnatomicalOrientation`` is informative; ITK, like this reader,
  ignores it.)
* :class:`MetaImageReader` decodes the volume whole (``ImageFileReader.Execute``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head
from modalities.medical.itkio import VolumeInfo, Warn, inflated_length, load_array
from modalities.medical.itkio import read_info as itk_read_info
from modalities.medical.nifti import LPS_TO_RAS, ArrayVolumeReader

SUFFIXES = (".mhd", ".mha")


def is_metaimage(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


#: Keys a MetaIO header may open with (its first ``Key = value`` line).
_HEADER_KEYS = {
    "objecttype", "objectsubtype", "ndims", "comment", "transformtype", "name", "id",
    "parentid", "compresseddata", "binarydata", "binarydatabyteordermsb", "elementbyteordermsb",
    "dimsize", "elementtype", "elementspacing", "offset", "transformmatrix", "headersize",
}  # fmt: skip


def claims(path: Path) -> bool:
    """A ``.mhd`` / ``.mha`` file whose first line is a MetaIO ``Key = value`` header line
    (``ObjectType = Image``, ``NDims = 3``, ...). Reads the first bytes only; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    text = head(path, 512).decode("latin-1").lstrip()
    key, sep, _ = text.partition("\n")[0].partition("=")
    return bool(sep) and key.strip().lower() in _HEADER_KEYS


def read_info(path: Path, warn: Warn | None = None) -> VolumeInfo:
    """Header-only read (:func:`modalities.medical.itkio.read_info`); raises
    :class:`DataError` naming the file and the problem."""
    return itk_read_info(path, "MetaImageIO", "MetaImage", warn)


def data_file(path: Path) -> Path:
    """The file the header's ``ElementDataFile`` names (``path`` itself for ``LOCAL``).

    MetaIO headers are ``Key = Value`` text lines ending with ``ElementDataFile``; only that
    one key is looked up here (the rest is SimpleITK's), to check where the voxels come from.
    Multi-file data (``LIST`` or a ``%d`` pattern) is refused."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise DataError(f"cannot read MetaImage header: {exc}", path=path) from exc
    for raw in head.split(b"\n"):
        key, sep, value = raw.decode("latin-1").partition("=")
        if sep and key.strip() == "ElementDataFile":
            name = value.strip()
            if name.upper() == "LOCAL":
                return path
            if name.upper().startswith("LIST") or "%" in name:
                raise DataError(
                    f"multi-file ElementDataFile {name!r} is not supported (one data file)",
                    path=path,
                )
            return path.parent / name
    raise DataError("the MetaImage header has no ElementDataFile", path=path)


def header_fields(path: Path) -> tuple[dict[str, str], int]:
    """The ``Key = Value`` lines of a MetaIO header up to ``ElementDataFile`` (keys as
    written) and the byte offset just after that line (where ``LOCAL`` data starts)."""
    try:
        with path.open("rb") as f:
            text = f.read(1 << 16)
    except OSError as exc:
        raise DataError(f"cannot read MetaImage header: {exc}", path=path) from exc
    fields: dict[str, str] = {}
    offset = 0
    for raw in text.split(b"\n"):
        offset += len(raw) + 1
        key, sep, value = raw.decode("latin-1").partition("=")
        if sep:
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                return fields, offset
    raise DataError("the MetaImage header has no ElementDataFile", path=path)


def _declared(fields: dict[str, str], info: VolumeInfo) -> str:
    dims = " x ".join(str(s) for s in info.shape)
    channels = fields.get("ElementNumberOfChannels", "1")
    return (
        f"DimSize {dims} x {channels} channel(s) of {fields.get('ElementType', '?')} = "
        f"{info.data_bytes:,} bytes"
    )


def _is_compressed(fields: dict[str, str]) -> bool:
    return fields.get("CompressedData", "False").strip().lower() == "true"


def check_data_size(path: Path, info: VolumeInfo) -> None:
    """Uncompressed data: the data file's size (after ``HeaderSize``; ``LOCAL`` data after
    the header) must be what the header declares, both ways. ``HeaderSize = -1`` (data at the
    end of the file) can only be checked for being too short. Compressed data is checked
    when read (:func:`check_compressed`)."""
    fields, offset = header_fields(path)
    if _is_compressed(fields):
        return
    data = data_file(path)
    start = offset if data == path else 0
    try:
        skip = int(fields.get("HeaderSize", "0"))
        size = data.stat().st_size
    except (ValueError, OSError) as exc:
        raise DataError(f"bad HeaderSize or unreadable data file ({exc})", path=path) from exc
    have = size - start - max(skip, 0)
    if have < info.data_bytes or (skip != -1 and have > info.data_bytes):
        where = "after its header" if data == path else f"(the data file of {path.name})"
        raise DataError(
            f"holds {have:,} bytes of voxel data {where}, the header declares "
            f"{_declared(fields, info)}; {'shorter' if have < info.data_bytes else 'longer'} "
            "than declared (DimSize, ElementType or ElementNumberOfChannels disagree with the "
            "data)",
            path=data,
        )


def check_compressed(path: Path, info: VolumeInfo) -> None:
    """A compressed (``.zraw`` or ``LOCAL``) zlib/gzip stream must decompress to exactly the
    declared bytes; streamed in 4 MiB steps."""
    fields, offset = header_fields(path)
    if not _is_compressed(fields):
        return
    data = data_file(path)
    try:
        total = inflated_length(data, offset if data == path else 0)
    except DataError as exc:
        raise DataError(
            f"{exc.reason} (the header declares {_declared(fields, info)})", path=data
        ) from None
    if total != info.data_bytes:
        raise DataError(
            f"decompresses to {total:,} bytes of voxel data, the header declares "
            f"{_declared(fields, info)}; {'shorter' if total < info.data_bytes else 'longer'} "
            "than declared",
            path=data,
        )


class MetaImageReader(ArrayVolumeReader):
    """One MetaImage volume as canonical (RAS) slices (decoded whole by :meth:`verify`)."""

    def __init__(self, path: Path, warn: Warn | None = None):
        self.info = read_info(Path(path), warn)
        self.warn = warn
        super().__init__(path, self.info.shape, LPS_TO_RAS @ self.info.affine_lps)

    def _load(self) -> np.ndarray:
        check_data_size(self.path, self.info)
        check_compressed(self.path, self.info)
        return load_array(self.path, "MetaImageIO", "MetaImage", self.warn)
