"""One raster as a whole: its labels in raster pixels and its merged detections as GeoJSON
(what the evaluate stage and ``dsod detect`` write for a scene, through one function)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine

from dsod_core.tiling import TileDetections, merge_tiles
from modalities.multispectral import geojson
from modalities.multispectral import labels as label_files


def labels_on_raster(
    entries: list, crs: CRS | None, info: Any, path: Path, class_names: list[str]
) -> dict[str, np.ndarray]:
    """Label entries (``labels.Entry``) of one raster in its pixels: ``boxes``, ``labels``
    1..K of ``class_names``, ``difficult``; other classes and boxes off the raster are left
    out."""
    kept = [(cls, geom, diff) for _, _, cls, geom, diff in entries if cls in class_names]
    boxes = label_files.pixel_boxes([g for _, g, _ in kept], crs, info.crs, info.transform, path)
    inside = label_files.inside_raster(boxes, info.width, info.height)
    labels = np.array([class_names.index(c) + 1 for c, _, _ in kept], dtype=np.int64)
    return {
        "boxes": boxes[inside].astype(np.float64),
        "labels": labels[inside],
        "difficult": np.array([d for _, _, d in kept], dtype=bool)[inside],
    }


def features(unit: Mapping[str, Any], class_names: list[str]) -> list[dict[str, Any]]:
    """GeoJSON Polygon features (raster CRS) of one merged raster
    (``MultispectralAdapter.merge``): properties ``class``, ``label``, ``score``, ``source``,
    ``raster`` (and ``units: "pixel"`` for a pixel-only raster: coordinates are pixels)."""
    transform = Affine(*unit["transform"])
    det = unit["detections"]
    extra = {"units": "pixel"} if unit.get("crs") is None else {}
    return [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [geojson.box_polygon(b, transform)]},
            "properties": {
                "class": class_names[int(k) - 1],
                "label": int(k),
                "score": round(float(sc), 6),
                "source": unit["source"],
                "raster": unit["unit"],
                **extra,
            },
        }
        for b, sc, k in zip(det["boxes"], det["scores"], det["labels"])
    ]


def write_scene(
    unit: Mapping[str, Any], class_names: list[str], out_dir: Path, stem: str, wgs84: bool
) -> list[Path]:
    """``<stem>.geojson`` in the raster's CRS (legacy ``crs`` member unless WGS84) and, with
    ``wgs84``, ``<stem>.wgs84.geojson`` (RFC 7946, no ``crs`` member), written atomically.

    A pixel-only raster (``unit["crs"]`` None) gives ``<stem>.geojson`` in pixel coordinates
    (x right, y down): no ``crs`` member, ``"units": "pixel"`` on the collection and on each
    feature; no WGS84 copy (there is no map position)."""
    feats = features(unit, class_names)
    out_dir = Path(out_dir)
    if unit.get("crs") is None:
        return [geojson.write_feature_collection(out_dir / f"{stem}.geojson", feats, None, stem)]
    crs = CRS.from_user_input(unit["crs"])
    written = [geojson.write_feature_collection(out_dir / f"{stem}.geojson", feats, crs, stem)]
    if wgs84:
        written.append(
            geojson.write_feature_collection(
                out_dir / f"{stem}.wgs84.geojson",
                geojson.to_wgs84(feats, crs),
                geojson.WGS84,
                stem,
            )
        )
    return written


def merge_chips(
    items: list[dict[str, Any]], iou: float, containment: float | None = None
) -> list[dict[str, Any]]:
    """Chip detections -> one set per raster, in raster pixels, by
    :func:`dsod_core.tiling.merge_tiles` (the core rule, then class-wise NMS at ``iou``,
    with its containment rule at ``containment``: a box lying that share inside a larger,
    higher-scored box of its class is dropped; 0 or None: off).
    ``items``: per chip ``source``, ``meta`` (as the adapter's ``read`` writes it: ``raster``,
    ``window``, ``crs``, ``raster_transform``, ``raster_size``) and ``detections`` in chip
    pixels. One entry per raster: ``unit`` (its id), ``source``, ``crs``, ``transform``,
    ``size`` and ``detections``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        groups.setdefault(item["meta"]["raster"], []).append(item)
    merged = []
    for rel, group in sorted(groups.items()):
        meta = group[0]["meta"]
        tiles = [
            TileDetections(
                (int(it["meta"]["window"][0]), int(it["meta"]["window"][1])),
                it["detections"]["boxes"],
                it["detections"]["scores"],
                it["detections"]["labels"],
            )
            for it in group
        ]
        merged.append(
            {
                "unit": rel,
                "source": str(group[0]["source"]),
                "crs": meta["crs"],
                "transform": list(meta["raster_transform"])[:6],
                "size": list(meta.get("raster_size", [])),
                "detections": merge_tiles(
                    tiles, int(meta["window"][2]), iou, containment=containment
                ),
            }
        )
    return merged
