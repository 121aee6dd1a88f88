"""GeoTIFF in: opening rasters, resolving bands, no-data masks, windowed reads, statistics.

Everything here goes through rasterio (GDAL). Header facts are gathered once per raster into a
:class:`RasterInfo`; pixels are only ever read by window (a chip, a block row of the integrity
pass) or decimated (``out_shape``, for the statistics), so memory stays bounded whatever the
raster's size. Every GDAL failure becomes a :class:`DataError` naming the raster and carrying
GDAL's own message.

Pixel-only rasters (a PNG, JPEG or TIFF without a CRS, as DOTA and many image datasets ship)
are read when the labels are in pixels (every label format but ``geojson``): their
:class:`RasterInfo` has ``crs`` None and the identity transform, and every output of theirs is
in pixels. GDAL's warnings (rasterio's ``NotGeoreferencedWarning``, ``CPLE_*`` messages it logs)
are captured by :func:`capture_gdal`, never printed: the adapter puts them in the prepare
report.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats import has_suffix, head
from modalities.multispectral.params import DERIVED

if TYPE_CHECKING:
    from modalities.multispectral.adapter import MultispectralAdapter

_EPS = 1e-6
# Bytes one read of the integrity pass may hold (all bands of a few block rows).
_VERIFY_BYTES = 64 << 20


#: File-name suffixes of the raster files the adapter opens through GDAL.
SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# The first bytes of each: TIFF and BigTIFF (both byte orders), JPEG 2000 (JP2 box or raw
# codestream), a GDAL VRT (XML), an ERDAS Imagine file.
_MAGIC = {
    ".tif": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    ".jp2": (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"),
    ".vrt": (b"<VRTDataset",),
    ".img": (b"EHFA_HEADER_TAG",),
}
_MAGIC[".tiff"] = _MAGIC[".tif"]
#: Image files read as pixel-only rasters (no CRS) when the labels are in pixels.
PIXEL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_PIXEL_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",)}
_PIXEL_MAGIC[".jpeg"] = _PIXEL_MAGIC[".jpg"]
_PIXEL_MAGIC.update({".tif": _MAGIC[".tif"], ".tiff": _MAGIC[".tif"]})


def claims(path: Path) -> bool:
    """A raster file GDAL opens for this adapter: a ``.tif``/``.tiff``/``.vrt``/``.jp2``/
    ``.img`` name whose first bytes are those of that format (TIFF byte-order mark, JPEG 2000
    signature, ``<VRTDataset``, ERDAS header). Georeferencing is not looked at here (a raster
    without one is refused, with the reason, when it is opened). Never raises."""
    suffix = Path(path).suffix.lower()
    if suffix not in _MAGIC or not has_suffix(path, SUFFIXES):
        return False
    start = head(path, 64)
    if suffix == ".vrt":
        start = start.lstrip(b"\xef\xbb\xbf \t\r\n")
    return start.startswith(_MAGIC[suffix])


def claims_image(path: Path) -> bool:
    """A PNG, JPEG or TIFF file by its name and first bytes: what a folder given to ``dsod
    detect`` holds when the model reads pixel-only rasters. Not a claim of the modality (an
    RGB photo is the rgb modality's). Never raises."""
    suffix = Path(path).suffix.lower()
    return suffix in _PIXEL_MAGIC and head(path, 16).startswith(_PIXEL_MAGIC[suffix])


class _Notes(logging.Handler):
    def __init__(self, out: list[str]):
        super().__init__(logging.WARNING)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.append(" ".join(record.getMessage().split()))


@contextmanager
def capture_gdal() -> Iterator[list[str]]:
    """Collect what rasterio/GDAL would print while the block runs: GDAL's ``CPLE_*``
    warnings (logged by rasterio) and Python warnings, one line each, into the yielded list.
    ``NotGeoreferencedWarning`` is dropped (a raster without CRS is handled, and said so, by
    the adapter). Nothing reaches stderr."""
    notes: list[str] = []
    logger = logging.getLogger("rasterio")
    handler, propagate = _Notes(notes), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        notes.extend(
            " ".join(str(w.message).split())
            for w in caught
            if not issubclass(w.category, NotGeoreferencedWarning)
        )
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def units(adapter: MultispectralAdapter) -> list[tuple[Path, str, None]]:
    """``(path, id under root, None)`` of every raster file matching ``raster_glob``."""
    p, root = adapter.params, adapter.root
    paths = sorted(q for q in root.glob(p.raster_glob) if q.is_file())
    if not paths:
        raise DataError(f"no rasters match {p.raster_glob!r}", path=root)
    return [(q, q.relative_to(root).as_posix(), None) for q in paths]


def discover(adapter: MultispectralAdapter) -> list[SampleRef]:
    """One ref per raster file (:func:`units`), chips and labels as
    :meth:`MultispectralAdapter._discover_units` makes them."""
    return adapter._discover_units(units(adapter))


def gdal_reason(exc: BaseException) -> str:
    """One line from a rasterio error: GDAL's own message (chained as the cause) when there
    is one, since rasterio's is often just "Read failed. See previous exception"."""
    cause = exc.__cause__ or exc.__context__
    return " ".join(str(cause if cause is not None else exc).split())


@dataclass
class RasterInfo:
    """What discovery learnt about one raster (header only, no pixels)."""

    path: Path
    rel: str  # path relative to the dataset root (posix)
    width: int
    height: int
    crs: CRS | None  # None: a pixel-only raster (labels and outputs in pixels)
    transform: Affine  # the identity for a pixel-only raster
    read_indexes: list[int]  # 1-based bands to read (selected + roles of derived)
    selected: list[int]  # positions in read_indexes of the selected bands
    role_pos: dict[str, int]  # role -> position in read_indexes
    scales: np.ndarray
    offsets: np.ndarray
    channel_names: list[str]  # selected band names, then the derived indices
    # A band stack's scene ({"folder", "scene_id", "files": band -> file under root}), or
    # None for a raster file; opened by the adapter as a bandstack.BandStack.
    stack: dict | None = None
    # The independence unit (``group_by`` on ``rel``); None: the raster or scene itself.
    group: str | None = None
    # Per band read: the raw value that is no-data beside GDAL's mask (a band without a
    # nodata tag: Sentinel-2 MTD NODATA or the nodata param), NaN for none.
    nodata: np.ndarray | None = None

    @property
    def crs_name(self) -> str | None:
        """The CRS as a string (``EPSG:32633``), None for a pixel-only raster."""
        return None if self.crs is None else self.crs.to_string()


@contextmanager
def open_raster(path: Path, notes: list[str] | None = None) -> Iterator[rasterio.DatasetReader]:
    """``rasterio.open(path)`` (reads the header only); a file GDAL cannot open raises
    :class:`DataError` ("cannot open GeoTIFF", or "raster" for other formats) with GDAL's
    reason. GDAL's warnings while opening go to ``notes`` (:func:`capture_gdal`)."""
    what = "GeoTIFF" if Path(path).suffix.lower() in (".tif", ".tiff") else "raster"
    try:
        with capture_gdal() as said:
            ds = rasterio.open(path)
    except RasterioError as exc:
        raise DataError(f"cannot open {what} ({gdal_reason(exc)})", path=path) from exc
    if notes is not None:
        notes.extend(said)
    try:
        yield ds
    finally:
        ds.close()


def resolve_band(ds: rasterio.DatasetReader, band: int | str, path: Path) -> int:
    """1-based index of ``band`` (an index, or a band description) in ``ds``."""
    if isinstance(band, int):
        if band > ds.count:
            raise DataError(
                f"band {band} requested but the raster has only {ds.count} band(s)", path=path
            )
        return band
    names = list(ds.descriptions)
    if band not in names:
        raise DataError(
            f"no band described {band!r}; the raster's band descriptions are {names}", path=path
        )
    return names.index(band) + 1


def raster_info(
    ds: rasterio.DatasetReader,
    path: Path,
    rel: str,
    bands: Sequence[int | str] | None,
    roles: Mapping[str, int | str],
    derived: Sequence[str],
    pixel_labels: bool = False,
    nodata: float | None = None,
) -> RasterInfo:
    """The :class:`RasterInfo` of an open raster: georeferencing checked, bands resolved.

    ``pixel_labels``: the labels are in pixels, so a raster without a CRS (or without a
    geotransform) is read as a pixel-only raster (``crs`` None, identity transform); else it
    is refused. ``nodata``: the no-data value of every band without its own (``ds.nodatavals``;
    a band stack gives Sentinel-2's MTD NODATA there)."""
    crs, transform = ds.crs, ds.transform
    if crs is None or transform.is_identity:
        if not pixel_labels:
            why = "no CRS" if crs is None else "no geotransform"
            raise DataError(
                f"raster has {why}; map (GeoJSON) labels cannot be placed on it (labels in "
                "pixels, label_format dota/xview/coco/yolo, read rasters without one)",
                path=path,
            )
        crs, transform = None, Affine.identity()
    selected_idx = [resolve_band(ds, b, path) for b in (bands or range(1, ds.count + 1))]
    read_indexes = list(dict.fromkeys(selected_idx))
    role_pos: dict[str, int] = {}
    for d in derived:
        for role in DERIVED[d]:
            idx = resolve_band(ds, roles[role], path)
            if idx not in read_indexes:
                read_indexes.append(idx)
            role_pos[role] = read_indexes.index(idx)
    names = [ds.descriptions[i - 1] or f"band_{i}" for i in selected_idx]
    return RasterInfo(
        path=path,
        rel=rel,
        width=ds.width,
        height=ds.height,
        crs=crs,
        transform=transform,
        read_indexes=read_indexes,
        selected=[read_indexes.index(i) for i in selected_idx],
        role_pos=role_pos,
        scales=np.array([ds.scales[i - 1] for i in read_indexes], dtype=np.float64),
        offsets=np.array([ds.offsets[i - 1] for i in read_indexes], dtype=np.float64),
        channel_names=names + list(derived),
        nodata=np.array([_nodata_of(ds, i, nodata) for i in read_indexes], dtype=np.float64),
    )


def _nodata_of(ds: rasterio.DatasetReader, index: int, default: float | None) -> float:
    """The extra no-data value of band ``index``: a band stack's ``extra_nodata`` (Sentinel-2
    MTD NODATA or the param), else ``default`` when the band has no nodata of its own (a
    tagged one is in GDAL's mask already); NaN for none."""
    extra = getattr(ds, "extra_nodata", None)
    if extra is not None:
        return float("nan") if extra[index - 1] is None else float(extra[index - 1])
    own = ds.nodatavals[index - 1]
    return float("nan") if own is not None or default is None else float(default)


# --- reading -----------------------------------------------------------------------------------
def _has_mask_band(ds: rasterio.DatasetReader, indexes: Sequence[int]) -> bool:
    """Whether some band's mask is stored (an internal or ``.msk`` mask band, not derived
    from the nodata value or an alpha band already read)."""
    return any(MaskFlags.per_dataset in ds.mask_flag_enums[i - 1] for i in indexes)


def verify_readable(ds: rasterio.DatasetReader, info: RasterInfo) -> None:
    """Decode every internal block of every band read (and of a stored mask): a corrupt or
    missing tile anywhere raises :class:`DataError` naming the raster, the window and GDAL's
    reason, before any chip is produced.

    Reads go by runs of whole block rows (split into block-aligned column runs when one block
    row of all bands exceeds ~64 MiB), so memory stays bounded and small tiles do not cost a
    Python call each.
    """
    bh, bw = ds.block_shapes[info.read_indexes[0] - 1]
    bh, bw = max(1, min(bh, info.height)), max(1, min(bw, info.width))
    per_px = len(info.read_indexes) * max(
        np.dtype(ds.dtypes[i - 1]).itemsize for i in info.read_indexes
    )
    budget_px = max(1, _VERIFY_BYTES // per_px)
    rows = bh * max(1, budget_px // (bh * info.width))
    cols = info.width if bh * info.width <= budget_px else bw * max(1, budget_px // (bh * bw))
    with_mask = _has_mask_band(ds, info.read_indexes)
    for row in range(0, info.height, rows):
        for col in range(0, info.width, cols):
            win = Window(col, row, min(cols, info.width - col), min(rows, info.height - row))
            try:
                ds.read(info.read_indexes, window=win)
                if with_mask:
                    ds.read_masks(info.read_indexes, window=win)
            except RasterioError as exc:
                raise DataError(
                    f"corrupt or truncated tile in window col={col} row={row} "
                    f"{int(win.width)}x{int(win.height)}: the raster cannot be read whole "
                    f"({gdal_reason(exc)})",
                    path=info.path,
                ) from exc


def read_window(
    ds: rasterio.DatasetReader, info: RasterInfo, window: Window
) -> tuple[np.ndarray, np.ndarray]:
    """Raw values and GDAL masks (``[B, h, w]`` each) of the bands read, in ``window``."""
    try:
        return (
            ds.read(info.read_indexes, window=window),
            ds.read_masks(info.read_indexes, window=window),
        )
    except RasterioError as exc:
        raise DataError(
            f"cannot read window col={int(window.col_off)} row={int(window.row_off)} "
            f"{int(window.width)}x{int(window.height)}, corrupt or truncated tile? "
            f"({gdal_reason(exc)})",
            path=info.path,
        ) from exc


def to_physical(
    info: RasterInfo, raw: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Raw band values ``[B, h, w]`` -> (``raw * scale + offset`` float64, valid ``[h, w]``).

    A pixel is valid when GDAL's mask of every band read is set (nodata value, mask band or
    alpha), no raw value equals its band's extra no-data (``info.nodata``: a band without a
    nodata tag) and every value is finite."""
    data = raw.astype(np.float64) * info.scales[:, None, None] + info.offsets[:, None, None]
    valid = (masks > 0).all(axis=0) & np.isfinite(data).all(axis=0)
    if info.nodata is not None and np.isfinite(info.nodata).any():
        valid &= ~(raw == info.nodata[:, None, None]).any(axis=0)
    return data, valid


def channels(info: RasterInfo, data: np.ndarray, derived: Sequence[str]) -> np.ndarray:
    """Selected bands then derived indices (clipped to [-1, 1]), ``[C, h, w]`` float64."""
    out = [data[i] for i in info.selected]
    with np.errstate(divide="ignore", invalid="ignore"):
        for d in derived:
            a = data[info.role_pos[DERIVED[d][0]]]
            b = data[info.role_pos[DERIVED[d][1]]]
            out.append(np.clip((a - b) / (a + b + _EPS), -1.0, 1.0))
    return np.stack(out)


# --- statistics ----------------------------------------------------------------------------------
def raster_stats(
    ds: rasterio.DatasetReader,
    info: RasterInfo,
    derived: Sequence[str],
    stats_size: int,
    clip_percentiles: Sequence[float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``(low, high, fill)`` of a raster, over valid pixels of a decimated read
    (``out_shape``, at most ``stats_size`` px a side, nearest neighbour; GDAL uses internal
    overviews when present). ``low``/``high`` are the ``clip_percentiles`` (min/max when
    null), fixed to [-1, 1] for derived indices; ``fill`` (for no-data) the clipped median."""
    scale = min(1.0, stats_size / max(info.width, info.height))
    shape = (
        len(info.read_indexes),
        max(1, round(info.height * scale)),
        max(1, round(info.width * scale)),
    )
    try:
        raw = ds.read(info.read_indexes, out_shape=shape, resampling=Resampling.nearest)
        masks = ds.read_masks(info.read_indexes, out_shape=shape, resampling=Resampling.nearest)
    except RasterioError as exc:
        raise DataError(
            f"cannot read the raster for its statistics, corrupt or truncated file? "
            f"({gdal_reason(exc)})",
            path=info.path,
        ) from exc
    data, valid = to_physical(info, raw, masks)
    if not valid.any():
        raise DataError("raster has no valid (non-nodata) pixels", path=info.path)
    chans = channels(info, data, derived)[:, valid]
    if clip_percentiles is None:
        lo, hi = chans.min(axis=1), chans.max(axis=1)
    else:
        lo, hi = np.percentile(chans, [float(clip_percentiles[0]), float(clip_percentiles[1])], 1)
    nb = len(info.selected)
    lo[nb:], hi[nb:] = -1.0, 1.0  # derived indices are bounded already; never clipped
    fill = np.clip(np.median(chans, axis=1), lo, hi)
    return lo, hi, fill
