"""MetaImage reading for the ``medical`` adapter (``.mhd`` + ``.raw``/``.zraw``, or ``.mha``).

MetaImage (MetaIO) is LUNA16's native format. It is read through SimpleITK's ``MetaImageIO``
(ITK's own MetaIO implementation: a well-kept library that reads the whole header,
``TransformMatrix``, ``Offset``, ``ElementSpacing``, ``ElementType``, ``ElementDataFile``,
``CompressedData``/``CompressedDataSize``, byte order, header sizes), rather than a hand parser.

* :func:`read_info` reads the header only (``ImageFileReader.ReadImageInformation``) and
  refuses what is not a 3D scalar volume of integers or reals; :func:`data_file` names the
  file the header points at (``ElementDataFile``), so the adapter can refuse one outside the
  dataset root.
* Geometry: ITK's physical space is LPS; the physical point of continuous index ``v`` is
  ``origin + direction @ (spacing * v)`` (``direction`` row-major from ``GetDirection``). That
  voxel -> LPS affine is turned to RAS (``LPS_TO_RAS``) for
  :class:`~modalities.medical.nifti.ArrayVolumeReader`, which reorients like the NIfTI path.
  (``AnatomicalOrientation`` is informative; ITK, like this reader, ignores it.)
* :class:`MetaImageReader` decodes the volume whole (``ImageFileReader.Execute``): a data
  file shorter than declared, or a corrupt ``.zraw`` stream, is refused naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head
from modalities.medical.nifti import LPS_TO_RAS, ArrayVolumeReader

SUFFIXES = (".mhd", ".mha")

_SCALAR_TYPES = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
    sitk.sitkFloat32,
    sitk.sitkFloat64,
}


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


def _itk_reason(exc: RuntimeError) -> str:
    """The ITK message of a SimpleITK exception, on one line (without the source location)."""
    text = " ".join(str(exc).split())
    if "ITK ERROR:" in text:
        text = text.split("ITK ERROR:", 1)[1]
        text = text.split("): ", 1)[-1]
    return text


def _reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("MetaImageIO")
    reader.SetFileName(str(path))
    return reader


@dataclass
class MetaInfo:
    """Header of one MetaImage: size ``(x, y, z)`` (ITK index order) and voxel -> LPS mm."""

    shape: tuple[int, int, int]
    affine_lps: np.ndarray


def read_info(path: Path) -> MetaInfo:
    """Header-only read; raises :class:`DataError` naming the file and the problem."""
    reader = _reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"cannot read MetaImage header: {_itk_reason(exc)}", path=path) from exc
    dim = reader.GetDimension()
    size = tuple(int(s) for s in reader.GetSize())
    if dim != 3:
        raise DataError(f"expected a 3D volume, the header declares {dim}D {list(size)}", path=path)
    if min(size) < 1:
        raise DataError(f"the header declares dimensions {list(size)}", path=path)
    if reader.GetNumberOfComponents() != 1 or reader.GetPixelID() not in _SCALAR_TYPES:
        raise DataError(
            f"unsupported voxel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())} with "
            f"{reader.GetNumberOfComponents()} component(s) (need one integer or real)",
            path=path,
        )
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = reader.GetOrigin()
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(
            f"singular or non-finite geometry (ElementSpacing {spacing.tolist()}, "
            f"TransformMatrix {direction.ravel().tolist()})",
            path=path,
        )
    return MetaInfo((size[0], size[1], size[2]), affine)


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


class MetaImageReader(ArrayVolumeReader):
    """One MetaImage volume as canonical (RAS) slices (decoded whole by :meth:`verify`)."""

    def __init__(self, path: Path):
        info = read_info(Path(path))
        super().__init__(path, info.shape, LPS_TO_RAS @ info.affine_lps)

    def _load(self) -> np.ndarray:
        try:
            image = _reader(self.path).Execute()
        except RuntimeError as exc:
            raise DataError(
                f"cannot read the MetaImage voxels (data file truncated or corrupt?): "
                f"{_itk_reason(exc)}",
                path=self.path,
            ) from exc
        # GetArrayViewFromImage is [z, y, x]; the reader's index order is (x, y, z).
        return np.asarray(sitk.GetArrayViewFromImage(image), dtype=np.float32).transpose(2, 1, 0)
