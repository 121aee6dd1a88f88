"""Scoring one split: VOC07 11-point and VOC area mAP at IoU 0.5, and COCO AP, in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsod_core.errors import DataError
from dsod_core.metrics.coco import evaluate_coco
from dsod_core.metrics.voc import evaluate_voc, match_detections


def _num(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def _flags(value: Any, n: int, key: str, image: int) -> np.ndarray:
    """A per-box bool flag ``[n]``, all False when missing."""
    if value is None:
        return np.zeros(n, dtype=bool)
    flags = np.asarray(value, dtype=bool).reshape(-1)
    if len(flags) != n:
        raise DataError(f"'{key}' has {len(flags)} entries for {n} boxes", sample=f"image {image}")
    return flags


def _ground_truths(targets: Sequence[Mapping[str, Any]]) -> tuple[list[dict], list[dict]]:
    """COCO ground truths (difficult and crowd flags) and VOC ones (either flag: ignored)."""
    gts, voc_gts = [], []
    for i, t in enumerate(targets):
        n = len(t["labels"])
        difficult = _flags(t.get("difficult"), n, "difficult", i)
        crowd = _flags(t.get("crowd"), n, "crowd", i)
        gts.append(
            {"boxes": t["boxes"], "labels": t["labels"], "difficult": difficult, "iscrowd": crowd}
        )
        voc_gts.append({"boxes": t["boxes"], "labels": t["labels"], "difficult": difficult | crowd})
    return gts, voc_gts


def voc_matches(
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    num_classes: int,
) -> dict[str, Any]:
    """The VOC IoU-0.5 match table of ``predictions`` (``dsod_core.metrics.voc.
    match_detections``) with the same ground-truth rules as :func:`score_detections`: what a
    bootstrap over test images needs (``ResampledVOC.from_matches``)."""
    return match_detections(_ground_truths(targets)[1], predictions, num_classes, 0.5)


def score_detections(
    targets: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    with_coco: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score ``predictions`` against ``targets`` (same order, one per image).

    Args:
        targets: per image ``boxes`` ``[N, 4]`` xyxy px, ``labels`` ``[N]`` in 1..K,
            ``difficult`` ``[N]`` bool and optional ``crowd`` ``[N]`` bool (COCO ``iscrowd``;
            all False when missing). Both flags mark ignored ground truth: VOC treats a crowd
            box as difficult (a detection matched to it is neither TP nor FP, it is not in
            ``npos``); COCO gets difficult boxes and crowd boxes as ``iscrowd=1``.
        predictions: per image ``boxes`` ``[D, 4]``, ``scores`` ``[D]``, ``labels`` ``[D]``.
        class_names: the K class names.

    Returns:
        ``(summary, voc07)``: the flat summary (``map50``, ``map50_area``, ``per_class_ap50``,
        ``coco_ap``, ``coco_ap50``, ``coco_ap75``, ``coco_ar100``, ``per_class_coco_ap``,
        ``num_images``; a metric without ground truth is ``None``) and the full VOC07 result
        (precision/recall curves per class, for the PR plot).
    """
    gts, voc_gts = _ground_truths(targets)
    k = len(class_names)
    voc07 = evaluate_voc(voc_gts, predictions, k, 0.5, use_07_metric=True)
    area = evaluate_voc(voc_gts, predictions, k, 0.5, use_07_metric=False)
    out: dict[str, Any] = {
        "map50": _num(voc07["map"]),
        "map50_area": _num(area["map"]),
        "per_class_ap50": {n: _num(a) for n, a in zip(class_names, voc07["ap"])},
        "num_images": len(predictions),
    }
    if with_coco:
        coco = evaluate_coco(gts, predictions, class_names=list(class_names))
        out.update(
            {
                "coco_ap": _num(coco["ap"]),
                "coco_ap50": _num(coco["ap50"]),
                "coco_ap75": _num(coco["ap75"]),
                "coco_ar100": _num(coco["ar100"]),
                "per_class_coco_ap": {
                    n: _num(a) for n, a in zip(class_names, coco["per_class_ap"])
                },
            }
        )
    return out, voc07
