"""The rgb modality's ``coco`` format: MS COCO instances JSON files, one per split
(``train_json``/``val_json``/``test_json``), images under ``image_dirs[split]``.

The JSON itself is read by the project's one COCO parser, :mod:`modalities.formats.coco`,
whose names this module re-exports (``modalities.rgb.coco.load_coco_json`` etc. stay
importable). What is the rgb adapter's own is here: :func:`discover` (its units: one image per
``images`` entry of each split's file) and :func:`claims`.
"""

from __future__ import annotations

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
    """The refs of every split's JSON; categories from the first file (every other file must
    list the same), an image id in two files is refused. Sets the adapter's classes and
    category ids (:meth:`RGBAdapter._set_categories`)."""
    refs: list[SampleRef] = []
    categories: list[tuple[int, str]] | None = None
    category_file: Path | None = None
    owner: dict[int, tuple[str, Path]] = {}
    for split, key in COCO_JSON_PARAM.items():
        rel = getattr(adapter.params, key)
        if not rel:
            continue
        json_path = adapter.resolve_inside_root(rel, adapter.root)
        data, cats = load_coco_json(json_path, shown=adapter._display(json_path))
        if categories is None:
            categories, category_file = cats, json_path
            adapter._set_categories(cats, json_path)
        elif cats != categories:
            raise DataError(
                f"categories differ from those of {adapter._display(category_file)}",
                path=adapter._display(json_path),
            )
        for ref in _refs(adapter, data, split, json_path):
            image_id = ref.meta["image_id"]
            if image_id in owner:
                raise DataError(
                    f"image id {image_id} also appears in the {owner[image_id][0]!r} split "
                    f"({adapter._display(owner[image_id][1])})",
                    path=adapter._display(json_path),
                )
            owner[image_id] = (split, json_path)
            refs.append(ref)
    return refs


def _refs(
    adapter: RGBAdapter, data: dict[str, Any], split: str, json_path: Path
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
    _add_annotations(adapter, data, images, seen, shown)
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
) -> None:
    """Add every annotation to its image's targets: an annotation without an integer image
    id, or of an id not listed, raises; a bad one refuses its image (removed from ``images``)
    through ``adapter.log.guard``. Zero-size boxes are counted, crowd regions kept only with
    ``keep_difficult``."""
    label_of = {cid: lab for lab, cid in adapter.label_to_category_id.items()}
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"malformed annotation {str(ann)[:200]}", path=shown)
        if image_id not in seen:
            raise DataError(
                f"annotation {ann.get('id')} refers to unknown image id {image_id}",
                path=shown,
            )
        entry = images.get(image_id)
        if entry is None:  # that image's own entry was refused (and recorded) above
            continue
        with adapter.log.guard(shown, unit="image"):
            try:
                parsed = parse_annotation(ann, shown)
                label = label_of.get(parsed["category_id"])
                if label is None:
                    raise DataError(
                        f"annotation {ann.get('id')} has unknown category id "
                        f"{parsed['category_id']}",
                        path=shown,
                        sample=coco_sample_id(image_id),
                    )
            except DataError:
                del images[image_id]  # the image goes, whatever the log decides
                raise
            if parsed["box"] is None:
                entry["dropped_degenerate"] += 1
            elif not parsed["crowd"] or adapter.params.keep_difficult:
                entry["boxes"].append(parsed["box"])
                entry["labels"].append(label)
                entry["difficult"].append(False)
                entry["crowd"].append(parsed["crowd"])
