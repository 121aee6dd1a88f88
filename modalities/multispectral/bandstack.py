"""Band stacks in: one file per band (Sentinel-2 L2A, Landsat Collection 2, a named pattern),
grouped into scenes and resampled onto one reference grid.

A scene is opened as a :class:`BandStack`, an object with the parts of a rasterio dataset the
GeoTIFF code uses (``count``, ``width``, ``height``, ``crs``, ``transform``, ``descriptions``,
``scales``, ``offsets``, ``dtypes``, ``block_shapes``, ``mask_flag_enums``, ``read`` and
``read_masks`` by window or ``out_shape``), so :mod:`modalities.multispectral.geotiff` (band
resolution, integrity pass, statistics, windowed chips) and the label/chip code run unchanged.

Resampling (GDAL's warper through :class:`rasterio.vrt.WarpedVRT`, one per band whose grid is
not the reference's): a band with coarser pixels than the reference (upsampling, 20 m -> 10 m)
uses ``Resampling.bilinear``; one with finer pixels (downsampling, 10 m -> 20 m) uses
``Resampling.average`` (the mean of the source pixels under each reference pixel, nodata left
out). A band on the reference grid itself is read as is.

Sentinel-2 radiometry (BOA offsets and quantification) and no-data (``Special_Values``) come
from the product's ``MTD_MSIL2A.xml``: :mod:`modalities.multispectral.s2_metadata`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.multispectral import s2_metadata
from modalities.multispectral.geotiff import capture_gdal, gdal_reason

if TYPE_CHECKING:
    from modalities.multispectral.adapter import MultispectralAdapter

MTD_NAME = s2_metadata.MTD_NAME

# L2A: T33TWM_20230101T100021_B02_10m.jp2 (older products: L2A_T33TWM_..._B02_10m.jp2);
# L1C-style names without the resolution suffix are accepted too; .tif for converted bands.
_S2_RE = re.compile(
    r"^(?:L2A_)?(?P<scene>T\d{2}[A-Z]{3}_\d{8}T\d{6})_(?P<band>[A-Z0-9]{3})"
    r"(?:_(?P<res>\d{2})m)?\.(?:jp2|tiff?)$",
    re.IGNORECASE,
)
# Collection 2: LC08_L2SP_044034_20200708_20200913_02_T1_SR_B4.TIF (sensor, level, path/row,
# acquisition and processing dates, collection, category, then the band: SR_B4, ST_B10, QA_PIXEL).
_LANDSAT_RE = re.compile(
    r"^(?P<scene>L[COTEM]\d{2}_[A-Z0-9]{4}_\d{6}_\d{8}_\d{8}_\d{2}_[A-Z0-9]{2})_"
    r"(?P<band>[A-Z0-9_]+)\.tiff?$",
    re.IGNORECASE,
)


def pattern_regex(band_files: str, bands: Sequence[str] | None = None) -> re.Pattern[str]:
    """The regex of a ``band_files`` pattern (``{scene}`` and ``{band}`` placeholders).

    With ``bands`` (the configured band names), ``{band}`` matches one of those names only, so
    a scene id may hold the pattern's separator (``{scene}_{band}.tif`` reads
    ``T33UUP_20230101T100000_B02.tif`` as scene ``T33UUP_20230101T100000``, band ``B02``);
    without, any text (the scene the shortest prefix)."""
    names = sorted(dict.fromkeys(bands or []), key=len, reverse=True)
    band = "|".join(re.escape(b) for b in names) if names else "[^/]+?"
    out = []
    for part in re.split(r"(\{scene\}|\{band\})", band_files):
        if part == "{scene}":
            out.append(r"(?P<scene>.+?)")
        elif part == "{band}":
            out.append(f"(?P<band>{band})")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


@dataclass
class Scene:
    """One scene: its folder, id and one file per band (paths relative to the dataset root)."""

    kind: str  # sentinel2 | landsat | pattern
    folder: str  # posix, relative to root ("." for root)
    scene_id: str
    files: dict[str, str] = field(default_factory=dict)  # band name -> file

    @property
    def rel(self) -> str:
        """The scene's id under root (``<folder>/<scene id>``), used like a raster's path."""
        return self.scene_id if self.folder == "." else f"{self.folder}/{self.scene_id}"


def _scene_folder(path: Path, kind: str) -> Path:
    """Sentinel-2 bands of one granule lie in IMG_DATA/R10m, R20m, R60m: the scene folder is
    the granule (the parent of IMG_DATA); otherwise the band file's own folder."""
    if kind == "sentinel2" and "IMG_DATA" in path.parts[:-1]:
        parts = path.parts
        i = len(parts) - 2 - parts[:-1][::-1].index("IMG_DATA")
        return Path(*parts[:i])
    return path.parent


def find_scenes(
    root: Path, kind: str, band_files: str | None, bands: Sequence[str] | None = None
) -> list[Scene]:
    """Every scene under ``root`` (recursively), sorted by id, with the band files found
    (for a ``pattern`` stack, the files of the band names ``bands``: :func:`pattern_regex`).

    For Sentinel-2, a band stored at several resolutions (L2A has B02 in R10m, R20m and R60m)
    keeps its finest. Two files of one band otherwise -> :class:`DataError` naming both.
    """
    regex = {"sentinel2": _S2_RE, "landsat": _LANDSAT_RE}.get(kind) or pattern_regex(
        band_files or "", bands
    )
    scenes: dict[tuple[str, str], Scene] = {}
    res_of: dict[tuple[str, str, str], int] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        m = regex.match(path.name)
        if not m:
            continue
        folder = _scene_folder(path, kind).relative_to(root).as_posix()
        scene_id, band = m["scene"], m["band"]
        if kind == "sentinel2":
            band = band.upper()
        res = int(m["res"]) if kind == "sentinel2" and m["res"] else 0
        scene = scenes.setdefault((folder, scene_id), Scene(kind, folder, scene_id))
        rel = path.relative_to(root).as_posix()
        key = (folder, scene_id, band)
        if band in scene.files:
            if res and res_of[key] and res != res_of[key]:
                if res < res_of[key]:
                    scene.files[band], res_of[key] = rel, res
                continue
            raise DataError(
                f"two files for band {band} of scene {scene_id}: {scene.files[band]} and {rel}",
                path=root / folder,
            )
        scene.files[band], res_of[key] = rel, res
    return [scenes[k] for k in sorted(scenes)]


def require_scenes(
    root: Path, kind: str, band_files: str | None, bands: Sequence[str] | None = None
) -> list[Scene]:
    """:func:`find_scenes`, or :class:`DataError` on ``root`` when there is none."""
    scenes = find_scenes(root, kind, band_files, bands)
    if not scenes:
        what = f"'{band_files}'" if kind == "pattern" else f"{kind} band file names"
        raise DataError(f"no band files matching {what} under root", path=root)
    return scenes


def units(adapter: MultispectralAdapter) -> list[tuple[Path, str, Scene]]:
    """``(scene folder, scene id under root, scene)`` of every scene of the ``stack`` kind."""
    p, root = adapter.params, adapter.root
    scenes = require_scenes(root, p.stack, p.band_files, adapter._stack_bands())
    return [(root / sc.folder, sc.rel, sc) for sc in scenes]


def discover(adapter: MultispectralAdapter) -> list[SampleRef]:
    """One ref per band-stack scene (:func:`units`), chips and labels as
    :meth:`MultispectralAdapter._discover_units` makes them."""
    return adapter._discover_units(units(adapter))


#: How many files :func:`claims` looks at in a folder before giving up.
CLAIM_SCAN_LIMIT = 10_000


def is_band_file(name: str) -> bool:
    """Whether a file name is a Sentinel-2 or Landsat Collection 2 band file's."""
    return bool(_S2_RE.match(name) or _LANDSAT_RE.match(name))


def claims(path: Path) -> bool:
    """A Sentinel-2 or Landsat band file (by its name), or a folder holding one anywhere below
    it or a Sentinel-2 ``MTD_MSIL2A.xml`` (a scene, a SAFE product). A ``pattern`` stack's
    names are the params' (not knowable from the file alone): its files are claimed as
    rasters (:func:`modalities.multispectral.geotiff.claims`). Never raises."""
    path = Path(path)
    try:
        if not path.is_dir():
            return path.is_file() and is_band_file(path.name)
        for n, q in enumerate(path.rglob("*")):
            if n >= CLAIM_SCAN_LIMIT:
                return False
            if q.name == MTD_NAME or (is_band_file(q.name) and q.is_file()):
                return True
    except OSError:
        return False
    return False


def stack_bands(
    bands: Sequence[int | str] | None,
    derived: Sequence[str],
    roles: Mapping[str, int | str],
    derived_roles: Mapping[str, Sequence[str]],
) -> list[str]:
    """The band names a stack opens: ``bands``, then the role bands (``roles``) that the
    ``derived`` indices need (``derived_roles``: index -> its roles)."""
    names = [str(b) for b in bands or []]
    for d in derived:
        for role in derived_roles[d]:
            band = roles[role]
            if isinstance(band, str) and band not in names:
                names.append(band)
    return names


def scene_stack(scene: Scene, needed: Sequence[str], path: Path) -> dict[str, Any]:
    """The stack description of ``scene`` (folder, scene id, file of each ``needed`` band);
    :class:`DataError` on ``path`` when a needed band has no file."""
    missing = [b for b in needed if b not in scene.files]
    if missing:
        raise DataError(
            f"scene {scene.scene_id} has no band file for {missing} (found: {sorted(scene.files)})",
            path=path,
        )
    return {
        "folder": scene.folder,
        "scene_id": scene.scene_id,
        "files": {b: scene.files[b] for b in needed},
    }


# --- the stack as a dataset ----------------------------------------------------------------------
def _pixel_area(transform: Any) -> float:
    return abs(transform.a * transform.e - transform.b * transform.d)


def _on_grid(ds: Any, ref: Any, nodata: float | None) -> tuple[Any, Resampling | None]:
    """``ds`` as seen on ``ref``'s grid and the resampling used: ``ds`` itself (None) when the
    grids match, else a :class:`WarpedVRT` (bilinear from a coarser band, average from a finer
    one; ``nodata``, the band's no-data value, left out of both and written where no valid
    source pixel is)."""
    same = (
        ds.crs == ref.crs
        and ds.transform == ref.transform
        and (ds.width, ds.height) == (ref.width, ref.height)
    )
    if same:
        return ds, None
    coarser = _pixel_area(ds.transform) > _pixel_area(ref.transform)
    how = Resampling.bilinear if coarser else Resampling.average
    view = WarpedVRT(
        ds,
        crs=ref.crs,
        transform=ref.transform,
        width=ref.width,
        height=ref.height,
        resampling=how,
        src_nodata=nodata,
        nodata=nodata,
    )
    return view, how


class BandStack:
    """One scene's band files as one dataset on the reference band's grid (module docstring).

    ``files``: band name -> path, in channel order; ``reference``: the band whose grid is used
    (None = the finest pixel, the first such band on ties); ``radiometry``: band -> (scale,
    offset) replacing the files' GDAL scale/offset; ``nodata``: band -> no-data value for a
    band file without a nodata tag (:func:`s2_metadata.scene_nodata`), exposed as ``extra_nodata``.
    GDAL's warnings while opening are in ``notes``.
    """

    def __init__(
        self,
        files: Mapping[str, Path],
        reference: str | None = None,
        radiometry: Mapping[str, tuple[float, float]] | None = None,
        nodata: Mapping[str, float] | None = None,
    ):
        self._srcs: list[Any] = []
        self._views: list[Any] = []
        self.notes: list[str] = []
        self.names = list(files)
        self.paths = [Path(files[b]) for b in self.names]
        try:
            self._open_bands()
            ref_i = (
                self.names.index(reference)
                if reference is not None
                else min(range(len(self._srcs)), key=lambda i: _pixel_area(self._srcs[i].transform))
            )
            ref = self._srcs[ref_i]
            self.reference = self.names[ref_i]
            self.width, self.height = ref.width, ref.height
            self.crs, self.transform = ref.crs, ref.transform
            self._check_crs(ref_i)
            extra = nodata or {}
            self.nodatavals = tuple(s.nodata for s in self._srcs)
            self.extra_nodata = tuple(
                extra.get(b) if s.nodata is None else None for b, s in zip(self.names, self._srcs)
            )
            self.resampling: list[Resampling | None] = []
            with capture_gdal() as notes:
                for ds, more in zip(self._srcs, self.extra_nodata):
                    view, how = _on_grid(ds, ref, ds.nodata if more is None else more)
                    self._views.append(view)
                    self.resampling.append(how)
            self.notes += notes
        except BaseException:
            self.close()
            raise
        self.count = len(self.names)
        self.descriptions = tuple(self.names)
        rad = radiometry or {}
        self.scales = tuple(
            rad[b][0] if b in rad else s.scales[0] for b, s in zip(self.names, self._srcs)
        )
        self.offsets = tuple(
            rad[b][1] if b in rad else s.offsets[0] for b, s in zip(self.names, self._srcs)
        )
        self.dtypes = tuple(v.dtypes[0] for v in self._views)
        self.block_shapes = [v.block_shapes[0] for v in self._views]
        self.mask_flag_enums = tuple(v.mask_flag_enums[0] for v in self._views)

    def _open_bands(self) -> None:
        """Open every band file into ``self._srcs`` (kept there as soon as open, so
        :meth:`close` closes it); refuses a file that is not one band with a CRS and a
        geotransform."""
        for path in self.paths:
            try:
                with capture_gdal() as notes:
                    ds = rasterio.open(path)
                self.notes += [f"{path.name}: {n}" for n in notes]
            except RasterioError as exc:
                raise DataError(f"cannot open band file ({gdal_reason(exc)})", path=path) from exc
            self._srcs.append(ds)
            if ds.count != 1:
                raise DataError(
                    f"band file has {ds.count} bands; a band stack needs one per file",
                    path=path,
                )
            if ds.crs is None or ds.transform.is_identity:
                raise DataError("band file has no CRS or geotransform", path=path)

    def _check_crs(self, ref_i: int) -> None:
        """Refuse a band whose CRS differs from the reference band's, naming that band's
        file (resampling across CRSs would silently warp one band of a product)."""
        ref = self._srcs[ref_i]
        for name, path, ds in zip(self.names, self.paths, self._srcs):
            if ds.crs != ref.crs:
                raise DataError(
                    f"band {name} is in {ds.crs.to_string()}, but the reference band "
                    f"{self.reference} ({self.paths[ref_i].name}) is in {ref.crs.to_string()}; "
                    "the bands of one scene must share a CRS",
                    path=path,
                )

    def _read(self, what: str, indexes: Sequence[int] | int, **kw: Any) -> np.ndarray:
        one = isinstance(indexes, int)
        idx = [indexes] if one else list(indexes)
        shape = kw.pop("out_shape", None)
        out = []
        for i in idx:
            view = self._views[i - 1]
            try:
                fn = view.read if what == "read" else view.read_masks
                out.append(fn(1, out_shape=None if shape is None else shape[-2:], **kw))
            except RasterioError as exc:
                # The chained cause carries the band file, which geotiff.gdal_reason shows.
                raise RasterioError(f"cannot read band {self.names[i - 1]}") from RasterioError(
                    f"band file {self.paths[i - 1].name}: {gdal_reason(exc)}"
                )
        return out[0] if one else np.stack(out)

    def read(self, indexes: Sequence[int] | int, **kw: Any) -> np.ndarray:
        """``rasterio`` ``read`` of 1-based stack bands (``window``, ``out_shape``,
        ``resampling``), on the reference grid."""
        return self._read("read", indexes, **kw)

    def read_masks(self, indexes: Sequence[int] | int, **kw: Any) -> np.ndarray:
        """GDAL masks (255 valid, 0 no-data) of stack bands, like :meth:`read`."""
        return self._read("masks", indexes, **kw)

    def close(self) -> None:
        for v in self._views:
            if isinstance(v, WarpedVRT):
                v.close()
        for s in self._srcs:
            s.close()
        self._views, self._srcs = [], []

    def __enter__(self) -> BandStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
