"""The multispectral adapter: GeoTIFF rasters + GeoJSON labels -> chips -> GeoJSON predictions.

One unit is one raster: :meth:`MultispectralAdapter.discover` lists one :class:`SampleRef` per
raster (header and labels read, size checked, chips chosen); :meth:`MultispectralAdapter.read`
checks that the whole raster decodes, then yields its chips. See
``docs/modalities/multispectral.md`` for the data layout and every parameter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, PrepareLog, SampleRef, assign_split
from modalities.multispectral import geojson, geotiff
from modalities.multispectral.geotiff import RasterInfo
from modalities.multispectral.params import MultispectralParams
from modalities.multispectral.tiling import boxes_in_chip, chip_windows, class_wise_nms

_Feature = tuple[str, np.ndarray]  # (class name, raster-pixel box xyxy)


def _unit_hash(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) from ``key`` (same on every machine)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
    Params = MultispectralParams
    world_units = "crs"
    params: MultispectralParams

    def __init__(
        self,
        root: str | Path,
        params: Mapping[str, Any] | MultispectralParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        super().__init__(root, params, log=log)
        self._channel_names: list[str] | None = None
        self._class_names: list[str] | None = (
            list(self.params.class_names) if self.params.class_names else None
        )
        self._rasters: dict[str, RasterInfo] = {}

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
    def _open_info(self, path: Path) -> RasterInfo:
        """The raster's header: declared size checked first (``max_pixels``), then CRS,
        geotransform and bands."""
        p = self.params
        with geotiff.open_raster(path) as ds:
            self.check_declared_size(
                path,
                ds.width * ds.height,
                p.max_pixels,
                f"{ds.width} x {ds.height} px",
                "max_pixels",
            )
            rel = path.relative_to(self.root).as_posix()
            return geotiff.raster_info(ds, path, rel, p.bands, p.roles, p.derived)

    def _label_path(self, raster: Path) -> Path:
        rel = raster.parent.relative_to(self.root) / self.params.label_pattern.format(
            stem=raster.stem
        )
        return self.resolve_inside_root(rel, raster)

    def discover(self) -> list[SampleRef]:
        """One :class:`SampleRef` per raster matching ``raster_glob`` (headers and labels only;
        no pixels). ``meta["chips"]`` lists its kept chips: id, window, split, boxes, labels.

        Each raster is one unit of ``self.log.guard``: a bad header (unreadable, over
        ``max_pixels``, missing bands, another band layout) or a bad label file refuses that
        raster alone, as the prepare stage's ``on_error`` decides.
        """
        p = self.params
        paths = sorted(q for q in self.root.glob(p.raster_glob) if q.is_file())
        if not paths:
            raise DataError(f"no rasters match {p.raster_glob!r}", path=self.root)
        skipped_before = len(self.log.skipped)
        kept: list[tuple[RasterInfo, list[_Feature]]] = []
        for path in paths:
            with self.log.guard(path, unit="raster"):
                info = self._open_info(path)
                if self._channel_names is not None and info.channel_names != self._channel_names:
                    raise DataError(
                        f"band layout {info.channel_names} differs from the first raster's "
                        f"{self._channel_names}",
                        path=path,
                    )
                feats = self._read_labels(info)
                self._channel_names = info.channel_names
                self._rasters[info.rel] = info
                kept.append((info, feats))
        if not kept:
            first = self.log.skipped[skipped_before]
            raise DataError(
                f"every raster matching {p.raster_glob!r} was refused ({len(paths)}); the first: "
                f"{first['reason']}",
                path=first["file"],
            )
        if self._class_names is None:
            self._class_names = sorted({c for _, feats in kept for c, _ in feats})
            if not self._class_names:
                raise DataError("no labelled features in any label file", path=self.root)
        refs = [self._raster_ref(info, feats) for info, feats in kept]
        return [r for r in refs if r.meta["chips"]]

    def _read_labels(self, info: RasterInfo) -> list[_Feature]:
        """(class name, raster-pixel box) of every feature of the raster's label file that
        touches the raster."""
        p = self.params
        lpath = self._label_path(info.path)
        if not lpath.is_file():
            if p.require_labels:
                raise DataError(f"label file {lpath.name} not found", path=info.path)
            return []
        src_crs, feats = geojson.read_label_features(lpath, p.class_property)
        kept = []
        for i, cls, geom in feats:
            if self._class_names is not None and cls not in self._class_names:
                if p.unknown_class == "error":
                    raise DataError(
                        f"feature {i} has class {cls!r}, not in class_names {self._class_names}",
                        path=lpath,
                    )
                self.log.warn(f"feature {i} of unknown class {cls!r} skipped", lpath)
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
            if p.labels_outside == "error":
                raise DataError(msg, path=lpath)
            self.log.warn(msg, lpath)
        elif (~inside).any():
            self.log.warn(
                f"{int((~inside).sum())} of {len(kept)} features lie outside raster "
                f"{info.rel} (or are degenerate) and are ignored",
                lpath,
            )
        return [(cls, box) for (_, cls, _), box, ok in zip(kept, boxes, inside) if ok]

    def _raster_ref(self, info: RasterInfo, feats: list[_Feature]) -> SampleRef:
        """The raster's ref: its chips (windows with their boxes), empty ones kept at
        ``empty_chip_rate`` by a stable hash, each with its split."""
        p = self.params
        boxes = np.array([b for _, b in feats], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self._class_names.index(c) + 1 for c, _ in feats], dtype=np.int64)
        raster_split = assign_split(info.rel, p.val_fraction, p.test_fraction, p.seed)
        stem = Path(info.rel).with_suffix("").as_posix()
        chips = []
        for win in chip_windows(info.width, info.height, p.chip_size, p.overlap):
            col, row = int(win.col_off), int(win.row_off)
            key = f"{info.rel}@{col},{row}"
            chip_boxes, chip_labels = boxes_in_chip(
                boxes, labels, win, (info.width, info.height), p.min_visible
            )
            # Deterministic keep/drop of empty chips: a stable hash, not a global RNG.
            if not len(chip_boxes) and _unit_hash(f"empty:{key}", p.seed) >= p.empty_chip_rate:
                continue
            split = (
                raster_split
                if p.split_by == "raster"
                else assign_split(key, p.val_fraction, p.test_fraction, p.seed)
            )
            chips.append(
                {
                    "id": f"{stem}_c{col}_r{row}",
                    "split": split,
                    "window": [col, row, int(win.width), int(win.height)],
                    "boxes": chip_boxes.tolist(),
                    "labels": chip_labels.tolist(),
                }
            )
        return SampleRef(
            ref_id=stem,
            split=raster_split,
            paths={"image": info.path},
            meta={"raster": info.rel, "chips": chips},
        )

    # --- reading -----------------------------------------------------------------------
    def _info_for(self, ref: SampleRef) -> RasterInfo:
        rel = ref.meta["raster"]
        if rel not in self._rasters:
            info = self._open_info(Path(ref.paths["image"]))
            if self._channel_names is None:
                self._channel_names = info.channel_names
            self._rasters[rel] = info
        return self._rasters[rel]

    def _read_chip(
        self, ds: Any, info: RasterInfo, window: Window, stats: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One chip, read by window: (image float32 ``[C, S, S]``, valid bool ``[S, S]``).

        The part of the window beyond the raster (only for rasters smaller than a chip) is
        padded as no-data."""
        col, row, w, h = (
            int(v) for v in (window.col_off, window.row_off, window.width, window.height)
        )
        rw, rh = min(w, info.width - col), min(h, info.height - row)
        raw, masks = geotiff.read_window(ds, info, Window(col, row, rw, rh))
        data, valid_in = geotiff.to_physical(info, raw, masks)
        lo, hi, fill = stats
        chans = geotiff.channels(info, data, self.params.derived)
        chans = np.clip(chans, lo[:, None, None], hi[:, None, None])
        chans = np.where(valid_in[None], chans, fill[:, None, None])
        if self.params.rescale:
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
        """Read one raster (``ref`` from :meth:`discover`) into one :class:`Sample` per chip.

        Before the first chip, every internal block of every band read is decoded
        (:func:`geotiff.verify_readable`): a corrupt tile anywhere, even where no chip is kept,
        raises :class:`DataError` naming the raster and GDAL's reason, so the raster is refused
        or skipped whole, never half-read. Then the statistics (decimated read) and the chips
        (windowed reads) follow, one open file throughout.
        """
        info = self._info_for(ref)
        p = self.params
        with geotiff.open_raster(info.path) as ds:
            geotiff.verify_readable(ds, info)
            stats = geotiff.raster_stats(ds, info, p.derived, p.stats_size, p.clip_percentiles)
            units = "reflectance (percentile-clipped" + (
                ", rescaled to [0, 1])" if p.rescale else ")"
            )
            for chip in ref.meta["chips"]:
                col, row, w, h = chip["window"]
                image, valid = self._read_chip(ds, info, Window(col, row, w, h), stats)
                t = info.transform @ Affine.translation(col, row)
                affine = np.array(
                    [
                        [t.a, t.b, 0.0, t.c],
                        [t.d, t.e, 0.0, t.f],
                        [0.0, 0.0, 1.0, 0.0],
                        [0.0, 0.0, 0.0, 1.0],
                    ]
                )
                sample = Sample(
                    image=image,
                    boxes=np.asarray(chip["boxes"], dtype=np.float32).reshape(-1, 4),
                    labels=np.asarray(chip["labels"], dtype=np.int64),
                    sample_id=chip["id"],
                    source=str(info.path),
                    split=chip["split"],
                    affine=affine,
                    valid=valid,
                    meta={
                        "raster": info.rel,
                        "window": [col, row, w, h],
                        "crs": info.crs.to_string(),
                        "raster_transform": list(info.transform)[:6],
                        "raster_size": [info.width, info.height],
                        "units": units,
                    },
                )
                sample.validate(
                    num_channels=len(self.channel_names), num_classes=len(self.class_names)
                )
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
                keep = class_wise_nms(boxes_a, scores_a, labels_a, self.params.merge_iou)
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
            if self.params.export_wgs84:
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
        roles = self.params.roles
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
