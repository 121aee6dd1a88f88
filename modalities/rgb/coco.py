"""The rgb modality's ``coco`` format: MS COCO instances JSON files, one per split
(``train_json``/``val_json``/``test_json``), images under ``image_dirs[split]``.

The JSON itself is read by the project's one COCO parser, :mod:`modalities.formats.coco`,
whose names this module re-exports (``modalities.rgb.coco.load_coco_json`` etc. stay
importable). What is the rgb adapter's own is here: :func:`discover` (its units: one image per
``images`` entry of each split's file) and :func:`claims`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.formats.coco import (
    COCO_KEYS,
    coco_sample_id,
    from_coco_results,
    is_coco_json,
    load_coco_json,
    parse_annotation,
    parse_image_entry,
    to_coco_results,
)
from modalities.rgb.params import COCO_JSON_PARAM

if TYPE_CHECKING:
    from modalities.rgb.adapter import RGBAdapter

__all__ = [
    "COCO_KEYS",
    "claims",
    "coco_sample_id",
    "discover",
    "from_coco_results",
    "is_coco_json",
    "load_coco_json",
    "parse_annotation",
    "parse_image_entry",
    "to_coco_results",
]


def claims(path: Path) -> bool:
    """A COCO instances JSON (:func:`modalities.formats.coco.is_coco_json`)."""
    return is_coco_json(path)


def discover(adapter: RGBAdapter) -> list[SampleRef]:
    """The refs of every split's JSON; categories (renamed or dropped by ``class_map``) from
    the first file, every other file must list the same names (matched by name: ids may
    differ); an image id in two files is refused. Sets the adapter's classes and category
    ids (:meth:`RGBAdapter._set_categories`). Quirks are reported once each, with counts."""
    refs: list[SampleRef] = []
    categories: list[str] | None = None
    category_file: Path | None = None
    owner: dict[int, tuple[str, Path]] = {}
    tally: Counter = Counter()
    for split, key in COCO_JSON_PARAM.items():
        rel = getattr(adapter.params, key)
        if not rel:
            continue
        json_path = adapter.resolve_inside_root(rel, adapter.root)
        data, cats = load_coco_json(json_path, shown=adapter._display(json_path))
        kept = mapped_categories(cats, adapter.params.class_map)
        if categories is None:
            categories, category_file = [n for _, n in kept], json_path
            adapter._set_categories(kept, json_path)
        elif sorted({n for _, n in kept}) != sorted(set(categories)):
            raise DataError(
                f"categories differ from those of {adapter._display(category_file)}",
                path=adapter._display(json_path),
            )
        label_of = _labels_by_name(adapter, cats)
        for ref in _refs(adapter, data, split, json_path, label_of, tally):
            image_id = ref.meta["image_id"]
            if image_id in owner:
                raise DataError(
                    f"image id {image_id} also appears in the {owner[image_id][0]!r} split "
                    f"({adapter._display(owner[image_id][1])})",
                    path=adapter._display(json_path),
                )
            owner[image_id] = (split, json_path)
            refs.append(ref)
    if tally["class_map_dropped"]:
        adapter.log.warn(
            f"{tally['class_map_dropped']} annotation(s) of categories dropped by class_map"
        )
    return refs


def mapped_categories(
    cats: list[tuple[int, str]], class_map: dict[str, str | None]
) -> list[tuple[int, str]]:
    """``(id, name)`` sorted by id, renamed by ``class_map`` (a category mapped to ``""`` or
    null is left out; several mapped to one name are one class, under the first id)."""
    kept: dict[str, int] = {}
    for cid, name in cats:
        mapped = class_map[name] if name in class_map else name
        if mapped and mapped not in kept:
            kept[mapped] = cid
    return [(cid, name) for name, cid in kept.items()]


def _labels_by_name(adapter: RGBAdapter, cats: list[tuple[int, str]]) -> dict[int, int | None]:
    """Category id of one file -> label 1..K through its (mapped) name; None: dropped."""
    index = {name: i + 1 for i, name in enumerate(adapter.class_names)}
    out: dict[int, int | None] = {}
    for cid, name in cats:
        class_map = adapter.params.class_map
        mapped = class_map[name] if name in class_map else name
        out[cid] = index.get(mapped) if mapped else None
    return out


def _refs(
    adapter: RGBAdapter,
    data: dict[str, Any],
    split: str,
    json_path: Path,
    label_of: dict[int, int | None],
    tally: Counter,
) -> list[SampleRef]:
    """The refs of one JSON file: an image entry or annotation that cannot be used refuses
    that image through ``adapter.log.guard``; what no image can be blamed for raises."""
    shown = adapter._display(json_path)
    listed = [img.get("id") for img in data["images"] if isinstance(img, dict)]
    listed = [i for i in listed if isinstance(i, int) and not isinstance(i, bool)]
    seen: set[int] = set()
    for image_id in listed:  # which of two entries is the right one: the file's fault
        if image_id in seen:
            raise DataError(f"duplicate image id {image_id}", path=shown)
        seen.add(image_id)
    images = _images(adapter, data, Path(adapter.params.image_dirs[split]), shown)
    _add_annotations(adapter, data, images, seen, shown, label_of, tally)
    return [
        SampleRef(
            ref_id=coco_sample_id(image_id),
            split=split,
            paths={"image": entry.pop("path"), "annotation": json_path},
            meta={"image_id": image_id, **entry},
        )
        for image_id, entry in images.items()
    ]


def _images(
    adapter: RGBAdapter, data: dict[str, Any], image_dir: Path, shown: Path
) -> dict[int, dict[str, Any]]:
    """Image id -> its entry (path, file name, declared size, empty targets) of every usable
    ``images`` entry; a bad entry or a missing image goes through ``adapter.log.guard``."""
    from modalities.rgb.adapter import _with_sample

    images: dict[int, dict[str, Any]] = {}
    for img in data["images"]:
        with adapter.log.guard(shown, unit="image"):
            entry = parse_image_entry(img, shown)
            sample = coco_sample_id(entry["id"])
            try:
                image_path = adapter.resolve_inside_root(image_dir / entry["file_name"], shown)
            except DataError as exc:
                raise _with_sample(exc, sample) from None
            if not image_path.is_file():
                raise DataError(
                    f"image {adapter._display(image_path)} not found", path=shown, sample=sample
                )
            images[entry["id"]] = {
                "path": image_path,
                "file_name": entry["file_name"],
                "declared_size": entry["declared_size"],
                "boxes": [],
                "labels": [],
                "difficult": [],
                "crowd": [],
                "dropped_degenerate": 0,
            }
    return images


def _add_annotations(
    adapter: RGBAdapter,
    data: dict[str, Any],
    images: dict[int, dict[str, Any]],
    seen: set[int],
    shown: Path,
    label_of: dict[int, int | None],
    tally: Counter,
) -> None:
    """Add every annotation to its image's targets: an annotation without an integer image
    id raises; one of an id the file does not list is counted and skipped (``unmatched:
    skip``, one warning) or raises (``unmatched: error``); a bad one refuses its image
    (removed from ``images``) through ``adapter.log.guard``. Zero-size boxes are counted,
    crowd regions are objects or ignore regions as ``crowd`` says, kept only with
    ``keep_difficult`` when ignore regions; categories dropped by ``class_map`` counted."""
    anns, _ = _listed_annotations(adapter, data, seen, shown)
    crowd_objects = _crowd_objects(adapter, anns, shown)
    for ann in anns:
        image_id = ann["image_id"]
        entry = images.get(image_id)
        if entry is None:  # that image's own entry was refused (and recorded) above
            continue
        with adapter.log.guard(shown, unit="image"):
            try:
                parsed = parse_annotation(ann, shown)
                if parsed["category_id"] not in label_of:
                    raise DataError(
                        f"annotation {ann.get('id')} has unknown category id "
                        f"{parsed['category_id']}",
                        path=shown,
                        sample=coco_sample_id(image_id),
                    )
            except DataError:
                del images[image_id]  # the image goes, whatever the log decides
                raise
            label = label_of[parsed["category_id"]]
            crowd = parsed["crowd"] and not crowd_objects
            if label is None:
                tally["class_map_dropped"] += 1
            elif parsed["box"] is None:
                entry["dropped_degenerate"] += 1
            elif not crowd or adapter.params.keep_difficult:
                entry["boxes"].append(parsed["box"])
                entry["labels"].append(label)
                entry["difficult"].append(False)
                entry["crowd"].append(crowd)


def _listed_annotations(
    adapter: RGBAdapter, data: dict[str, Any], seen: set[int], shown: Path
) -> tuple[list[dict[str, Any]], list[int]]:
    """The annotations of listed image ids, and the ids of those whose image the file does not
    list (``unmatched``: counted and warned once, or refused naming the JSON)."""
    anns, unmatched = [], []
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"malformed annotation {str(ann)[:200]}", path=shown)
        if image_id in seen:
            anns.append(ann)
        elif adapter.params.unmatched == "error":
            raise DataError(
                f"annotation {ann.get('id')} refers to unknown image id {image_id} "
                "(unmatched: skip counts and skips such annotations)",
                path=shown,
            )
        else:
            unmatched.append(image_id)
    if unmatched:
        first = list(dict.fromkeys(unmatched))[:5]
        adapter.log.warn(
            f"{len(unmatched)} annotation(s) refer to image ids the file does not list, "
            f"skipped (unmatched: skip; first ids {first})",
            shown,
        )
    return anns, unmatched


def _crowd_objects(adapter: RGBAdapter, anns: list[dict[str, Any]], shown: Path) -> bool:
    """Whether this file's crowd boxes are objects (``crowd: objects``, or ``auto`` when every
    annotation is crowd: one warning naming the param)."""
    mode = adapter.params.crowd
    if mode != "auto":
        return mode == "objects"
    if anns and all(isinstance(a, dict) and a.get("iscrowd") for a in anns):
        adapter.log.warn(
            f"every one of the {len(anns)} annotations is iscrowd: read as objects (crowd: "
            "auto; set the param crowd: ignore to keep them as ignore regions)",
            shown,
        )
        return True
    return False
