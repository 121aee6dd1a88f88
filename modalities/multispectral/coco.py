"""COCO instances JSON for rasters and band-stack scenes: one file for the whole dataset, as
ship-detection sets built on Sentinel-2 publish it (an ``images`` entry per scene).

Parsing is the project's one COCO reader (:mod:`modalities.formats.coco`) and its quirk
handling is the shared labelled-image layer's (:mod:`modalities.formats.collection`: ``crowd``
auto/ignore/objects, ``unmatched`` annotations counted or refused), so a file is read here
exactly as the rgb, depth and thermal modalities read it. What is multispectral is the
matching: an ``images`` entry names a raster or a scene by its ``file_name``, matched to the
raster's path under root, file name or stem, or to a scene's id or folder; a ``file_name``
whose stem is a unit's name followed by ``_`` and more (``scene_01_TCI.png``,
``S2A_MSIL2A_..._TCI.png`` for the product ``S2A_MSIL2A_....SAFE``) matches that unit too
(:func:`matches`). Boxes are pixels of the raster (of a stack's reference grid); crowd boxes
read as ignore regions are left out (this adapter has no ignore regions).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import coco as coco_format
from modalities.formats import collection

SUFFIXES = (".json",)


def claims(path: Path) -> bool:
    """A COCO instances JSON (:func:`modalities.formats.coco.is_coco_json`). Never raises."""
    return coco_format.is_coco_json(path)


def matches(key: str, aliases: list[str]) -> bool:
    """Whether a COCO ``file_name`` names the unit known by ``aliases``: equal to one, or
    its stem equal to one or starting with one followed by ``_``."""
    key = key.replace("\\", "/")
    stem = PurePosixPath(key).stem
    for alias in aliases:
        if key == alias or stem == alias or stem.startswith(f"{alias}_"):
            return True
    return False


def read_coco(adapter: Any, path: Path) -> list[tuple[str, str, str, np.ndarray, bool]]:
    """The label entries (:data:`modalities.multispectral.labels.Entry`: ``annotation <id>``,
    the image's ``file_name``, category name, pixel box, difficult False) of one COCO file,
    with the collection layer's ``crowd`` and ``unmatched`` policies (warnings with counts in
    ``adapter.log``); an ``images`` entry without annotations gives no entry (its unit is a
    background raster)."""
    data, cats = coco_format.load_coco_json(path, shown=path)
    names = dict(cats)
    run = collection.CollectionRun(adapter, adapter.params, (), None, None)
    files: dict[int, str] = {}
    for img in data["images"]:
        entry = coco_format.parse_image_entry(img, path)
        files[entry["id"]] = entry["file_name"]
    anns, bad = collection.coco_annotations(run, data, set(files), path)
    if bad:
        raise DataError(f"{len(bad)} image(s) with a malformed annotation", path=path)
    crowd_objects = collection.crowd_mode(run, anns, path)
    out, ignored, degenerate = [], 0, 0
    for ann, parsed in anns:
        if parsed["box"] is None:
            degenerate += 1
            continue
        if parsed["crowd"] and not crowd_objects:
            ignored += 1
            continue
        name = names.get(parsed["category_id"])
        if name is None:
            raise DataError(
                f"annotation {ann.get('id')} has unknown category id {parsed['category_id']}",
                path=path,
            )
        box = np.asarray(parsed["box"], dtype=np.float64)
        out.append((f"annotation {ann.get('id')}", files[ann["image_id"]], name, box, False))
    run.warn("degenerate_dropped", degenerate, f"{degenerate} zero-size COCO box(es) dropped", path)
    run.warn(
        "crowd_ignored",
        ignored,
        f"{ignored} iscrowd box(es) left out as ignore regions (crowd: {adapter.params.crowd})",
        path,
    )
    run.flush_counts()
    adapter.coco_images = sorted(set(files.values()))
    return out
