"""COCO box AP through an established evaluator (faster-coco-eval, or pycocotools).

We do not re-implement COCO's rules (101 recall points, area ranges, crowd matching, maxDets):
both evaluators are run as they are, fed COCO-format dicts built in memory, and their stdout
chatter is suppressed.

Conventions
- COCO boxes are ``[x, y, w, h]`` in continuous pixel coordinates; ours are xyxy without
  ``+1``, so ``w = x2 - x1``, ``h = y2 - y1`` exactly.
- The area that decides small/medium/large for a ground truth is its ``area`` field: for the
  in-memory path it is the box area ``w*h``; ``evaluate_coco_files`` keeps the file's value
  (COCO's own files give the segmentation area) and fills ``w*h`` only where it is missing.
- VOC ``difficult``: pycocotools overwrites any ``ignore`` flag with ``iscrowd``, so the only
  way to make an evaluator ignore an object is to mark it crowd. ``difficult="crowd"`` (the
  default) does that: the object is not counted and detections on it are neither TP nor FP,
  as in the VOC devkit — except that COCO measures overlap with a crowd region as
  intersection / detection area and tries crowd regions only after the normal objects.
  ``"drop"`` removes difficult objects (a detection on one becomes a FP); ``"keep"`` evaluates
  them as normal objects.
- Categories without any (non-crowd) ground truth get ``-1`` from the evaluators; they are
  excluded from the means and reported here as NaN.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from dsod_core.errors import DataError
from dsod_core.metrics.voc import as_numpy

__all__ = [
    "COCO_STAT_NAMES",
    "evaluate_coco",
    "evaluate_coco_files",
    "evaluate_coco_dicts",
    "build_coco_ground_truth",
    "build_coco_results",
    "read_coco_files",
    "coco_to_arrays",
]

Backend = Literal["faster", "pycocotools"]
DifficultPolicy = Literal["crowd", "drop", "keep"]

# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = (
    "ap",
    "ap50",
    "ap75",
    "ap_small",
    "ap_medium",
    "ap_large",
    "ar1",
    "ar10",
    "ar100",
    "ar_small",
    "ar_medium",
    "ar_large",
)


def _flag(entry: Mapping[str, Any], key: str, n: int, sample: str) -> np.ndarray:
    if entry.get(key) is None:
        return np.zeros(n, dtype=bool)
    values = as_numpy(entry[key], bool).reshape(-1)
    if len(values) != n:
        raise DataError(f"'{key}' has {len(values)} entries for {n} boxes", sample=sample)
    return values


def _xyxy(entry: Mapping[str, Any], sample: str) -> np.ndarray:
    boxes = as_numpy(entry.get("boxes", np.zeros((0, 4))), np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise DataError("'boxes' must be finite with shape [N, 4]", sample=sample)
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise DataError("'boxes' has a box with x2 < x1 or y2 < y1 (xyxy expected)", sample=sample)
    return boxes


def _int_labels(entry: Mapping[str, Any], n: int, sample: str) -> np.ndarray:
    raw = as_numpy(entry.get("labels", []), np.float64).reshape(-1)
    if len(raw) != n:
        raise DataError(f"'labels' has {len(raw)} entries for {n} boxes", sample=sample)
    labels = raw.astype(np.int64)
    if (labels != raw).any() or (labels < 1).any():
        raise DataError("labels must be integers >= 1", sample=sample)
    return labels


def build_coco_ground_truth(
    ground_truths: Sequence[Mapping[str, Any]],
    num_classes: int,
    class_names: Sequence[str] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    difficult: DifficultPolicy = "crowd",
) -> dict[str, Any]:
    """COCO ground-truth dict from per-image arrays.

    Args:
        ground_truths: one dict per image: ``boxes`` [N, 4] xyxy pixels, ``labels`` [N]
            1..num_classes, optional ``difficult`` [N] and ``iscrowd`` [N] bool flags.
        num_classes: K; categories get ids 1..K (the label itself).
        class_names: K names (default: the label as a string).
        image_sizes: optional (height, width) per image, stored in the image records.
        difficult: how difficult objects are passed to COCO (see the module docstring).

    Returns:
        ``{"images", "annotations", "categories"}`` with image ids 1..len(ground_truths).
    """
    if class_names is not None and len(class_names) != num_classes:
        raise DataError(f"{len(class_names)} class names for {num_classes} classes")
    if image_sizes is not None and len(image_sizes) != len(ground_truths):
        raise DataError(f"{len(image_sizes)} image sizes for {len(ground_truths)} images")
    if difficult not in ("crowd", "drop", "keep"):
        raise ValueError(f"difficult must be 'crowd', 'drop' or 'keep', got {difficult!r}")
    images, annotations = [], []
    for index, gt in enumerate(ground_truths):
        sample = f"image {index}"
        image: dict[str, Any] = {"id": index + 1, "file_name": str(index)}
        if image_sizes is not None:
            height, width = image_sizes[index]
            image.update(height=int(height), width=int(width))
        images.append(image)
        boxes = _xyxy(gt, sample)
        labels = _int_labels(gt, len(boxes), sample)
        if (labels > num_classes).any():
            raise DataError(f"labels must be in 1..{num_classes}", sample=sample)
        is_difficult = _flag(gt, "difficult", len(boxes), sample)
        crowd = _flag(gt, "iscrowd", len(boxes), sample)
        for box, label, diff, is_crowd in zip(boxes, labels, is_difficult, crowd):
            if diff and difficult == "drop":
                continue
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(bool(is_crowd) or (bool(diff) and difficult == "crowd")),
                }
            )
    names = class_names if class_names is not None else [str(c) for c in range(1, num_classes + 1)]
    categories = [{"id": c, "name": str(names[c - 1])} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def build_coco_results(
    detections: Sequence[Mapping[str, Any]], indices: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """COCO results list (xywh ``bbox``, ``score``, ``category_id`` = label).

    The project's one ``image_id`` convention: ``image_id = index + 1`` (COCO ids start at 1),
    where ``index`` is the image's store index when ``indices`` gives them (the evaluate
    stage's ``predictions_coco.json``) and its position in ``detections`` otherwise — the ids
    :func:`build_coco_ground_truth` gives the same list.
    """
    results = []
    for position, det in enumerate(detections):
        index = int(indices[position]) if indices is not None else position
        sample = f"image {index}"
        boxes = _xyxy(det, sample)
        labels = _int_labels(det, len(boxes), sample)
        scores = as_numpy(det.get("scores", []), np.float64).reshape(-1)
        if len(scores) != len(boxes) or not np.isfinite(scores).all():
            raise DataError("'scores' must be finite, one per box", sample=sample)
        # Lists, not numpy scalars: the evaluators and json want plain floats and ints.
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()
        for bbox, label, score in zip(xywh, labels.tolist(), scores.tolist()):
            results.append(
                {"image_id": index + 1, "category_id": label, "bbox": bbox, "score": score}
            )
    return results


def _nan_if_missing(value: float) -> float:
    # The evaluators write -1 where nothing could be measured (no ground truth).
    return float("nan") if value < 0 else float(value)


def _run_evaluator(
    gt: dict[str, Any], results: list[dict[str, Any]], backend: Backend
) -> dict[str, Any]:
    """Run COCOeval (bbox) on in-memory dicts; returns summary stats and per-class APs."""
    # Both evaluators add keys (ignore, area, segmentation, id) to the annotation and result
    # dicts they get: the callers pass dicts of their own (fresh, or shallow copies), which is
    # enough since nothing mutates the values inside (a deepcopy costs seconds at 500k boxes).
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        evaluator = _make_evaluator(gt, results, backend)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    stats = [float(s) for s in np.asarray(evaluator.stats, dtype=np.float64)[:12]]
    out: dict[str, Any] = {name: _nan_if_missing(v) for name, v in zip(COCO_STAT_NAMES, stats)}
    out["stats"] = stats
    out.update(_per_class_ap(evaluator))
    out["backend"] = backend
    return out


def _make_evaluator(gt: dict[str, Any], results: list[dict[str, Any]], backend: Backend) -> Any:
    """The backend's COCOeval (bbox) over the in-memory ground truth and results."""
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(results)
        return COCOeval_faster(
            coco_gt, coco_dt, "bbox", print_function=lambda *args, **kwargs: None
        )
    if backend == "pycocotools":
        from pycocotools.coco import COCO as RefCOCO
        from pycocotools.cocoeval import COCOeval

        coco_gt = RefCOCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes indexes results[0]: build the empty result set here
            coco_dt = RefCOCO()
            coco_dt.dataset = {
                "images": list(gt["images"]),
                "categories": copy.deepcopy(gt["categories"]),
                "annotations": [],
            }
            coco_dt.createIndex()
        return COCOeval(coco_gt, coco_dt, "bbox")
    raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")


def _per_class_ap(evaluator: Any) -> dict[str, list]:
    """``category_ids``, ``per_class_ap`` and ``per_class_ap50`` of an evaluated COCOeval."""
    # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets];
    # per-class AP@[.5:.95] as summarize() computes it: area "all", maxDets 100, entries > -1.
    precision = np.asarray(evaluator.eval["precision"], dtype=np.float64)
    cat_ids = [int(c) for c in evaluator.params.catIds]
    iou_thrs = np.asarray(evaluator.params.iouThrs)
    t50 = int(np.flatnonzero(np.isclose(iou_thrs, 0.5))[0])
    per_class, per_class50 = [], []
    for k in range(len(cat_ids)):
        p_all = precision[:, :, k, 0, -1]
        p_50 = precision[t50, :, k, 0, -1]
        per_class.append(float(p_all[p_all > -1].mean()) if (p_all > -1).any() else float("nan"))
        per_class50.append(float(p_50[p_50 > -1].mean()) if (p_50 > -1).any() else float("nan"))
    return {"category_ids": cat_ids, "per_class_ap": per_class, "per_class_ap50": per_class50}


def evaluate_coco(
    ground_truths: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    backend: Backend = "faster",
    difficult: DifficultPolicy = "crowd",
    num_classes: int | None = None,
) -> dict[str, Any]:
    """COCO box metrics of per-image detections.

    Args:
        ground_truths: one dict per image: ``boxes`` float [N, 4] xyxy pixels (continuous),
            ``labels`` int [N] 1..K, optional ``difficult`` and ``iscrowd`` bool [N].
        detections: one dict per image, same order: ``boxes`` [D, 4], ``scores`` [D],
            ``labels`` [D]. numpy arrays, torch tensors or lists.
        class_names: K names; K is ``len(class_names)`` when given.
        image_sizes: optional (height, width) per image (not needed for box metrics).
        backend: ``"faster"`` (faster-coco-eval) or ``"pycocotools"`` (the reference).
        difficult: ``"crowd"`` | ``"drop"`` | ``"keep"`` (module docstring).
        num_classes: K when no names are given (default: the largest label seen).

    Returns:
        dict with ``ap`` (AP@[.5:.95]), ``ap50``, ``ap75``, ``ap_small``, ``ap_medium``,
        ``ap_large``, ``ar1``, ``ar10``, ``ar100``, ``ar_small``, ``ar_medium``, ``ar_large``
        (NaN where the evaluator gives -1), ``stats`` (the raw 12 numbers), ``category_ids``
        (1..K), ``per_class_ap`` and ``per_class_ap50`` (lists of K floats, NaN for a class
        without ground truth), ``backend``.
    """
    if len(ground_truths) != len(detections):
        raise DataError(
            f"{len(ground_truths)} ground-truth entries but {len(detections)} detection entries"
        )
    if class_names is not None:
        k = len(class_names)
    elif num_classes is not None:
        k = int(num_classes)
    else:
        k = 1
        for entry in list(ground_truths) + list(detections):
            labels = as_numpy(entry.get("labels", []), np.float64).reshape(-1)
            if labels.size:
                k = max(k, int(labels.max()))
    results = build_coco_results(detections)
    if any(r["category_id"] > k for r in results):
        raise DataError(f"detection labels must be in 1..{k}")
    gt = build_coco_ground_truth(ground_truths, k, class_names, image_sizes, difficult)
    return _run_evaluator(gt, results, backend)


def _read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except IsADirectoryError:
        raise DataError("is a directory, not a JSON file", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"malformed JSON ({err})", path=path) from None
    except OSError as err:
        raise DataError(f"cannot read ({err.strerror})", path=path) from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def read_coco_files(
    gt_json: str | os.PathLike, dets_json: str | os.PathLike
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read and validate a COCO ground-truth file and a COCO results file.

    Ground truth: ``images`` (``id``), ``categories`` (``id``, ``name``), ``annotations``
    (``id``, ``image_id``, ``category_id``, ``bbox`` xywh with w, h > 0, optional ``area``,
    ``iscrowd``, ``difficult``). Results: a list of ``image_id``, ``category_id``, ``bbox``
    (w, h >= 0), ``score``; a dict with an ``annotations`` list is accepted too.

    Returns:
        (ground-truth dict, results list), as read.

    Raises:
        DataError: naming the file, for an unreadable/malformed file, a missing field, or a
            detection naming an image or category the ground truth does not have.
    """
    gt = _read_json(gt_json)
    image_set, cat_set = _check_ground_truth(gt, gt_json)
    dets = _read_json(dets_json)
    if isinstance(dets, dict) and isinstance(dets.get("annotations"), list):
        dets = dets["annotations"]
    _check_detections(dets, image_set, cat_set, dets_json)
    return gt, dets


def _check_ground_truth(gt: Any, gt_json: str | os.PathLike) -> tuple[set, set]:
    """Validate a COCO ground-truth dict (see :func:`read_coco_files`); returns its image and
    category ids."""
    if not isinstance(gt, dict):
        raise DataError(
            "ground truth must be a JSON object with images/annotations/categories", path=gt_json
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise DataError(f"missing list '{key}'", path=gt_json)
    try:
        image_ids = [img["id"] for img in gt["images"]]
        cat_ids = [cat["id"] for cat in gt["categories"]]
    except (KeyError, TypeError):
        raise DataError("every image and category needs an 'id'", path=gt_json) from None
    if len(set(image_ids)) != len(image_ids) or len(set(cat_ids)) != len(cat_ids):
        raise DataError("duplicate image or category ids", path=gt_json)
    image_set, cat_set = set(image_ids), set(cat_ids)
    _check_annotations(gt["annotations"], image_set, cat_set, gt_json)
    return image_set, cat_set


def _check_annotations(
    annotations: list, image_set: set, cat_set: set, gt_json: str | os.PathLike
) -> None:
    ann_ids = set()
    for ann in annotations:
        if not isinstance(ann, dict):
            raise DataError("an annotation is not an object", path=gt_json)
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(_number(v) for v in bbox)
            or bbox[2] <= 0
            or bbox[3] <= 0
        ):
            raise DataError(
                f"annotation {ann.get('id')}: bbox must be [x, y, w>0, h>0]", path=gt_json
            )
        if ann.get("image_id") not in image_set:
            raise DataError(
                f"annotation {ann.get('id')} names unknown image {ann.get('image_id')}",
                path=gt_json,
            )
        if ann.get("category_id") not in cat_set:
            raise DataError(
                f"annotation {ann.get('id')} names unknown category {ann.get('category_id')}",
                path=gt_json,
            )
        if "id" not in ann or ann["id"] in ann_ids:
            raise DataError(
                f"annotation ids must be present and unique ({ann.get('id')})", path=gt_json
            )
        ann_ids.add(ann["id"])


def _check_detections(
    dets: Any, image_set: set, cat_set: set, dets_json: str | os.PathLike
) -> None:
    """Validate a COCO results list against the ground truth's image and category ids."""
    if not isinstance(dets, list):
        raise DataError("results must be a JSON list of detections", path=dets_json)
    for i, det in enumerate(dets):
        if not isinstance(det, dict):
            raise DataError(f"detection {i} is not an object", path=dets_json)
        bbox = det.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(_number(v) for v in bbox)
            or bbox[2] < 0
            or bbox[3] < 0
        ):
            raise DataError(f"detection {i}: bbox must be [x, y, w>=0, h>=0]", path=dets_json)
        if not _number(det.get("score")):
            raise DataError(f"detection {i}: missing or non-finite score", path=dets_json)
        if det.get("image_id") not in image_set:
            raise DataError(
                f"detection {i} names unknown image {det.get('image_id')}", path=dets_json
            )
        if det.get("category_id") not in cat_set:
            raise DataError(
                f"detection {i} names unknown category {det.get('category_id')}", path=dets_json
            )


def _prepare_gt_for_eval(gt: Mapping[str, Any], difficult: DifficultPolicy) -> dict[str, Any]:
    """Copy of a COCO GT dict with ``difficult`` applied and missing ``area``/``iscrowd`` filled."""
    if difficult not in ("crowd", "drop", "keep"):
        raise ValueError(f"difficult must be 'crowd', 'drop' or 'keep', got {difficult!r}")
    annotations = []
    for ann in gt["annotations"]:
        is_difficult = bool(ann.get("difficult", 0))
        if is_difficult and difficult == "drop":
            continue
        ann = dict(ann)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        crowd = bool(ann.get("iscrowd", 0)) or (is_difficult and difficult == "crowd")
        ann["iscrowd"] = int(crowd)
        annotations.append(ann)
    return {
        "images": list(gt["images"]),
        "categories": list(gt["categories"]),
        "annotations": annotations,
    }


def evaluate_coco_files(
    gt_json: str | os.PathLike,
    dets_json: str | os.PathLike,
    backend: Backend = "faster",
    difficult: DifficultPolicy = "crowd",
) -> dict[str, Any]:
    """COCO box metrics of a results JSON against a COCO ground-truth JSON.

    Category ids are the file's own (possibly non-contiguous); ``category_ids`` in the result
    gives the order of ``per_class_ap``. Keys as :func:`evaluate_coco`.

    Raises:
        DataError: naming the file (see :func:`read_coco_files`).
    """
    gt, dets = read_coco_files(gt_json, dets_json)
    return evaluate_coco_dicts(gt, dets, backend, difficult)


def evaluate_coco_dicts(
    gt: Mapping[str, Any],
    dets: Sequence[Mapping[str, Any]],
    backend: Backend = "faster",
    difficult: DifficultPolicy = "crowd",
) -> dict[str, Any]:
    """COCO box metrics of validated COCO dicts (as :func:`read_coco_files` returns them).

    ``difficult`` annotations are handled per ``difficult``; a missing ``area`` is the box
    area. The inputs are not modified. Keys as :func:`evaluate_coco`.
    """
    return _run_evaluator(_prepare_gt_for_eval(gt, difficult), [dict(d) for d in dets], backend)


def coco_to_arrays(gt: Mapping[str, Any], dets: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-image arrays (our box contract) from validated COCO dicts, for VOC-style metrics.

    Category ids are mapped to contiguous labels 1..K in ascending id order; images keep the
    file's order. A crowd annotation becomes ``difficult`` (ignored by VOC matching), as does
    one marked ``"difficult": 1``.

    Returns:
        dict with ``ground_truths`` and ``detections`` (lists of per-image dicts as
        :func:`dsod_core.metrics.voc.evaluate_voc` takes), ``category_ids`` (K file ids, label
        c ↔ ``category_ids[c-1]``), ``class_names`` (K), ``image_ids``.
    """
    categories = sorted(gt["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
    image_ids = [img["id"] for img in gt["images"]]
    index_of = {iid: i for i, iid in enumerate(image_ids)}
    gt_boxes: list[list[list[float]]] = [[] for _ in image_ids]
    gt_labels: list[list[int]] = [[] for _ in image_ids]
    gt_diff: list[list[bool]] = [[] for _ in image_ids]
    for ann in gt["annotations"]:
        i = index_of[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        gt_boxes[i].append([x, y, x + w, y + h])
        gt_labels[i].append(label_of[ann["category_id"]])
        gt_diff[i].append(bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0)))
    det_boxes: list[list[list[float]]] = [[] for _ in image_ids]
    det_scores: list[list[float]] = [[] for _ in image_ids]
    det_labels: list[list[int]] = [[] for _ in image_ids]
    for det in dets:
        i = index_of[det["image_id"]]
        x, y, w, h = (float(v) for v in det["bbox"])
        det_boxes[i].append([x, y, x + w, y + h])
        det_scores[i].append(float(det["score"]))
        det_labels[i].append(label_of[det["category_id"]])
    ground_truths = [
        {
            "boxes": np.asarray(b, dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray(lab, dtype=np.int64),
            "difficult": np.asarray(d, dtype=bool),
        }
        for b, lab, d in zip(gt_boxes, gt_labels, gt_diff)
    ]
    detections = [
        {
            "boxes": np.asarray(b, dtype=np.float64).reshape(-1, 4),
            "scores": np.asarray(s, dtype=np.float64),
            "labels": np.asarray(lab, dtype=np.int64),
        }
        for b, s, lab in zip(det_boxes, det_scores, det_labels)
    ]
    return {
        "ground_truths": ground_truths,
        "detections": detections,
        "category_ids": category_ids,
        "class_names": [str(c.get("name", c["id"])) for c in categories],
        "image_ids": image_ids,
    }
