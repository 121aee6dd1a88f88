"""The depth modality's ``coco`` layout: one COCO instances JSON (``coco_file``); each image's
``file_name`` stem names its depth map ``<depth_dir>/<stem>.{png,npy,tif,tiff}``
(:meth:`DepthAdapter._ref`).

The JSON is read by the project's one COCO parser (:mod:`modalities.formats.coco`), so a file
the rgb adapter refuses is refused here with the same message: the whole file for what no
image can be blamed for (unreadable, lists or categories malformed, duplicate image ids, an
annotation of an unknown image), one image (its entry, an annotation of it, its depth map)
through ``adapter.log.guard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.depth.annotations import keep_difficult
from modalities.depth.split_lists import path_groups
from modalities.formats.coco import (
    is_coco_json,
    load_coco_json,
    parse_annotation,
    parse_image_entry,
)
from modalities.formats.splits import unit_aliases
from modalities.formats.voc import select_objects

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter


def claims(path: Path) -> bool:
    """A COCO instances JSON (:func:`modalities.formats.coco.is_coco_json`)."""
    return is_coco_json(path)


def _is_id(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _annotations_by_image(data: dict[str, Any], path: Path) -> dict[int, list[Any]]:
    """The file's annotations grouped by image id, after the checks of the whole file."""
    seen: set[int] = set()
    for img in data["images"]:
        image_id = img.get("id") if isinstance(img, dict) else None
        if _is_id(image_id):
            if image_id in seen:
                raise DataError(f"duplicate image id {image_id}", path=path)
            seen.add(image_id)
    by_image: dict[int, list[Any]] = {}
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _is_id(image_id):
            raise DataError(f"malformed annotation {str(ann)[:200]}", path=path)
        if image_id not in seen:
            raise DataError(
                f"annotation {ann.get('id')} refers to unknown image id {image_id}", path=path
            )
        by_image.setdefault(image_id, []).append(ann)
    return by_image


def _objects(
    anns: list[Any], cat_name: dict[int, str], file_name: str, path: Path, stem: str, keep: bool
) -> tuple[list[dict[str, Any]], int]:
    """One image's objects (``name``, ``category_id``, ``box``, ``difficult`` False, ``crowd``)
    and how many zero-width or zero-height boxes were dropped; crowd regions are left out
    unless ``keep`` (``keep_difficult``)."""
    objects, dropped = [], 0
    for ann in anns:
        try:
            parsed = parse_annotation(ann, path)
        except DataError as exc:
            raise DataError(exc.reason, path=exc.path, sample=stem) from None
        cid = parsed["category_id"]
        if cid not in cat_name:
            raise DataError(
                f"image {file_name!r}: unknown category_id {cid}", path=path, sample=stem
            )
        if parsed["box"] is None:
            dropped += 1
        elif keep or not parsed["crowd"]:
            objects.append(
                {
                    "name": cat_name[cid],
                    "category_id": cid,
                    "box": parsed["box"],
                    "difficult": False,
                    "crowd": parsed["crowd"],  # ignored in training and eval
                }
            )
    return objects, dropped


def _units(data: dict[str, Any], depth_dir: str) -> dict[str, list[str]]:
    """The frames of the file for the split lists: ``file_name`` stem -> the names a list may
    use for it (file name, stem, relative path, the path under ``depth_dir``)."""
    units: dict[str, list[str]] = {}
    for img in data["images"]:
        name = img.get("file_name") if isinstance(img, dict) else None
        if isinstance(name, str) and name:
            units.setdefault(Path(name).stem, unit_aliases(name.replace("\\", "/"), depth_dir))
    return units


def _groups(adapter: DepthAdapter, data: dict[str, Any], path: Path) -> dict[str, str | None]:
    """``file_name`` stem -> group: ``group_by`` on the image's ``file_name`` as the JSON
    writes it (``seq_03/000120.png``); every group None with ``group_by: null``. An image
    whose name the rule does not match is refused through the log's guard."""
    names: dict[str, tuple[str, Path]] = {}
    for img in data["images"]:
        name = img.get("file_name") if isinstance(img, dict) else None
        if isinstance(name, str) and name:
            names.setdefault(Path(name).stem, (name.replace("\\", "/"), path))
    return path_groups(adapter, names, unit="image")


def discover(adapter: DepthAdapter) -> list[SampleRef]:
    """One ref per ``images`` entry, in image id order, split by the split lists
    (:meth:`DepthAdapter._splits`; an image they leave out has no ref), else by the stable
    hash of its group (``group_by`` on its ``file_name``; null: its stem). Objects of
    classes outside ``class_names`` are left out with one warning per image, as are
    zero-width or zero-height boxes. The entry's ``width`` and ``height`` are kept to be
    checked against the depth map when it is read (a disagreement is a warning). Without
    ``class_names`` the classes are the categories sorted by id."""
    p = adapter.params
    path = adapter.root / p.coco_file
    data, cats = load_coco_json(path)
    cat_name = dict(cats)
    by_image = _annotations_by_image(data, path)
    keep = keep_difficult(p)
    ordered = sorted(
        data["images"],
        key=lambda im: (0, im["id"]) if isinstance(im, dict) and _is_id(im.get("id")) else (1, 0),
    )
    groups = _groups(adapter, data, path)
    units = {k: v for k, v in _units(data, p.depth_dir).items() if k in groups}
    split_of = adapter._splits(units, groups)
    refs = []
    for img in ordered:
        with adapter.log.guard(path, unit="image"):
            entry = parse_image_entry(img, path)
            stem = Path(entry["file_name"]).stem
            if stem not in split_of:  # left out by the split lists
                continue
            objects, dropped = _objects(
                by_image.get(entry["id"], []), cat_name, entry["file_name"], path, stem, keep
            )
            objects, left_out = select_objects(objects, p.class_names)
            ref = adapter._ref(stem, split_of[stem], stem, path, objects)
            ref.meta["declared_size"] = entry["declared_size"]
            ref.meta["group"] = groups[stem]
            refs.append(ref)
            adapter._note_left_out(left_out, path, stem)
            if dropped:
                adapter.log.warn(
                    f"left out {dropped} zero-width or zero-height box(es)", path, stem
                )
    adapter._class_names = list(p.class_names or [n for _, n in cats])
    return refs
