"""GeoJSON in and out: label features -> raster pixel boxes; pixel boxes -> map polygons.

Reading follows RFC 7946 (coordinates are WGS84 longitude/latitude when the file has no
``crs`` member) and also accepts the legacy GeoJSON 2008 ``crs`` member
(``{"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}`` or
``{"type": "EPSG", "properties": {"code": 32633}}``), as QGIS and GDAL still write it.
Coordinates are x/east first in every CRS (GDAL's traditional GIS order, which rasterio uses).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.warp import transform_geom

from dsod_core.errors import DataError
from dsod_core.io import write_json
from modalities.formats import has_suffix, json_top_keys

WGS84 = CRS.from_epsg(4326)
_AREAL = ("Polygon", "MultiPolygon")


def parse_crs_member(member: Any, path: Path) -> CRS:
    """The CRS named by a GeoJSON ``crs`` member (absent -> WGS84, per RFC 7946)."""
    if member is None:
        return WGS84
    try:
        kind = member["type"]
        props = member["properties"]
        if kind == "name":
            return CRS.from_user_input(str(props["name"]))
        if kind == "EPSG":
            return CRS.from_epsg(int(props["code"]))
    except (KeyError, TypeError, ValueError, CRSError) as exc:
        raise DataError(f"unreadable GeoJSON 'crs' member {member!r} ({exc})", path=path) from exc
    raise DataError(f"unsupported GeoJSON 'crs' member type {kind!r} (use 'name')", path=path)


def crs_member(crs: CRS) -> dict[str, Any] | None:
    """The legacy ``crs`` member naming ``crs`` (None for WGS84, the RFC 7946 default)."""
    if crs == WGS84:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def _rings(geometry: dict[str, Any]) -> list[np.ndarray]:
    """Outer rings of a Polygon/MultiPolygon as float64 ``[K, 2]`` arrays (x, y)."""
    coords = geometry["coordinates"]
    polys = [coords] if geometry["type"] == "Polygon" else coords
    return [np.asarray(poly[0], dtype=np.float64)[:, :2] for poly in polys if len(poly)]


def _feature_geometry(feat: dict[str, Any], i: int, path: Path) -> dict[str, Any]:
    """Feature ``i``'s Polygon/MultiPolygon geometry (a null geometry with a ``bbox`` member
    becomes its box polygon); other geometries raise :class:`DataError`."""
    geom = feat.get("geometry")
    if geom is None and isinstance(feat.get("bbox"), list) and len(feat["bbox"]) >= 4:
        b = [float(v) for v in feat["bbox"]]
        xmin, ymin, xmax, ymax = (b[0], b[1], b[3], b[4]) if len(b) == 6 else b[:4]
        ring = [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]
        geom = {"type": "Polygon", "coordinates": [ring]}
    if not isinstance(geom, dict) or geom.get("type") not in _AREAL:
        kind = geom.get("type") if isinstance(geom, dict) else geom
        raise DataError(
            f"feature {i} has geometry {kind!r}; labels must be Polygon, MultiPolygon or "
            "a null geometry with a bbox",
            path=path,
        )
    return geom


def _check_coordinates(geom: dict[str, Any], i: int, crs: CRS, path: Path) -> None:
    """Refuse feature ``i``'s outer rings when malformed, empty, non-finite or (in a
    geographic ``crs``) outside the longitude/latitude range."""
    try:
        rings = _rings(geom)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise DataError(f"feature {i} has malformed coordinates ({exc})", path=path) from exc
    pts = np.concatenate(rings) if rings else np.zeros((0, 2))
    if len(pts) == 0 or not np.isfinite(pts).all():
        raise DataError(f"feature {i} has empty or non-finite coordinates", path=path)
    if crs.is_geographic and (np.abs(pts[:, 0]).max() > 180 or np.abs(pts[:, 1]).max() > 90):
        raise DataError(
            f"feature {i} has coordinates {pts[0].tolist()} outside longitude/latitude range "
            f"of {crs.to_string()}; projected coordinates need a 'crs' member",
            path=path,
        )


def read_label_features(
    path: Path, class_property: str, image_property: str | None = None
) -> tuple[CRS, list[tuple[int, str, dict[str, Any], str | None]]]:
    """Read a GeoJSON label file.

    Returns its CRS and ``(feature index, class name, geometry, image)`` per feature; ``image``
    is the value of ``image_property`` (the raster a feature of a shared label file belongs
    to; a feature without it is an error), None when ``image_property`` is None. Geometries are
    Polygon or MultiPolygon; a feature with a null geometry and a ``bbox`` member
    ``[xmin, ymin, xmax, ymax]`` becomes its box polygon. Raises :class:`DataError` naming the
    file for unreadable JSON, other geometry types, a missing class property, or coordinates
    impossible in the declared CRS (e.g. projected metres in a file without a ``crs`` member).
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read GeoJSON labels ({exc})", path=path) from exc
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise DataError("not a GeoJSON FeatureCollection or Feature", path=path)
    crs = parse_crs_member(doc.get("crs"), path)
    features = doc["features"] if doc["type"] == "FeatureCollection" else [doc]
    if not isinstance(features, list):
        raise DataError("'features' must be a list", path=path)
    out = []
    for i, feat in enumerate(features):
        if not isinstance(feat, dict):
            raise DataError(f"feature {i} is not an object", path=path)
        props = feat.get("properties") or {}
        if class_property not in props:
            raise DataError(f"feature {i} has no {class_property!r} property", path=path)
        if image_property is not None and image_property not in props:
            raise DataError(f"feature {i} has no {image_property!r} property", path=path)
        geom = _feature_geometry(feat, i, path)
        _check_coordinates(geom, i, crs, path)
        image = None if image_property is None else str(props[image_property])
        out.append((i, str(props[class_property]), geom, image))
    return crs, out


# --- the geojson label format of the multispectral modality ----------------------------------
SUFFIXES = (".geojson", ".json")


def claims(path: Path) -> bool:
    """A ``.geojson`` / ``.json`` object with a ``type`` and ``features`` (a FeatureCollection)
    or ``geometry`` (one Feature) at the top. Never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    keys = json_top_keys(path)
    return keys is not None and "type" in keys and bool({"features", "geometry"} & keys)


def read_labels(
    path: Path, class_property: str, image_key: str | None, shared: bool
) -> tuple[CRS, list[tuple[str, str | None, str, Any, bool]]]:
    """The label entries of one GeoJSON file (:data:`modalities.multispectral.labels.Entry`:
    where, image or None, class, map geometry, difficult False) and the CRS of the
    geometries; ``image_key`` is read only from a ``shared`` label file."""
    key = image_key if shared else None
    crs, feats = read_label_features(path, class_property, key)
    return crs, [(f"feature {i}", img, cls, geom, False) for i, cls, geom, img in feats]


def geometries_to_pixel_boxes(
    geometries: Sequence[dict[str, Any]],
    src_crs: CRS,
    dst_crs: CRS,
    transform: Affine,
    path: Path,
) -> np.ndarray:
    """Reproject geometries to the raster CRS and take their pixel bounding boxes.

    Args:
        geometries: GeoJSON Polygon/MultiPolygon dicts in ``src_crs``.
        dst_crs, transform: the raster's CRS and pixel->map affine.
    Returns:
        float64 ``[N, 4]`` xyxy in continuous raster pixels (may lie outside the raster).
    """
    if not geometries:
        return np.zeros((0, 4))
    try:
        projected = (
            list(geometries)
            if src_crs == dst_crs
            else transform_geom(src_crs, dst_crs, list(geometries))
        )
    except Exception as exc:  # GDAL/PROJ raise several types; all mean "cannot reproject"
        raise DataError(
            f"cannot reproject labels from {src_crs.to_string()} to {dst_crs.to_string()} ({exc})",
            path=path,
        ) from exc
    inverse = ~transform
    boxes = np.zeros((len(projected), 4))
    for k, geom in enumerate(projected):
        pts = np.concatenate(_rings(geom))
        if not np.isfinite(pts).all():
            raise DataError(
                f"a feature does not reproject to {dst_crs.to_string()} (non-finite result)",
                path=path,
            )
        cols, rows = inverse @ (pts[:, 0], pts[:, 1])
        boxes[k] = [np.min(cols), np.min(rows), np.max(cols), np.max(rows)]
    return boxes


def box_polygon(box: Sequence[float], transform: Affine) -> list[list[float]]:
    """Closed ring (counter-clockwise in map coordinates, as RFC 7946 asks) of a raster-pixel
    box ``[x1, y1, x2, y2]`` mapped through the raster's pixel->map ``transform``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    ring = [transform @ (x, y) for x, y in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))]
    area2 = sum(
        ring[i][0] * ring[(i + 1) % 4][1] - ring[(i + 1) % 4][0] * ring[i][1] for i in range(4)
    )
    if area2 < 0:  # north-up rasters give clockwise rings; flip them
        ring = ring[::-1]
    ring = [[float(x), float(y)] for x, y in ring]
    return ring + [ring[0]]


def write_feature_collection(
    path: Path, features: list[dict[str, Any]], crs: CRS | None, name: str
) -> Path:
    """Write a FeatureCollection atomically (``crs`` member unless WGS84). ``crs`` None:
    pixel coordinates of a raster without CRS, said by ``"units": "pixel"`` (no ``crs``)."""
    doc: dict[str, Any] = {"type": "FeatureCollection", "name": name}
    member = None if crs is None else crs_member(crs)
    if crs is None:
        doc["units"] = "pixel"
    if member is not None:
        doc["crs"] = member
    doc["features"] = features
    # allow_nan=False: NaN is not valid JSON and GIS tools reject it.
    return write_json(path, doc, indent=None, allow_nan=False)


def to_wgs84(features: list[dict[str, Any]], crs: CRS) -> list[dict[str, Any]]:
    """Copies of ``features`` with geometries reprojected from ``crs`` to WGS84 lon/lat."""
    if not features:
        return []
    geoms = transform_geom(crs, WGS84, [f["geometry"] for f in features])
    out = []
    for feat, geom in zip(features, geoms):
        ring = [[float(x), float(y)] for x, y in geom["coordinates"][0]]
        if any(not (math.isfinite(x) and math.isfinite(y)) for x, y in ring):
            raise DataError(f"a prediction does not reproject from {crs.to_string()} to WGS84")
        out.append({**feat, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    return out
