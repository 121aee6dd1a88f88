"""The labels of one raster or band-stack scene, as the adapter reads them in ``discover`` and
``scene_labels``: its label file (one per raster, or one shared file split by image), the
reader of ``label_format`` (GeoJSON/xView/DOTA through :mod:`.labels`, COCO through
:mod:`.coco`, YOLO through :mod:`.yolo`), then ``class_map``, ``unknown_class``,
``keep_difficult`` and the outside-raster report, down to ``(class name, raster-pixel box,
difficult)`` per kept label.

Each function takes the :class:`~modalities.multispectral.adapter.MultispectralAdapter`, whose
per-discover state (shared files parsed once, COCO images matched, background counts) it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.crs import CRS

from dsod_core.errors import ConfigError, DataError
from modalities.formats import yolo as yolo_format
from modalities.multispectral import coco as coco_labels
from modalities.multispectral import labels as label_files
from modalities.multispectral import scene as scene_io
from modalities.multispectral import splits as split_lists
from modalities.multispectral import yolo as yolo_labels

if TYPE_CHECKING:
    from modalities.multispectral.adapter import MultispectralAdapter
    from modalities.multispectral.geotiff import RasterInfo

Feature = tuple[str, np.ndarray, bool]  # (class name, raster-pixel box xyxy, difficult)
Entry = label_files.Entry


def label_path(adapter: MultispectralAdapter, info: RasterInfo) -> Path:
    """The label file of a raster or scene (``labels_pattern``), resolved inside root."""
    p = adapter.params
    rel = label_files.label_rel(info.rel, p.labels_pattern, adapter._stem(info), p.shared_labels)
    return adapter.resolve_inside_root(rel, info.path)


def parse_labels(adapter: MultispectralAdapter, lpath: Path) -> tuple[CRS | None, list[Entry]]:
    """The entries of one label file in ``label_format``; the CRS of map geometries
    (geojson) or None for pixel boxes (xview, dota)."""
    p = adapter.params
    if p.label_format == "coco":
        return None, coco_labels.read_coco(adapter, lpath)
    return label_files.parse_labels(
        lpath, p.label_format, p.class_property, p.image_key, p.shared_labels
    )


def yolo_names(adapter: MultispectralAdapter) -> list[str]:
    """The class names of YOLO indices: ``yolo_names`` (data.yaml or classes.txt) or
    ``class_names``; ConfigError when neither is set."""
    p = adapter.params
    if p.yolo_names:
        where = adapter.resolve_inside_root(p.yolo_names, adapter.root)
        return yolo_format.read_yolo_names(where, shown=where)
    if not p.class_names:
        raise ConfigError(
            "multispectral adapter param 'yolo_names': label_format yolo needs the class "
            "names of its indices: set yolo_names (data.yaml or classes.txt) or class_names"
        )
    return list(p.class_names)


def coco_entries(adapter: MultispectralAdapter, lpath: Path, info: RasterInfo) -> list[Entry]:
    """The entries of the shared COCO file whose image names this raster or scene
    (:func:`coco.matches`); the file's images matching no unit are reported at the end
    of discovery (:func:`coco_unmatched`)."""
    shared = adapter._shared
    if lpath not in shared:
        shared[lpath] = (None, label_files.by_image(coco_labels.read_coco(adapter, lpath)))
    groups = shared[lpath][1]
    aliases = split_lists.aliases(info)
    keys = [k for k in groups if coco_labels.matches(k, aliases)]
    adapter._coco_matched.update(keys)
    images = [k for k in getattr(adapter, "coco_images", []) if coco_labels.matches(k, aliases)]
    adapter._coco_matched.update(images)
    return [e for k in keys for e in groups[k]]


def coco_unmatched(adapter: MultispectralAdapter, lpath: Path) -> None:
    """Count the COCO images that name no raster or scene: one warning
    (``unmatched: skip``) or an error (``unmatched: error``)."""
    images = getattr(adapter, "coco_images", [])
    missing = [k for k in images if k not in adapter._coco_matched]
    if not missing:
        return
    msg = (
        f"{len(missing)} of {len(images)} COCO image(s) match no raster or scene "
        f"by file name or stem (first: {missing[:3]})"
    )
    if adapter.params.unmatched == "error":
        raise DataError(msg, path=lpath)
    adapter.log.warn(msg + "; their annotations are not used (unmatched: skip)", lpath)


def label_entries(
    adapter: MultispectralAdapter, info: RasterInfo
) -> tuple[Path, CRS | None, list[Entry]]:
    """The label file of a raster and its entries; from a shared label file, the entries
    whose image property equals the raster's file name, stem or path under root."""
    p = adapter.params
    lpath = label_path(adapter, info)
    if p.label_format == "yolo":  # a missing txt: a raster without objects
        names = yolo_names(adapter)
        return lpath, None, yolo_labels.read_yolo(lpath, names, info.width, info.height)
    if not lpath.is_file():
        if p.require_labels:
            raise DataError(f"label file {lpath.name} not found", path=info.path)
        return lpath, None, []
    if not p.shared_labels:
        return (lpath, *parse_labels(adapter, lpath))
    if p.label_format == "coco":
        return lpath, None, coco_entries(adapter, lpath, info)
    if lpath not in adapter._shared:
        crs, entries = parse_labels(adapter, lpath)
        adapter._shared[lpath] = (crs, label_files.by_image(entries))
    crs, by_image = adapter._shared[lpath]
    mine = label_files.entries_of_image(by_image, info.rel, adapter._stem(info))
    if not mine:
        adapter.log.warn(
            f"no feature has {p.image_key}={Path(info.rel).name!r} (or the raster's stem or "
            f"path); raster {info.rel} is read unlabelled",
            lpath,
        )
    return lpath, crs, mine


def read_labels(adapter: MultispectralAdapter, info: RasterInfo) -> list[Feature]:
    """(class name, raster-pixel box, difficult) of every label of the raster that
    touches it."""
    p = adapter.params
    lpath, src_crs, entries = label_entries(adapter, info)
    known = adapter._class_names
    kept = []
    for where, _, found, geom, difficult in entries:
        cls = p.class_map.get(found, found) if found in p.class_map else found
        if not cls:  # class_map drops it
            adapter._background["class_map_dropped"] += 1
            continue
        if known is not None and cls not in known:
            if p.unknown_class == "error":
                raise DataError(
                    f"{where} has class {cls!r}, not in class_names {known}", path=lpath
                )
            adapter.log.warn(f"{where} of unknown class {cls!r} skipped", lpath)
            continue
        if difficult and not p.keep_difficult:
            continue
        kept.append((cls, geom, difficult))
    geoms = [g for _, g, _ in kept]
    boxes = label_files.pixel_boxes(geoms, src_crs, info.crs, info.transform, lpath)
    inside = label_files.inside_raster(boxes, info.width, info.height)
    report = label_files.outside_report(inside, info.rel, info.width, info.height, info.crs)
    if report is not None:
        msg, none_inside = report
        if none_inside and p.labels_outside == "error":
            raise DataError(msg, path=lpath)
        adapter.log.warn(msg, lpath)
    return [(cls, box, diff) for (cls, _, diff), box, ok in zip(kept, boxes, inside) if ok]


def scene_labels(
    adapter: MultispectralAdapter, info: RasterInfo, labels: Path, class_names: list[str]
) -> dict[str, np.ndarray]:
    """A label file's objects on one raster in raster pixels (``boxes``, ``labels`` 1..K of
    ``class_names``, ``difficult``); classes not in ``class_names`` are left out."""
    p = adapter.params
    crs, entries = None, None
    if labels.is_file() and p.label_format == "yolo":
        entries = yolo_labels.read_yolo(labels, yolo_names(adapter), info.width, info.height)
    elif labels.is_file():
        crs, entries = parse_labels(adapter, labels)
    if entries is None:
        raise DataError("labels file not found", path=labels)
    if p.label_format == "coco":
        aliases = split_lists.aliases(info)
        mine = [e for e in entries if coco_labels.matches(str(e[1]), aliases)]
        entries = mine or entries
    elif p.shared_labels or p.image_key:
        groups = label_files.by_image(entries)
        entries = label_files.entries_of_image(groups, info.rel, adapter._stem(info)) or entries
    return scene_io.labels_on_raster(entries, crs, info, labels, class_names)
