"""The depth modality's ``collection`` layout: a folder of depth maps with labels in any format
of the shared labelled-image layer (:mod:`modalities.formats.collection`): VOC XML (labelImg,
CVAT), COCO JSON, YOLO txt, segmentation masks, or none.

The "images" of the layer are the depth maps under ``image_dir`` (null: ``depth_dir``),
``.png``/``.npy``/``.tif``/``.tiff``, searched recursively; a frame's id is its path there
without the suffix. A label names its frame by the image it was drawn on: ``frame_0001.png``
(a COCO ``file_name``, a VOC ``<filename>`` with or without extension, a YOLO txt's stem) is
matched to ``frame_0001.*`` among the depth maps by stem, so labels drawn on the colour image
pair with the depth map. The aligned colour image ``<rgb_dir>/<id>.{png,jpg}`` and intrinsics
``<intrinsics_dir>/<id>.{json,txt}`` are found as in the other layouts
(:meth:`DepthAdapter._frame_paths`).

``labels: voc`` reads ``label_dir`` (null: ``annotation_dir``); ``labels: coco`` reads
``coco_json`` (empty: ``{all: <coco_file>}``). Splits: the split lists (``split_files``, else
``<split_dir>/{train,val,test}.txt``), a per-split ``coco_json``, ``train``/``val``/``test``
folders under the depth folder, else the hash (``val_fraction``/``test_fraction``) of the
frame's group (``group_by`` on the depth map's path under root, read by the shared layer;
null: the frame itself). Every quirk
(objects without a box, background frames, unmatched COCO annotations, crowd-only files,
classes dropped by ``class_map``) is one warning line with its count in the prepare report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modalities.base import SampleRef
from modalities.formats.collection import CollectionParams, LabeledImage, discover_collection

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter


def claims(path) -> bool:  # noqa: ARG001 - a layout, not a file format
    """Nothing: a collection is a folder layout named by params, not recognised by a file."""
    return False


def shared_params(adapter: DepthAdapter) -> CollectionParams:
    """The adapter's params as the shared layer reads them: the depth folder as the image
    folder, the VOC folder and COCO file of the depth params as defaults, the split lists
    the adapter found (:meth:`DepthAdapter._split_files`)."""
    p = adapter.params
    label_dir = p.label_dir or (p.annotation_dir if p.labels == "voc" else None)
    return p.replace(
        image_dir=p.image_dir or p.depth_dir,
        label_dir=label_dir,
        coco_json=p.coco_json or {"all": p.coco_file},
        split_files={s: str(f) for s, f in adapter._split_files().items()},
    )


def discover(adapter: DepthAdapter) -> list[SampleRef]:
    """One ref per depth map of the collection (the frames the split lists leave out, and
    with ``keep_background`` < 1 some background frames, have none); sets the adapter's
    classes and the ``background_images`` count."""
    from modalities.depth.adapter import DEPTH_EXTENSIONS, DEPTH_READERS

    limit = adapter.params.max_pixels

    def size(path: Path) -> tuple[int, int]:
        return DEPTH_READERS[path.suffix.lower()].declared_size(path, limit)

    items, class_names = discover_collection(
        adapter, shared_params(adapter), image_suffixes=DEPTH_EXTENSIONS, image_size=size
    )
    adapter._class_names = list(class_names)
    refs = []
    for item in items:
        with adapter.log.guard(item.annotation or item.image, unit="image"):
            refs.append(_ref(adapter, item))
    adapter.log.counts["background_images"] = sum(not r.meta["objects"] for r in refs)
    return refs


def _ref(adapter: DepthAdapter, item: LabeledImage) -> SampleRef:
    """One frame's ref: its files (:meth:`DepthAdapter._frame_paths`; colour and intrinsics
    by the frame's id, then by its stem) and its objects."""
    ref_from = item.annotation or item.image
    stems = tuple(dict.fromkeys((item.image_id, item.image.stem)))
    paths = adapter._frame_paths(item.image, item.annotation, ref_from, stems)
    objects: list[dict[str, Any]] = [
        {"name": n, "box": list(b), "difficult": d, "crowd": c}
        for n, b, d, c in zip(item.names, item.boxes, item.difficult, item.crowd)
    ]
    meta = {
        "objects": objects,
        "declared_size": None if item.declared_size is None else list(item.declared_size),
        "image_id": item.image_id,
        "background": item.background,
        "group": item.group,  # group_by on the depth map's path (the shared layer)
    }
    return SampleRef(item.image_id, item.split, paths, meta)
