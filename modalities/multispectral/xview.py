"""xView labels in: one GeoJSON FeatureCollection for all images, pixel boxes as the truth.

Each feature's properties hold ``bounds_imcoords`` (the string ``"xmin,ymin,xmax,ymax"`` in
pixels of the image), ``type_id`` (the integer class) and ``image_id`` (the image file name,
e.g. ``"1036.tif"``). The WGS84 geometry the features also carry is not used: the pixel boxes
are the published ground truth. Corners are taken as continuous pixel coordinates, as given.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head

SUFFIXES = (".geojson", ".json")


def claims(path: Path) -> bool:
    """A ``.geojson`` / ``.json`` file starting as a JSON object whose first 64 KiB hold a
    ``bounds_imcoords`` property (xView's pixel boxes). Never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    start = head(path, 1 << 16)
    return start.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and b'"bounds_imcoords"' in start


def read_labels(
    path: Path, class_property: str, image_key: str | None, shared: bool
) -> tuple[None, list[tuple[str, str, str, np.ndarray, bool]]]:
    """The label entries of one xView file (:data:`modalities.multispectral.labels.Entry`:
    where, image id, class, pixel box, difficult False); no CRS (pixel boxes). The image id is
    the ``image_key`` property (``image_id`` by default)."""
    rows = read_xview(path, image_key or "image_id")
    return None, [(f"feature {i}", img, cls, box, False) for i, img, cls, box in rows]


def read_xview(
    path: Path, image_property: str = "image_id"
) -> list[tuple[int, str, str, np.ndarray]]:
    """``(feature index, image id, class name, box xyxy px)`` per feature of an xView file.

    The class name is ``str(type_id)`` (``"73"``); a malformed box, class or image id raises
    :class:`DataError` naming the file and the feature.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read xView GeoJSON ({exc})", path=path) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        raise DataError("not a GeoJSON FeatureCollection with a 'features' list", path=path)
    out = []
    for i, feat in enumerate(doc["features"]):
        props = feat.get("properties") if isinstance(feat, dict) else None
        if not isinstance(props, dict):
            raise DataError(f"feature {i} has no properties", path=path)
        for key in ("bounds_imcoords", "type_id", image_property):
            if key not in props:
                raise DataError(f"feature {i} has no {key!r} property", path=path)
        try:
            box = np.array([float(v) for v in str(props["bounds_imcoords"]).split(",")])
            cls = int(float(props["type_id"]))
        except ValueError as exc:
            raise DataError(
                f"feature {i} has a malformed bounds_imcoords {props['bounds_imcoords']!r} or "
                f"type_id {props['type_id']!r} ({exc})",
                path=path,
            ) from exc
        if box.shape != (4,) or not np.isfinite(box).all():
            raise DataError(
                f"feature {i}: bounds_imcoords {props['bounds_imcoords']!r} is not "
                "'xmin,ymin,xmax,ymax'",
                path=path,
            )
        out.append((i, str(props[image_property]), str(cls), box))
    return out
