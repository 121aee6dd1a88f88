"""The rgb modality's ``collection`` format: a folder of images with labels in any format of the
shared labelled-image layer (:mod:`modalities.formats.collection`): YOLO txt (Ultralytics
layout), a plain VOC folder (``images/`` + ``annotations/``, no ``ImageSets``), COCO JSON
(one per split or one for all), segmentation masks (connected components -> boxes), or none.

The ``labels`` param picks the format; splits come from ``split_files``, a per-split
``coco_json``, ``images/<split>/`` folders or the hash (``val_fraction``/``test_fraction``).
Every quirk the layer meets (objects without a box, background images, unmatched COCO
annotations, crowd-only files, classes dropped by ``class_map``...) is one warning line with
its count in the prepare report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modalities.base import SampleRef
from modalities.formats.collection import discover_collection, ref_meta
from modalities.formats.voc import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from modalities.rgb.adapter import RGBAdapter


def claims(path) -> bool:  # noqa: ARG001 - a layout, not a file format
    """Nothing: a collection is a folder layout named by params, not recognised by a file."""
    return False


def discover(adapter: RGBAdapter) -> list[SampleRef]:
    """One ref per image of the collection; sets the adapter's classes (labels 1..K stand for
    themselves as category ids)."""
    items, class_names = discover_collection(adapter, adapter.params, image_suffixes=IMAGE_SUFFIXES)
    adapter._class_names = list(class_names)
    adapter._label_to_category = {i + 1: i + 1 for i in range(len(class_names))}
    refs = []
    for item in items:
        paths = {"image": item.image}
        if item.annotation is not None:
            paths["annotation"] = item.annotation
        refs.append(
            SampleRef(
                ref_id=item.image_id,
                split=item.split,
                paths=paths,
                meta=ref_meta(item, class_names, file_name=item.image.name),
            )
        )
    return refs
