"""The multispectral adapter: GeoTIFF rasters + GeoJSON labels -> chips -> GeoJSON predictions.

See ``docs/modalities/multispectral.md`` for the data layout and every parameter.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from dsod_core.boxes import batched_nms
from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.multispectral import geojson
from modalities.multispectral.tiling import boxes_in_chip, chip_windows

log = logging.getLogger(__name__)

DEFAULT_ROLES = {
    "coastal": "coastal",
    "blue": "blue",
    "green": "green",
    "red": "red",
    "red_edge": "red_edge",
    "nir": "nir",
    "swir1": "swir1",
    "swir2": "swir2",
}
# Normalised differences: name -> (a, b) giving (a - b) / (a + b + eps), roles of band_roles.
DERIVED = {
    "ndvi": ("nir", "red"),  # vegetation (Rouse et al. 1974)
    "ndwi": ("green", "nir"),  # open water (McFeeters 1996)
    "ndbi": ("swir1", "nir"),  # built-up (Zha et al. 2003)
}
_EPS = 1e-6


def _gdal_reason(exc: BaseException) -> str:
    """One line from a rasterio error: GDAL's own message (chained as the cause) when there
    is one, since rasterio's is often just "Read failed. See previous exception"."""
    cause = exc.__cause__ or exc.__context__
    return " ".join(str(cause if cause is not None else exc).split())


def _unit_hash(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) from ``key`` (same on every machine)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class _RasterInfo:
    """What discover() learnt about one raster (header only, no pixels)."""

    path: Path
    rel: str
    width: int
    height: int
    crs: CRS
    transform: Affine
    read_indexes: list[int]  # 1-based bands to read (selected + roles of derived)
    selected: list[int]  # positions in read_indexes of the selected bands
    role_pos: dict[str, int]  # role -> position in read_indexes
    scales: np.ndarray
    offsets: np.ndarray


class MultispectralAdapter(ModalityAdapter):
    """GeoTIFF multispectral rasters with GeoJSON box/polygon labels, tiled into chips.

    Channels: the selected bands (``bands``, by 1-based index or band description, in that
    order) in reflectance after ``scales``/``offsets``, percentile-clipped per raster (and
    rescaled to [0, 1] when ``rescale``), then the ``derived`` indices in [-1, 1]. No-data
    pixels (GDAL mask of any band read, or non-finite) are ``Sample.valid`` False and filled
    with the raster's median of that channel. ``Sample.affine`` maps chip pixels to the map
    coordinates of the raster CRS (``world_units = "crs"``).
    """

    name = "multispectral"
    world_units = "crs"
    param_defaults: dict[str, Any] = {
        "raster_glob": "**/*.tif",
        "label_pattern": "{stem}.geojson",
        "require_labels": True,
        "bands": None,
        "band_roles": {},
        "derived": [],
        "clip_percentiles": [1.0, 99.0],
        "rescale": True,
        "stats_size": 512,
        "chip_size": 96,
        "overlap": 16,
        "empty_chip_rate": 0.1,
        "min_visible": 0.5,
        "classes": None,
        "class_property": "class",
        "unknown_class": "error",
        "labels_outside": "error",
        "split_by": "raster",
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "seed": 0,
        "merge_iou": 0.5,
        "export_wgs84": True,
    }

    def __init__(self, root: str | Path, params: Mapping[str, Any] | None = None):
        super().__init__(root, params)
        self._channel_names: list[str] | None = None
        self._class_names: list[str] | None = (
            list(self.params["classes"]) if self.params["classes"] else None
        )
        self._rasters: dict[str, _RasterInfo] = {}
        self._stats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        #: Warnings recorded during discover() (features outside a raster, skipped classes).
        self.warnings: list[str] = []

    # --- params ------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"multispectral param {msg}")

        for key in (
            "empty_chip_rate",
            "min_visible",
            "merge_iou",
            "val_fraction",
            "test_fraction",
            "seed",
        ):
            value = p[key]
            need(
                isinstance(value, int | float) and not isinstance(value, bool),
                f"'{key}' must be a number, got {value!r}",
            )
        cp = p["clip_percentiles"]
        need(
            cp is None
            or (isinstance(cp, list | tuple) and all(isinstance(v, int | float) for v in cp)),
            f"'clip_percentiles' must be null or [low, high] in 0..100, got {cp!r}",
        )
        bands = p["bands"]
        need(
            bands is None
            or (
                isinstance(bands, list)
                and bands
                and all(
                    (isinstance(b, int) and not isinstance(b, bool) and b >= 1)
                    or isinstance(b, str)
                    for b in bands
                )
            ),
            f"'bands' must be null or a non-empty list of 1-based ints / band names, got {bands!r}",
        )
        need(isinstance(p["band_roles"], dict), "'band_roles' must be a mapping role -> band")
        p["band_roles"] = {**DEFAULT_ROLES, **p["band_roles"]}
        derived = p["derived"]
        need(
            isinstance(derived, list) and all(d in DERIVED for d in derived),
            f"'derived' must be a list of {sorted(DERIVED)}, got {derived!r}",
        )
        cp = p["clip_percentiles"]
        need(
            cp is None
            or (
                isinstance(cp, list | tuple)
                and len(cp) == 2
                and 0 <= float(cp[0]) < float(cp[1]) <= 100
            ),
            f"'clip_percentiles' must be null or [low, high] in 0..100, got {cp!r}",
        )
        for key in ("chip_size", "stats_size"):
            need(isinstance(p[key], int) and p[key] >= 8, f"'{key}' must be an int >= 8")
        need(
            isinstance(p["overlap"], int) and 0 <= p["overlap"] < p["chip_size"],
            "'overlap' must be an int in [0, chip_size)",
        )
        for key in ("empty_chip_rate", "min_visible", "merge_iou"):
            need(0.0 <= float(p[key]) <= 1.0, f"'{key}' must be in [0, 1]")
        need(
            p["classes"] is None
            or (
                isinstance(p["classes"], list)
                and p["classes"]
                and len(set(p["classes"])) == len(p["classes"])
            ),
            "'classes' must be null or a non-empty list of distinct names",
        )
        need(p["unknown_class"] in ("error", "skip"), "'unknown_class' must be error|skip")
        need(p["labels_outside"] in ("error", "warn"), "'labels_outside' must be error|warn")
        need(p["split_by"] in ("raster", "chip"), "'split_by' must be raster|chip")
        need(
            0 <= float(p["val_fraction"])
            and 0 <= float(p["test_fraction"])
            and float(p["val_fraction"]) + float(p["test_fraction"]) < 1,
            "'val_fraction' + 'test_fraction' must be in [0, 1)",
        )
        need(
            isinstance(p["label_pattern"], str) and "{stem}" in p["label_pattern"],
            "'label_pattern' must contain '{stem}'",
        )

    # --- names -------------------------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        if self._channel_names is None:
            raise ConfigError("multispectral channel_names are known after discover()")
        return list(self._channel_names)

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise ConfigError("multispectral class_names are known after discover()")
        return list(self._class_names)

    # --- discovery ---------------------------------------------------------------------
    def _resolve_band(self, ds: rasterio.DatasetReader, band: int | str, path: Path) -> int:
        if isinstance(band, int):
            if band > ds.count:
                raise DataError(
                    f"band {band} requested but the raster has only {ds.count} band(s)", path=path
                )
            return band
        names = list(ds.descriptions)
        if band not in names:
            raise DataError(
                f"no band described {band!r}; the raster's band descriptions are {names}",
                path=path,
            )
        return names.index(band) + 1

    def _open_info(self, path: Path) -> tuple[_RasterInfo, list[str]]:
        try:
            with rasterio.open(path) as ds:
                if ds.crs is None:
                    raise DataError("raster has no CRS; cannot place map labels on it", path=path)
                if ds.transform.is_identity:
                    raise DataError("raster has no geotransform", path=path)
                bands = self.params["bands"] or list(range(1, ds.count + 1))
                selected_idx = [self._resolve_band(ds, b, path) for b in bands]
                read_indexes = list(dict.fromkeys(selected_idx))
                role_pos: dict[str, int] = {}
                for d in self.params["derived"]:
                    for role in DERIVED[d]:
                        band = self.params["band_roles"].get(role)
                        if band is None:
                            raise ConfigError(f"derived {d!r} needs band_roles[{role!r}]")
                        idx = self._resolve_band(ds, band, path)
                        if idx not in read_indexes:
                            read_indexes.append(idx)
                        role_pos[role] = read_indexes.index(idx)
                names = [ds.descriptions[i - 1] or f"band_{i}" for i in selected_idx]
                info = _RasterInfo(
                    path=path,
                    rel=path.relative_to(self.root).as_posix(),
                    width=ds.width,
                    height=ds.height,
                    crs=ds.crs,
                    transform=ds.transform,
                    read_indexes=read_indexes,
                    selected=[read_indexes.index(i) for i in selected_idx],
                    role_pos=role_pos,
                    scales=np.array([ds.scales[i - 1] for i in read_indexes], dtype=np.float64),
                    offsets=np.array([ds.offsets[i - 1] for i in read_indexes], dtype=np.float64),
                )
        except RasterioError as exc:
            raise DataError(f"cannot open GeoTIFF ({_gdal_reason(exc)})", path=path) from exc
        return info, names + list(self.params["derived"])

    def _label_path(self, raster: Path) -> Path:
        rel = raster.parent.relative_to(self.root) / self.params["label_pattern"].format(
            stem=raster.stem
        )
        return self.resolve_inside_root(rel, raster)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    def discover(self) -> list[SampleRef]:
        """List chips of every raster matching ``raster_glob`` (headers and labels only).

        One :class:`SampleRef` per kept chip; ``meta`` holds the chip window and its boxes.
        """
        p = self.params
        paths = sorted(q for q in self.root.glob(p["raster_glob"]) if q.is_file())
        if not paths:
            raise DataError(f"no rasters match {p['raster_glob']!r}", path=self.root)
        self.warnings = []
        infos, labelled = [], []
        for path in paths:
            info, names = self._open_info(path)
            if self._channel_names is None:
                self._channel_names = names
            elif names != self._channel_names:
                raise DataError(
                    f"band layout {names} differs from the first raster's {self._channel_names}",
                    path=path,
                )
            self._rasters[info.rel] = info
            infos.append(info)
            labelled.append(self._read_labels(info))
        if self._class_names is None:
            self._class_names = sorted({c for feats in labelled for c, _ in feats})
            if not self._class_names:
                raise DataError("no labelled features in any label file", path=self.root)
        refs = []
        for info, feats in zip(infos, labelled):
            refs.extend(self._chip_refs(info, feats))
        return refs

    def _read_labels(self, info: _RasterInfo) -> list[tuple[str, np.ndarray]]:
        """(class name, raster-pixel box) of every feature of the raster's label file that
        touches the raster."""
        lpath = self._label_path(info.path)
        if not lpath.is_file():
            if self.params["require_labels"]:
                raise DataError(f"label file {lpath.name} not found", path=info.path)
            return []
        src_crs, feats = geojson.read_label_features(lpath, self.params["class_property"])
        kept = []
        for i, cls, geom in feats:
            if self._class_names is not None and cls not in self._class_names:
                if self.params["unknown_class"] == "error":
                    raise DataError(
                        f"feature {i} has class {cls!r}, not in classes {self._class_names}",
                        path=lpath,
                    )
                self._warn(f"{lpath}: feature {i} of unknown class {cls!r} skipped")
                continue
            kept.append((i, cls, geom))
        boxes = geojson.geometries_to_pixel_boxes(
            [g for _, _, g in kept], src_crs, info.crs, info.transform, lpath
        )
        inside = (
            (boxes[:, 2] > 0)
            & (boxes[:, 0] < info.width)
            & (boxes[:, 3] > 0)
            & (boxes[:, 1] < info.height)
            & (boxes[:, 2] > boxes[:, 0])
            & (boxes[:, 3] > boxes[:, 1])
        )
        if len(kept) and not inside.any():
            msg = (
                f"none of the {len(kept)} label features overlaps raster {info.rel} "
                f"({info.width}x{info.height} px in {info.crs.to_string()}); wrong CRS or file?"
            )
            if self.params["labels_outside"] == "error":
                raise DataError(msg, path=lpath)
            self._warn(f"{lpath}: {msg}")
        elif (~inside).any():
            self._warn(
                f"{lpath}: {int((~inside).sum())} of {len(kept)} features lie outside raster "
                f"{info.rel} (or are degenerate) and are ignored"
            )
        return [(cls, box) for (_, cls, _), box, ok in zip(kept, boxes, inside) if ok]

    def _chip_refs(self, info: _RasterInfo, feats: list[tuple[str, np.ndarray]]) -> list[SampleRef]:
        p = self.params
        boxes = np.array([b for _, b in feats], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self._class_names.index(c) + 1 for c, _ in feats], dtype=np.int64)
        raster_split = assign_split(
            info.rel, float(p["val_fraction"]), float(p["test_fraction"]), int(p["seed"])
        )
        refs = []
        for win in chip_windows(info.width, info.height, p["chip_size"], p["overlap"]):
            col, row = int(win.col_off), int(win.row_off)
            key = f"{info.rel}@{col},{row}"
            chip_boxes, chip_labels = boxes_in_chip(
                boxes, labels, win, (info.width, info.height), float(p["min_visible"])
            )
            if not len(chip_boxes):
                # Deterministic keep/drop of empty chips: a stable hash, not a global RNG.
                if _unit_hash(f"empty:{key}", int(p["seed"])) >= float(p["empty_chip_rate"]):
                    continue
            split = (
                raster_split
                if p["split_by"] == "raster"
                else assign_split(
                    key, float(p["val_fraction"]), float(p["test_fraction"]), int(p["seed"])
                )
            )
            refs.append(
                SampleRef(
                    ref_id=f"{Path(info.rel).with_suffix('').as_posix()}_c{col}_r{row}",
                    split=split,
                    paths={"image": info.path},
                    meta={
                        "raster": info.rel,
                        "window": [col, row, int(win.width), int(win.height)],
                        "boxes": chip_boxes.tolist(),
                        "labels": chip_labels.tolist(),
                    },
                )
            )
        return refs

    # --- reading -----------------------------------------------------------------------
    def _to_reflectance(
        self, info: _RasterInfo, raw: np.ndarray, masks: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw band values ``[B, h, w]`` -> (physical values, valid ``[h, w]``)."""
        data = raw.astype(np.float64) * info.scales[:, None, None] + info.offsets[:, None, None]
        valid = (masks > 0).all(axis=0) & np.isfinite(data).all(axis=0)
        return data, valid

    def _channels(self, info: _RasterInfo, data: np.ndarray) -> np.ndarray:
        """Selected bands then derived indices, ``[C, h, w]`` float64 (not yet clipped)."""
        out = [data[i] for i in info.selected]
        with np.errstate(divide="ignore", invalid="ignore"):
            for d in self.params["derived"]:
                a = data[info.role_pos[DERIVED[d][0]]]
                b = data[info.role_pos[DERIVED[d][1]]]
                out.append(np.clip((a - b) / (a + b + _EPS), -1.0, 1.0))
        return np.stack(out)

    def _raster_stats(self, info: _RasterInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-channel (low, high, fill) of a raster from a decimated read (``out_shape``,
        at most ``stats_size`` px a side: GDAL uses internal overviews when present), over
        valid pixels only. Cached per raster."""
        if info.rel in self._stats:
            return self._stats[info.rel]
        s = self.params["stats_size"]
        scale = min(1.0, s / max(info.width, info.height))
        oh, ow = max(1, round(info.height * scale)), max(1, round(info.width * scale))
        n = len(info.read_indexes)
        try:
            with rasterio.open(info.path) as ds:
                raw = ds.read(
                    info.read_indexes, out_shape=(n, oh, ow), resampling=Resampling.nearest
                )
                masks = ds.read_masks(
                    info.read_indexes, out_shape=(n, oh, ow), resampling=Resampling.nearest
                )
        except RasterioError as exc:
            raise DataError(
                f"cannot read the raster for its statistics, corrupt or truncated file? "
                f"({_gdal_reason(exc)})",
                path=info.path,
            ) from exc
        data, valid = self._to_reflectance(info, raw, masks)
        if not valid.any():
            raise DataError("raster has no valid (non-nodata) pixels", path=info.path)
        chans = self._channels(info, data)[:, valid]
        nb = len(info.selected)
        cp = self.params["clip_percentiles"]
        if cp is None:
            lo, hi = chans.min(axis=1), chans.max(axis=1)
        else:
            lo, hi = np.percentile(chans, [float(cp[0]), float(cp[1])], axis=1)
        lo[nb:], hi[nb:] = -1.0, 1.0  # derived indices are bounded already; never clipped
        fill = np.clip(np.median(chans, axis=1), lo, hi)
        self._stats[info.rel] = (lo, hi, fill)
        return lo, hi, fill

    def _info_for(self, ref: SampleRef) -> _RasterInfo:
        rel = ref.meta["raster"]
        if rel not in self._rasters:
            path = Path(ref.paths["image"])
            info, names = self._open_info(path)
            if self._channel_names is None:
                self._channel_names = names
            self._rasters[rel] = info
        return self._rasters[rel]

    def read_chip(self, info: _RasterInfo, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """One chip, read by window: (image float32 ``[C, S, S]``, valid bool ``[S, S]``).

        The part of the window beyond the raster (only for rasters smaller than a chip) is
        padded as no-data."""
        col, row, w, h = (
            int(window.col_off),
            int(window.row_off),
            int(window.width),
            int(window.height),
        )
        rw, rh = min(w, info.width - col), min(h, info.height - row)
        inner = Window(col, row, rw, rh)
        try:
            with rasterio.open(info.path) as ds:
                raw = ds.read(info.read_indexes, window=inner)
                masks = ds.read_masks(info.read_indexes, window=inner)
        except RasterioError as exc:
            raise DataError(
                f"cannot read window col={col} row={row} {rw}x{rh}, corrupt or truncated tile? "
                f"({_gdal_reason(exc)})",
                path=info.path,
            ) from exc
        data, valid_in = self._to_reflectance(info, raw, masks)
        lo, hi, fill = self._raster_stats(info)
        chans = np.clip(self._channels(info, data), lo[:, None, None], hi[:, None, None])
        chans = np.where(valid_in[None], chans, fill[:, None, None])
        if self.params["rescale"]:
            nb = len(info.selected)
            span = np.maximum(hi[:nb] - lo[:nb], 1e-12)
            chans[:nb] = (chans[:nb] - lo[:nb, None, None]) / span[:, None, None]
            fill = fill.copy()
            fill[:nb] = (fill[:nb] - lo[:nb]) / span
        image = np.empty((len(fill), h, w), dtype=np.float32)
        image[:] = fill[:, None, None]
        image[:, :rh, :rw] = chans
        valid = np.zeros((h, w), dtype=bool)
        valid[:rh, :rw] = valid_in
        return image, valid

    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """Read one chip (``ref`` from :meth:`discover`) into a :class:`Sample`."""
        info = self._info_for(ref)
        col, row, w, h = ref.meta["window"]
        image, valid = self.read_chip(info, Window(col, row, w, h))
        t = info.transform @ Affine.translation(col, row)
        affine = np.array(
            [[t.a, t.b, 0.0, t.c], [t.d, t.e, 0.0, t.f], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]]
        )
        sample = Sample(
            image=image,
            boxes=np.asarray(ref.meta["boxes"], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            sample_id=ref.ref_id,
            source=str(info.path),
            split=ref.split,
            affine=affine,
            valid=valid,
            meta={
                "raster": info.rel,
                "window": [col, row, w, h],
                "crs": info.crs.to_string(),
                "raster_transform": list(info.transform)[:6],
                "raster_size": [info.width, info.height],
                "units": "reflectance (percentile-clipped"
                + (", rescaled to [0, 1])" if self.params["rescale"] else ")"),
            },
        )
        sample.validate(num_channels=len(self.channel_names), num_classes=len(self.class_names))
        yield sample

    # --- back to the map ---------------------------------------------------------------
    def export_predictions(self, items: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Merge chip detections per raster and write GeoJSON.

        ``items``: per chip ``sample_id``, ``source``, ``meta`` (as :meth:`read` wrote it:
        ``raster``, ``crs``, ``raster_transform``), ``affine`` (chip px -> map) and
        ``detections`` (``boxes`` chip px ``[N, 4]``, ``scores`` ``[N]``, ``labels`` ``[N]``).
        Chip boxes go to raster pixels through ``affine`` and the raster's inverse transform,
        overlapping duplicates are removed by class-wise NMS (``merge_iou``), and each raster
        gets ``<stem>.predictions.geojson`` in its CRS (legacy ``crs`` member unless WGS84) and,
        with ``export_wgs84``, ``<stem>.predictions.wgs84.geojson`` (RFC 7946). Features are
        Polygons with properties ``class``, ``label``, ``score``, ``source``.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        groups: dict[str, list[dict[str, Any]]] = {}
        for item in items:
            groups.setdefault(item["meta"]["raster"], []).append(item)
        written = []
        for rel, group in sorted(groups.items()):
            meta = group[0]["meta"]
            crs = CRS.from_user_input(meta["crs"])
            transform = Affine(*meta["raster_transform"])
            inverse = ~transform
            boxes, scores, labels = [], [], []
            for item in group:
                det = item["detections"]
                b = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
                if not len(b):
                    continue
                corners = pixel_to_world(item["affine"], np.concatenate([b[:, :2], b[:, 2:]]))
                cols, rows = inverse @ (corners[:, 0], corners[:, 1])
                cols, rows = np.asarray(cols).reshape(2, -1), np.asarray(rows).reshape(2, -1)
                boxes.append(np.stack([cols.min(0), rows.min(0), cols.max(0), rows.max(0)], 1))
                scores.append(np.asarray(det["scores"], dtype=np.float64).reshape(-1))
                labels.append(np.asarray(det["labels"], dtype=np.int64).reshape(-1))
            if boxes:
                boxes_a, scores_a, labels_a = (
                    np.concatenate(boxes),
                    np.concatenate(scores),
                    np.concatenate(labels),
                )
                keep = class_wise_nms(boxes_a, scores_a, labels_a, float(self.params["merge_iou"]))
            else:
                boxes_a, scores_a, labels_a = np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)
                keep = np.zeros(0, dtype=np.int64)
            source = group[0]["source"]
            names = self._class_names
            features = [
                {
                    "type": "Feature",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [geojson.box_polygon(boxes_a[k], transform)],
                    },
                    "properties": {
                        "class": names[labels_a[k] - 1] if names else str(int(labels_a[k])),
                        "label": int(labels_a[k]),
                        "score": float(scores_a[k]),
                        "source": str(source),
                        "raster": rel,
                    },
                }
                for k in keep
            ]
            stem = Path(rel).with_suffix("").as_posix().replace("/", "__")
            written.append(
                geojson.write_feature_collection(
                    out_dir / f"{stem}.predictions.geojson", features, crs, stem
                )
            )
            if self.params["export_wgs84"]:
                written.append(
                    geojson.write_feature_collection(
                        out_dir / f"{stem}.predictions.wgs84.geojson",
                        geojson.to_wgs84(features, crs),
                        geojson.WGS84,
                        stem,
                    )
                )
        return written

    # --- pictures ----------------------------------------------------------------------
    def render(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]``: false colour (NIR, red, green) when those bands are channels,
        else the first three channels, else grey; each 2-98 % stretched."""
        image = np.asarray(image, dtype=np.float64)
        names = self._channel_names or []
        roles = self.params["band_roles"]
        want = [roles.get(r) for r in ("nir", "red", "green")]
        if len(names) == image.shape[0] and all(w in names for w in want):
            idx = [names.index(w) for w in want]
        elif image.shape[0] >= 3:
            idx = [0, 1, 2]
        else:
            idx = [0, 0, 0]
        out = np.empty(image.shape[1:] + (3,), dtype=np.uint8)
        for k, i in enumerate(idx):
            ch = image[i]
            lo, hi = np.percentile(ch, [2, 98]) if ch.size else (0.0, 1.0)
            out[..., k] = (np.clip((ch - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
        return out

    # --- demo --------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Synthetic 8-band UTM GeoTIFFs + WGS84 GeoJSON labels; see
        :func:`modalities.multispectral.demo.write_demo`."""
        from modalities.multispectral.demo import write_demo

        return write_demo(out_dir, num_images=num_images, image_size=image_size, seed=seed)


def class_wise_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Indices (int64 ``[K]``) of boxes (``[N, 4]`` xyxy) kept by per-class greedy NMS, by
    decreasing score; a thin numpy wrapper of :func:`dsod_core.boxes.batched_nms`."""
    keep = batched_nms(
        torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4),
        torch.as_tensor(np.asarray(scores, dtype=np.float64)).reshape(-1),
        torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1),
        float(iou_threshold),
    )
    return keep.numpy().astype(np.int64)
