"""MS COCO instances JSON: reading annotation files and reading/writing results files; the one
COCO parser of the project (the rgb and depth adapters both read through it;
``modalities.rgb.coco`` re-exports this module).

Reading is split along the error policy: :func:`load_coco_json` checks what concerns the
whole file (it parses, has ``images``/``annotations``/``categories`` lists, well-formed
categories) and raises; :func:`parse_image_entry` and :func:`parse_annotation` check one
entry and raise a :class:`DataError` the caller can blame on one image.

Coordinates: COCO ``bbox`` is ``[x, y, w, h]``, already continuous and 0-based, so the box is
``(x, y, x + w, y + h)``. :func:`to_coco_results` writes detections back as the results list
``COCO.loadRes`` reads; :func:`from_coco_results` inverts it. :func:`is_coco_json` tells an
instances file from other JSON by its top-level keys.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.data.sample import pixel_to_world
from dsod_core.errors import DataError
from modalities.formats import has_suffix, json_top_keys


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The lists every instances JSON holds (:func:`load_coco_json` requires all three).
COCO_KEYS = ("images", "annotations", "categories")
_SECOND_KEYS = {"annotations", "categories", "file_name"}


def is_coco_json(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a COCO instances file: a ``.json`` object with ``images``
    and ``annotations`` or ``categories`` at the top. A large file is judged by the keys of its
    first 64 KiB (:func:`modalities.formats.json_top_keys`), where a train set's ``images``
    list hides the later keys: there an image's ``file_name`` stands for them. Never raises."""
    if not has_suffix(path, (".json",)):
        return False
    keys = json_top_keys(path)
    return keys is not None and "images" in keys and bool(_SECOND_KEYS & keys)


def coco_sample_id(image_id: Any) -> str:
    """The sample id of a COCO image: ``coco/<image id>``."""
    return f"coco/{image_id}"


def load_coco_json(
    path: str | os.PathLike, *, shown: str | os.PathLike | None = None
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """Load an instances JSON; returns ``(data, categories)`` with ``categories`` the
    ``(id, name)`` pairs sorted by id. Raises :class:`DataError` naming ``shown`` for what
    no single image can be blamed for: a missing, unreadable or malformed file, a missing
    ``images``/``annotations``/``categories`` list, a malformed or duplicate category."""
    shown = path if shown is None else shown
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError("annotation file not found", path=shown) from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"malformed COCO JSON: {exc}", path=shown) from None
    if not isinstance(data, dict):
        raise DataError("COCO JSON must be an object", path=shown)
    for key in COCO_KEYS:
        if not isinstance(data.get(key), list):
            raise DataError(f"COCO JSON lacks a {key!r} list", path=shown)
    cats = []
    for cat in data["categories"]:
        if not (
            isinstance(cat, dict) and _is_int(cat.get("id")) and isinstance(cat.get("name"), str)
        ):
            raise DataError(f"malformed category {str(cat)[:200]}", path=shown)
        cats.append((int(cat["id"]), cat["name"]))
    cats.sort()
    ids = [c for c, _ in cats]
    if len(set(ids)) != len(ids):
        raise DataError("duplicate category ids", path=shown)
    if not cats:
        raise DataError("no categories", path=shown)
    return data, cats


def parse_image_entry(img: Any, shown: str | os.PathLike) -> dict[str, Any]:
    """One ``images`` entry: ``{"id", "file_name", "declared_size": [w, h] | None}``.

    ``file_name`` must be a non-empty relative path; ``width``/``height`` are taken when they
    are positive integers. Raises :class:`DataError` naming ``shown`` (and the sample, once
    the entry has an id)."""
    image_id = img.get("id") if isinstance(img, dict) else None
    if not _is_int(image_id):
        raise DataError(f"malformed image entry {str(img)[:200]}: no integer 'id'", path=shown)
    sample = coco_sample_id(image_id)
    file_name = img.get("file_name")
    if not (isinstance(file_name, str) and file_name):
        raise DataError(
            f"image {image_id}: 'file_name' must be a non-empty string", path=shown, sample=sample
        )
    if Path(file_name).is_absolute():
        raise DataError(
            f"image file_name {file_name!r} must be relative", path=shown, sample=sample
        )
    w, h = img.get("width"), img.get("height")
    declared = [int(w), int(h)] if _is_int(w) and _is_int(h) and w > 0 and h > 0 else None
    return {"id": int(image_id), "file_name": file_name, "declared_size": declared}


def parse_annotation(ann: Mapping[str, Any], shown: str | os.PathLike) -> dict[str, Any]:
    """One ``annotations`` entry whose ``image_id`` the caller has checked:
    ``{"category_id", "box": [x1, y1, x2, y2] | None, "crowd": bool}``; ``box`` is ``None``
    for a zero-width or zero-height bbox (COCO 2017 holds a few). Raises :class:`DataError`
    naming ``shown`` and the image for a missing category id or a malformed, inverted or
    non-finite bbox."""
    sample = coco_sample_id(ann.get("image_id"))
    if not _is_int(ann.get("category_id")):
        raise DataError(
            f"annotation {ann.get('id')}: 'category_id' must be an integer",
            path=shown,
            sample=sample,
        )
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DataError(
            f"annotation {ann.get('id')}: bbox must be [x, y, w, h]", path=shown, sample=sample
        )
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
        raise DataError(
            f"annotation {ann.get('id')}: inverted or non-finite bbox {bbox}",
            path=shown,
            sample=sample,
        )
    box = None if w == 0 or h == 0 else [x, y, x + w, y + h]
    return {
        "category_id": int(ann["category_id"]),
        "box": box,
        "crowd": bool(ann.get("iscrowd", 0)),
    }


def to_coco_results(
    items: Sequence[Mapping[str, Any]], label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Detections of many images as a COCO results list (what ``COCO.loadRes`` reads).

    Args:
        items: per image, ``meta["image_id"]`` (the COCO image id, or the VOC image id string),
            ``affine`` (stored pixel -> original pixel, ``[4, 4]``) and ``detections`` with
            ``boxes`` float ``[N, 4]`` xyxy in stored-image pixels, ``scores`` ``[N]`` and
            ``labels`` ``[N]`` in ``1..K``.
        label_to_category_id: contiguous label -> category id written to the file.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in
        original-image pixels (continuous, 0-based) and ``score``.
    """
    rows: list[dict[str, Any]] = []
    for item in items:
        det = item["detections"]
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        affine = np.asarray(item.get("affine", np.eye(4)), dtype=np.float64)
        image_id = item["meta"]["image_id"]
        for box, score, label in zip(boxes, det["scores"], det["labels"]):
            corners = pixel_to_world(affine, np.array([[box[0], box[1]], [box[2], box[3]]]))
            x1, y1 = np.minimum(corners[0, :2], corners[1, :2])
            x2, y2 = np.maximum(corners[0, :2], corners[1, :2])
            try:
                category_id = label_to_category_id[int(label)]
            except KeyError:
                raise DataError(
                    f"predicted label {int(label)} has no category id",
                    sample=str(item.get("sample_id")),
                ) from None
            rows.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(score), 5),
                }
            )
    return rows


def from_coco_results(
    rows: Sequence[Mapping[str, Any]], label_to_category_id: Mapping[int, int]
) -> dict[Any, dict[str, np.ndarray]]:
    """Inverse of :func:`to_coco_results`: ``image_id -> {boxes [N,4] xyxy, scores, labels}``."""
    category_to_label = {int(c): int(lab) for lab, c in label_to_category_id.items()}
    grouped: dict[Any, list[tuple[list[float], float, int]]] = {}
    for row in rows:
        x, y, w, h = (float(v) for v in row["bbox"])
        label = category_to_label[int(row["category_id"])]
        grouped.setdefault(row["image_id"], []).append(
            ([x, y, x + w, y + h], float(row["score"]), label)
        )
    return {
        image_id: {
            "boxes": np.array([d[0] for d in dets], dtype=np.float64).reshape(-1, 4),
            "scores": np.array([d[1] for d in dets], dtype=np.float64),
            "labels": np.array([d[2] for d in dets], dtype=np.int64),
        }
        for image_id, dets in grouped.items()
    }


def predict_images(
    adapter: Any,
    refs: Sequence[Any],
    predictor: Any,
    run: Any,
    name: str,
    label_to_category_id: Mapping[int, int],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """``dsod detect`` over image refs of a 2D image modality (rgb, thermal): each ref read
    with ``adapter.read`` (one sample each), the model run in batches of ``run.batch_size``
    (``predictor`` follows :class:`dsod_core.detection.PredictorLike`), with a progress bar.
    Returns, in input order, the COCO result rows (:func:`to_coco_results`), the image entries
    (``id``, ``file_name``, ``width``, ``height`` of each sample's meta), the targets
    (boxes, labels, difficult, crowd) and the detections."""
    from dsod_core.detection import batched, progress_bar

    rows: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    predictions: list[Any] = []
    bar = progress_bar(len(refs), f"detect {name}", "image", run)
    try:
        for batch in batched(refs, run.batch_size):
            samples = [next(iter(adapter.read(ref))) for ref in batch]
            for ref, sample in zip(batch, samples):
                predictor.check_channels(int(sample.image.shape[0]), ref.paths["image"])
            dets = predictor([s.image for s in samples])
            items = [
                {"sample_id": s.sample_id, "meta": s.meta, "detections": d}
                for s, d in zip(samples, dets)
            ]
            rows += to_coco_results(items, label_to_category_id)
            for s, d in zip(samples, dets):
                keys = ("file_name", "width", "height")
                images.append({"id": s.meta["image_id"], **{k: s.meta[k] for k in keys}})
                targets.append(
                    {k: getattr(s, k) for k in ("boxes", "labels", "difficult", "crowd")}
                )
                predictions.append(d)
            bar.update(len(batch))
    finally:
        bar.close()
    return rows, images, targets, predictions
