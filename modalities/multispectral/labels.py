"""Label files of the multispectral adapter: which reader a ``label_format`` picks, one shared
label file split by image, and label geometries to raster-pixel boxes.

The format readers themselves live in :mod:`geojson`, :mod:`xview` and :mod:`dota` (each with
``read_labels`` giving one entry shape, listed in :mod:`.formats`); this module picks one by
``label_format`` and holds what the adapter does with the entries (classes, difficult,
outside boxes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rasterio.crs import CRS
from rasterio.transform import Affine

from modalities.multispectral import formats, geojson

# A parsed label: (where, e.g. "feature 3" / "line 7"; image id or None; class name;
# map geometry (geojson) or raster-pixel box xyxy (xview, dota); difficult).
Entry = tuple[str, str | None, str, Any, bool]


def label_rel(rel: str, pattern: str, stem: str, shared: bool) -> str | Path:
    """The label file of the raster ``rel`` (under root), before resolving inside root: the
    ``pattern`` itself for a shared label file, else ``pattern`` with ``{stem}`` filled in,
    next to the raster."""
    if shared:
        return pattern
    return Path(rel).parent / pattern.format(stem=stem)


def parse_labels(
    lpath: Path,
    label_format: str,
    class_property: str,
    image_key: str | None,
    shared: bool,
) -> tuple[CRS | None, list[Entry]]:
    """The entries of one label file in ``label_format`` (``read_labels`` of that format's
    module, :data:`modalities.multispectral.formats.FORMATS`); the CRS of map geometries
    (geojson) or None for pixel boxes (xview, dota)."""
    reader = formats.FORMATS[label_format]
    return reader.read_labels(lpath, class_property, image_key, shared)


def by_image(entries: list[Entry]) -> dict[str, list[Entry]]:
    """The entries of a shared label file grouped by their image property."""
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(str(e[1]), []).append(e)
    return groups


def entries_of_image(groups: dict[str, list[Entry]], rel: str, stem: str) -> list[Entry]:
    """The entries whose image property equals the raster's path under root, file name or
    stem (each key once, in that order)."""
    keys = dict.fromkeys([rel, Path(rel).name, stem])
    return [e for k in keys for e in groups.get(k, [])]


def pixel_boxes(
    geoms: list[Any], src_crs: CRS | None, dst_crs: CRS, transform: Affine, lpath: Path
) -> np.ndarray:
    """``[N, 4]`` raster-pixel boxes: map geometries in ``src_crs`` projected onto the raster
    grid, or (``src_crs`` None) pixel boxes of the raster (of the reference grid for a band
    stack) as they are."""
    if src_crs is not None:
        return geojson.geometries_to_pixel_boxes(geoms, src_crs, dst_crs, transform, lpath)
    return np.array(geoms, dtype=np.float64).reshape(-1, 4)


def inside_raster(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bool ``[N]``: the box overlaps the ``width`` x ``height`` raster and is not degenerate."""
    return (
        (boxes[:, 2] > 0)
        & (boxes[:, 0] < width)
        & (boxes[:, 3] > 0)
        & (boxes[:, 1] < height)
        & (boxes[:, 2] > boxes[:, 0])
        & (boxes[:, 3] > boxes[:, 1])
    )


def outside_report(
    inside: np.ndarray, rel: str, width: int, height: int, crs: CRS | None
) -> tuple[str, bool] | None:
    """The warning about labels of raster ``rel`` that miss it (``inside`` from
    :func:`inside_raster`) and whether none is inside, or None when all are inside."""
    n = len(inside)
    if n and not inside.any():
        msg = (
            f"none of the {n} label features overlaps raster {rel} "
            f"({width}x{height} px in {'pixels' if crs is None else crs.to_string()}); "
            "wrong CRS or file?"
        )
        return msg, True
    if (~inside).any():
        msg = (
            f"{int((~inside).sum())} of {n} features lie outside raster "
            f"{rel} (or are degenerate) and are ignored"
        )
        return msg, False
    return None
