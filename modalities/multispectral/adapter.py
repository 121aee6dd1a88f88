"""The multispectral adapter: GeoTIFF rasters + GeoJSON labels -> chips -> GeoJSON predictions.

One unit is one raster: :meth:`MultispectralAdapter.discover` lists one :class:`SampleRef` per
raster (header and labels read, size checked, chips chosen); :meth:`MultispectralAdapter.read`
checks that the whole raster decodes, then yields its chips. See
``docs/modalities/multispectral.md`` for the data layout and every parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.windows import Window

from dsod_core.data.sample import Sample
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, PrepareLog, SampleRef, assign_split, split_hash
from modalities.formats.groups import group_of
from modalities.formats.unit_groups import hash_key
from modalities.multispectral import (
    background,
    bandstack,
    chips,
    formats,
    geotiff,
    s2_metadata,
    unit_labels,
)
from modalities.multispectral import scene as scene_io
from modalities.multispectral import splits as split_lists
from modalities.multispectral.geotiff import RasterInfo
from modalities.multispectral.params import (
    DERIVED,
    MultispectralDetectParams,
    MultispectralParams,
)
from modalities.multispectral.tiling import boxes_in_chip, chip_windows

_Feature = unit_labels.Feature
_Entry = unit_labels.Entry


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
    detect_module = "modalities.multispectral.detect"
    DetectParams = MultispectralDetectParams
    output_suffixes = (".tif", ".tiff", ".vrt", ".jp2", ".img")
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
        # Shared label file (no '{stem}'): parsed once, (CRS or None, image id -> entries).
        self._shared: dict[Path, tuple[CRS | None, dict[str, list[_Entry]]]] = {}
        self._noted: set[tuple[str, str]] = set()  # (file, GDAL message) already reported
        self._background: dict[str, int] = background.new_counts()
        self._coco_matched: set[str] = set()  # COCO file names matched to a raster/scene

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
    @contextmanager
    def _open_source(self, path: Path, stack: Mapping[str, Any] | None) -> Iterator[Any]:
        """A raster file (``geotiff.open_raster``) or, for a band stack's scene, its
        :class:`bandstack.BandStack` (same reading interface) on the reference grid."""
        notes: list[str] = []
        if stack is None:
            with geotiff.open_raster(path, notes) as ds:
                self._gdal_notes(notes, path)
                yield ds
            return
        p = self.params
        files = {b: self.resolve_inside_root(f, path) for b, f in stack["files"].items()}
        scene = bandstack.Scene(p.stack, stack["folder"], stack["scene_id"], dict(stack["files"]))
        rad = s2_metadata.radiometry(
            self.root, scene, list(files), p.boa_add_offset, p.boa_quantification
        )
        nodata = s2_metadata.scene_nodata(self.root, scene, list(files), p.nodata)
        with bandstack.BandStack(files, p.stack_reference, rad, nodata) as ds:
            self._gdal_notes(ds.notes, path)
            yield ds

    def _gdal_notes(self, notes: list[str], path: Path) -> None:
        """GDAL's warnings about ``path`` (:func:`geotiff.capture_gdal`) into the report,
        each distinct one once per file."""
        for note in dict.fromkeys(notes):
            key = (str(path), note)
            if key not in self._noted:
                self._noted.add(key)
                self.log.warn(f"GDAL: {note}", path)

    @contextmanager
    def _gdal(self, path: Path) -> Iterator[None]:
        """Capture GDAL's warnings of a block of reads into the report (:meth:`_gdal_notes`)."""
        with geotiff.capture_gdal() as notes:
            yield
        self._gdal_notes(notes, path)

    def _open_info(
        self, path: Path, rel: str | None = None, stack: Mapping[str, Any] | None = None
    ) -> RasterInfo:
        """The raster's header: declared size checked first (``max_pixels``), then CRS,
        geotransform and bands. For a band stack, ``path`` is the scene folder and the
        info's path becomes the reference band's file."""
        p = self.params
        with self._open_source(path, stack) as ds:
            self.check_declared_size(
                path,
                ds.width * ds.height,
                p.max_pixels,
                f"{ds.width} x {ds.height} px",
                "max_pixels",
            )
            rel = rel or path.relative_to(self.root).as_posix()
            info = geotiff.raster_info(
                ds, path, rel, p.bands, p.roles, p.derived, p.pixel_labels, p.nodata
            )
            if stack is not None:
                ref_file = ds.paths[ds.names.index(ds.reference)]
                info = dataclasses.replace(info, path=ref_file, stack=dict(stack))
            return info

    def _stem(self, info: RasterInfo) -> str:
        return info.stack["scene_id"] if info.stack else Path(info.rel).stem

    def _stack_bands(self) -> list[str]:
        """The band names a stack opens: ``bands``, then the role bands of ``derived``."""
        p = self.params
        return bandstack.stack_bands(p.bands, p.derived, p.roles, DERIVED)

    def _units(self) -> list[tuple[Path, str, bandstack.Scene | None]]:
        """(path, id under root, scene or None) of every raster file or band-stack scene:
        ``units`` of the raster format (:func:`modalities.multispectral.formats.raster_format`:
        ``geotiff.units`` or ``bandstack.units``)."""
        return formats.FORMATS[formats.raster_format(self.params)].units(self)

    def _unit_info(self, path: Path, rel: str, scene: bandstack.Scene | None) -> RasterInfo:
        if scene is None:
            return self._open_info(path, rel)
        return self._open_info(path, rel, bandstack.scene_stack(scene, self._stack_bands(), path))

    def discover(self) -> list[SampleRef]:
        """One :class:`SampleRef` per raster matching ``raster_glob`` (or band-stack scene;
        ``discover`` of the raster format in :data:`modalities.multispectral.formats.FORMATS`),
        headers and labels only, no pixels. ``meta["chips"]`` lists its kept chips: id,
        window, split, boxes, labels.

        Each raster is one unit of ``self.log.guard``: a bad header (unreadable, over
        ``max_pixels``, missing bands, another band layout) or a bad label file refuses that
        raster alone, as the prepare stage's ``on_error`` decides.
        """
        return formats.FORMATS[formats.raster_format(self.params)].discover(self)

    def _discover_units(
        self, units: list[tuple[Path, str, bandstack.Scene | None]]
    ) -> list[SampleRef]:
        """The refs of ``units`` (``(path, id under root, scene or None)`` listed by a raster
        format module): header, band layout and labels of each under ``self.log.guard``, then
        the class names and each raster's chips (:meth:`_raster_ref`)."""
        p = self.params
        skipped_before = len(self.log.skipped)
        kept: list[tuple[RasterInfo, list[_Feature]]] = []
        for path, rel, scene in units:
            with self.log.guard(path, unit="raster" if scene is None else "scene"):
                info = self._unit_info(path, rel, scene)
                if self._channel_names is not None and info.channel_names != self._channel_names:
                    raise DataError(
                        f"band layout {info.channel_names} differs from the first raster's "
                        f"{self._channel_names}",
                        path=path,
                    )
                feats = unit_labels.read_labels(self, info)
                info.group = group_of(info.rel, p.group_by, path=path)  # None without group_by
                self._channel_names = info.channel_names
                self._rasters[info.rel] = info
                kept.append((info, feats))
        if not kept:
            first = self.log.skipped[skipped_before]
            what = f"raster matching {p.raster_glob!r}" if p.stack == "none" else "scene"
            raise DataError(
                f"every {what} was refused ({len(units)}); the first: {first['reason']}",
                path=first["file"],
            )
        if self._class_names is None:
            self._class_names = sorted({c for _, feats in kept for c, _, _ in feats})
            if not self._class_names:
                raise DataError("no labelled features in any label file", path=self.root)
        splits = None
        if p.split_files:
            splits = split_lists.listed_splits(self, (info for info, _ in kept))
            kept = [(info, feats) for info, feats in kept if info.rel in splits]
        if p.label_format == "coco":
            unit_labels.coco_unmatched(self, self.resolve_inside_root(p.labels_pattern, self.root))
        refs = [
            self._raster_ref(info, feats, None if splits is None else splits[info.rel])
            for info, feats in kept
        ]
        background.report(self._background, self.log, self.root, p.empty_chip_rate)
        return [r for r in refs if r.meta["chips"]]

    def _raster_ref(
        self, info: RasterInfo, feats: list[_Feature], listed: str | None = None
    ) -> SampleRef:
        """The raster's ref: its chips (windows with their boxes), empty ones kept at
        ``empty_chip_rate`` by a stable hash, each with its split (``listed``: the raster's
        split from ``split_files``, for all its chips; else the split hash of its group
        (``group_by``), or of the raster)."""
        p = self.params
        boxes = np.array([b for _, b, _ in feats], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self._class_names.index(c) + 1 for c, _, _ in feats], dtype=np.int64)
        difficult = np.array([d for _, _, d in feats], dtype=bool)
        key = hash_key(info.rel, info.group)
        raster_split = listed or assign_split(key, p.val_fraction, p.test_fraction, p.seed)
        bg = self._background
        bg["units"] += 1
        bg["background_units"] += not feats
        stem = info.rel if info.stack else Path(info.rel).with_suffix("").as_posix()
        chips = []
        for win in chip_windows(info.width, info.height, p.chip_size, p.overlap):
            col, row = int(win.col_off), int(win.row_off)
            key = f"{info.rel}@{col},{row}"
            # Indexes ride through as "labels" so each kept box keeps its label and flag.
            chip_boxes, kept_idx = boxes_in_chip(
                boxes, np.arange(len(labels)), win, (info.width, info.height), p.min_visible
            )
            # Deterministic keep/drop of empty chips: a stable hash, not a global RNG.
            empty = not len(chip_boxes)
            drop = empty and split_hash(f"empty:{key}", p.seed) >= p.empty_chip_rate
            bg["empty_chips_dropped" if drop else "empty_chips_kept" if empty else
               "chips_with_objects"] += 1  # fmt: skip
            if drop:
                continue
            split = (
                raster_split
                if p.split_by == "raster" or listed
                else assign_split(key, p.val_fraction, p.test_fraction, p.seed)
            )
            chips.append(
                {
                    "id": f"{stem}_c{col}_r{row}",
                    "split": split,
                    "window": [col, row, int(win.width), int(win.height)],
                    "boxes": chip_boxes.tolist(),
                    "labels": labels[kept_idx].tolist(),
                    "difficult": difficult[kept_idx].tolist(),
                }
            )
        return SampleRef(
            ref_id=stem,
            split=raster_split,
            paths={"image": info.path},
            meta={"raster": info.rel, "chips": chips, "stack": info.stack, "group": info.group},
        )

    # --- reading -----------------------------------------------------------------------
    def _info_for(self, ref: SampleRef) -> RasterInfo:
        rel = ref.meta["raster"]
        if rel not in self._rasters:
            stack = ref.meta.get("stack")
            path = self.root / stack["folder"] if stack else Path(ref.paths["image"])
            info = self._open_info(path, rel, stack)
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
        p = self.params
        return chips.read_chip(ds, info, window, stats, p.derived, p.rescale, self._gdal(info.path))

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
        with self._open_source(info.path, info.stack) as ds:
            with self._gdal(info.path):
                geotiff.verify_readable(ds, info)
            stats = self.scene_stats(ds, info)
            units = "reflectance (percentile-clipped" + (
                ", rescaled to [0, 1])" if p.rescale else ")"
            )
            for chip in ref.meta["chips"]:
                col, row, w, h = chip["window"]
                image, valid = self._read_chip(ds, info, Window(col, row, w, h), stats)
                sample = chips.chip_sample(info, chip, image, valid, units)
                # the raster's group (group_by); split_by: chip declares every chip its own
                # unit (the user's choice for one big raster; docs: it leaks neighbourhoods)
                sample.group = sample.sample_id if p.split_by == "chip" else ref.meta.get("group")
                sample.validate(
                    num_channels=len(self.channel_names), num_classes=len(self.class_names)
                )
                yield sample

    # --- the file-level API (dsod detect reads scenes through it) ------------------------
    def raster_units(self, path: Path) -> list[tuple[Path, str, bandstack.Scene | None]]:
        """``(path, id, scene or None)`` of the rasters of one detect input: a raster, a
        folder of rasters (``raster_glob``) or, with ``stack``, a scene folder."""
        p = self.params
        path = Path(path)
        if p.stack != "none":
            if not path.is_dir():
                msg = f"the model reads band stacks (stack: {p.stack}): give the scene's folder"
                raise DataError(msg, path=path)
            return type(self)(path, p)._units()
        if path.is_file():
            return [(path, path.name, None)]
        found = sorted(
            q
            for q in path.glob(p.raster_glob)
            if q.is_file()
            and (formats.claims_raster(q) or (p.pixel_labels and geotiff.claims_image(q)))
        )
        if not found:
            raise DataError(f"no rasters match {p.raster_glob!r}", path=path)
        return [(q, q.relative_to(path).as_posix(), None) for q in found]

    def open_raster(self, path: Path, rel: str, scene: bandstack.Scene | None) -> RasterInfo:
        return self._unit_info(path, rel, scene)  # the header: max_pixels, CRS, bands

    @contextmanager
    def open_pixels(self, info: RasterInfo) -> Iterator[Any]:
        """The open raster (or band stack) of ``info``, read window by window."""
        with self._open_source(info.path, info.stack) as ds:
            yield ds

    def scene_stats(self, ds: Any, info: RasterInfo) -> tuple[np.ndarray, ...]:
        """Per-band clip range and fill of a raster, as prepare scales chips by them."""
        p = self.params
        with self._gdal(info.path):
            return geotiff.raster_stats(ds, info, p.derived, p.stats_size, p.clip_percentiles)

    def read_window(
        self, ds: Any, info: RasterInfo, window: Window, stats: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """One window as a chip: (image float32 ``[C, S, S]``, valid bool ``[S, S]``)."""
        return self._read_chip(ds, info, window, stats)

    def scene_labels(
        self, info: RasterInfo, labels: Path, class_names: list[str]
    ) -> dict[str, np.ndarray]:
        """A label file's objects on one raster in raster pixels (``boxes``, ``labels``
        1..K of ``class_names``, ``difficult``); classes not in ``class_names`` are left out."""
        return unit_labels.scene_labels(self, info, labels, class_names)

    # --- back to the map ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "channel_names": self.channel_names}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._class_names = list(state["class_names"])
        if state.get("channel_names") is not None:
            self._channel_names = list(state["channel_names"])

    def merge(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Chip detections -> one set per raster in raster pixels (:func:`scene.merge_chips`:
        the house's tile merge, ``dsod_core.tiling.merge_tiles``, at ``merge_iou`` and
        ``merge_containment``): the same rule for a prepared store's chips (the evaluate stage)
        and for the windows of ``dsod detect``."""
        return scene_io.merge_chips(items, self.params.merge_iou, self.params.merge_containment)

    def write_scene(
        self, unit: Mapping[str, Any], out_dir: Path, stem: str, wgs84: bool
    ) -> list[Path]:
        """The GeoJSON outputs of one merged raster (:func:`scene.write_scene`): the evaluate
        stage and ``dsod detect`` both write through here."""
        return scene_io.write_scene(unit, self.class_names, out_dir, stem, wgs84)

    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
        """The evaluate stage's world outputs: per raster the merged detections of
        :meth:`merge` written by :meth:`write_scene` as ``<raster id>.geojson`` (``/`` in
        the id as ``__``), with the WGS84 copy when ``export_wgs84``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for unit in merged if merged is not None else self.merge(items):
            stem = Path(unit["unit"]).with_suffix("").as_posix().replace("/", "__")
            written += self.write_scene(unit, out_dir, stem, self.params.export_wgs84)
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
