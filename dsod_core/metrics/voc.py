"""PASCAL VOC average precision, with the devkit's matching rules.

Box contract: boxes are ``[N, 4]`` ``(x1, y1, x2, y2)`` in continuous pixel coordinates, so the
IoU is computed **without** the devkit's ``+1`` on widths and heights.

Matching (per class, as the VOC devkit's ``VOCevaldet`` / py-faster-rcnn's ``voc_eval``):

- the detections of the class over all images are sorted by score, highest first; ties keep
  the input order (image order, then the order within an image) — a *stable* sort, as MATLAB's
  ``sort`` in the original devkit (py-faster-rcnn's unstable ``np.argsort`` is not reproducible);
- each detection is compared with the ground truths of its class in its image and takes the
  one of highest IoU (first one on equal IoU), whether or not that one is already matched;
- if that IoU is **>= iou_threshold** (the devkit writes ``ovmax > thresh``; we follow the spec
  and COCO, which accept equality): a difficult ground truth makes the detection *ignored*
  (neither TP nor FP, it stays in the ranked list as the devkit leaves it), an unmatched one
  makes it a TP and marks the ground truth matched, an already matched one makes it a FP;
  below the threshold (or no ground truth of the class in the image) it is a FP;
- ``npos`` is the number of non-difficult ground truths of the class.

The best-overlap ground truth of a detection does not depend on which ones are matched
already, so the only sequential rule ("the first detection of a ground truth wins") reduces to
taking the first occurrence of each matched ground truth in ranked order: that is what makes
this implementation vectorised (one small IoU matrix per image, one sort for all classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsod_core.boxes.ops import box_iou
from dsod_core.errors import DataError

__all__ = ["voc_ap", "evaluate_voc", "match_detections", "ResampledVOC", "as_numpy"]

# 11 recall thresholds k/10, each the double nearest to k/10. py-faster-rcnn iterates over
# np.arange(0, 1.1, 0.1), whose 0.30000000000000004 makes a recall of exactly 0.3 miss the
# 0.3 threshold; k/10 is what the definition says.
_VOC07_RECALL_THRESHOLDS = np.arange(11, dtype=np.float64) / 10.0


def as_numpy(value: Any, dtype: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a numpy array of ``dtype``."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def voc_ap(recall: Any, precision: Any, use_07_metric: bool) -> float:
    """Average precision from a ranked precision/recall curve.

    Args:
        recall: float [D], cumulative recall after each ranked detection (non-decreasing).
        precision: float [D], precision after each ranked detection.
        use_07_metric: True → VOC2007 11-point interpolation: the mean over
            r in {0, 0.1, ..., 1} of the maximum precision at recall >= r (0 when no point
            reaches r). False → VOC2010+ : the area under the monotone (non-increasing)
            precision envelope, summed where the recall changes.

    Returns:
        AP in [0, 1]. An empty curve gives 0.
    """
    rec = as_numpy(recall, np.float64).reshape(-1)
    prec = as_numpy(precision, np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall {rec.shape} and precision {prec.shape} differ in length")
    if use_07_metric:
        if rec.size == 0:
            return 0.0
        # reach[t, i]: point i reaches threshold t; max precision over reaching points, else 0.
        reach = rec[None, :] >= _VOC07_RECALL_THRESHOLDS[:, None]
        best = np.where(reach, prec[None, :], -np.inf).max(axis=1)
        best[~reach.any(axis=1)] = 0.0
        return float(np.sum(best / 11.0))
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    # Precision envelope: at each point, the best precision at this recall or beyond.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _boxes(entry: Mapping[str, Any], key: str, sample: str) -> np.ndarray:
    boxes = as_numpy(entry.get(key, np.zeros((0, 4))), np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"'{key}' must have shape [N, 4], got {list(boxes.shape)}", sample=sample)
    if not np.isfinite(boxes).all():
        raise DataError(f"'{key}' contains non-finite coordinates", sample=sample)
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise DataError(f"'{key}' has a box with x2 < x1 or y2 < y1 (xyxy expected)", sample=sample)
    return boxes


def _vector(entry: Mapping[str, Any], key: str, n: int, dtype: Any, sample: str) -> np.ndarray:
    if key not in entry:
        raise DataError(f"missing '{key}'", sample=sample)
    values = as_numpy(entry[key], dtype).reshape(-1)
    if len(values) != n:
        raise DataError(f"'{key}' has {len(values)} entries for {n} boxes", sample=sample)
    return values


def _labels(entry: Mapping[str, Any], n: int, num_classes: int, sample: str) -> np.ndarray:
    raw = as_numpy(entry["labels"] if "labels" in entry else [], np.float64).reshape(-1)
    if len(raw) != n:
        raise DataError(f"'labels' has {len(raw)} entries for {n} boxes", sample=sample)
    labels = raw.astype(np.int64)
    if (labels != raw).any() or ((labels < 1) | (labels > num_classes)).any():
        raise DataError(f"labels must be integers in 1..{num_classes}", sample=sample)
    return labels


def match_detections(
    ground_truths: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """The devkit's matching (module docstring), as flat arrays in ranked order.

    Returns ``label``, ``image`` (position in the inputs), ``tp`` and ``fp`` (bool; an ignored
    detection is neither) per ranked detection (by class, then score descending, stable), and
    ``gt_count`` ``[num_images, num_classes]``: non-difficult ground truths per image and
    class. Matching never looks across images, so these flags stay valid for any multiset of
    the images (:class:`ResampledVOC`). Arguments and errors as :func:`evaluate_voc`.
    """
    _check_arguments(len(ground_truths), len(detections), num_classes, iou_threshold)
    # Per detection: image, label, score, best-overlap gt (global index, -1 when none), IoU.
    det_label, det_score, det_gt, det_iou, det_image = [], [], [], [], []
    gt_label_all, gt_difficult_all = [], []
    gt_offset = 0
    for index, (gt, det) in enumerate(zip(ground_truths, detections)):
        gt_boxes, gt_labels, difficult = _image_ground_truth(gt, num_classes, f"image {index}")
        det_boxes, scores, labels = _image_detections(det, num_classes, f"image {index}")
        best_gt, best_iou = _best_overlaps(det_boxes, labels, gt_boxes, gt_labels)
        det_label.append(labels)
        det_image.append(np.full(len(labels), index, dtype=np.int64))
        det_score.append(scores)
        det_gt.append(np.where(best_gt >= 0, best_gt + gt_offset, best_gt))
        det_iou.append(best_iou)
        gt_label_all.append(gt_labels)
        gt_difficult_all.append(difficult)
        gt_offset += len(gt_boxes)

    det_label_a = _concat(det_label, np.int64)
    det_score_a = _concat(det_score, np.float64)
    det_gt_a = _concat(det_gt, np.int64)
    det_iou_a = _concat(det_iou, np.float64)
    gt_label_a = _concat(gt_label_all, np.int64)
    gt_difficult_a = _concat(gt_difficult_all, bool)

    # Rank: by class, then score descending; lexsort is stable, so ties keep input order.
    order = np.lexsort((-det_score_a, det_label_a))
    det_label_a, det_gt_a, det_iou_a = det_label_a[order], det_gt_a[order], det_iou_a[order]
    tp, fp = _tp_fp(det_gt_a, det_iou_a, gt_difficult_a, iou_threshold)

    gt_image_a = np.repeat(np.arange(len(gt_label_all)), [len(g) for g in gt_label_all])
    counted = ~gt_difficult_a
    gt_count = np.zeros((len(ground_truths), num_classes), dtype=np.int64)
    np.add.at(gt_count, (gt_image_a[counted], gt_label_a[counted] - 1), 1)
    return {
        "label": det_label_a,
        "image": _concat(det_image, np.int64)[order],
        "tp": tp,
        "fp": fp,
        "gt_count": gt_count,
        "num_classes": int(num_classes),
    }


def _check_arguments(
    num_gt_entries: int, num_det_entries: int, num_classes: int, iou_threshold: float
) -> None:
    if num_gt_entries != num_det_entries:
        raise DataError(
            f"{num_gt_entries} ground-truth entries but {num_det_entries} detection entries"
        )
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    """The per-image arrays end to end (an empty array of ``dtype`` for no image)."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _image_ground_truth(
    gt: Mapping[str, Any], num_classes: int, sample: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ground-truth boxes, labels and difficult flags, validated."""
    gt_boxes = _boxes(gt, "boxes", sample)
    gt_labels = _labels(gt, len(gt_boxes), num_classes, sample)
    if "difficult" in gt and gt["difficult"] is not None:
        difficult = _vector(gt, "difficult", len(gt_boxes), bool, sample)
    else:
        difficult = np.zeros(len(gt_boxes), dtype=bool)
    if (
        len(gt_boxes)
        and ((gt_boxes[:, 2] <= gt_boxes[:, 0]) | (gt_boxes[:, 3] <= gt_boxes[:, 1])).any()
    ):
        raise DataError("a ground-truth box has zero width or height", sample=sample)
    return gt_boxes, gt_labels, difficult


def _image_detections(
    det: Mapping[str, Any], num_classes: int, sample: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's detection boxes, scores and labels, validated."""
    det_boxes = _boxes(det, "boxes", sample)
    scores = _vector(det, "scores", len(det_boxes), np.float64, sample)
    if not np.isfinite(scores).all():
        raise DataError("'scores' contains non-finite values", sample=sample)
    labels = _labels(det, len(det_boxes), num_classes, sample)
    return det_boxes, scores, labels


def _best_overlaps(
    det_boxes: np.ndarray, labels: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per detection of one image: the ground truth of its class it overlaps most (index in
    the image, -1 when none) and that IoU (-inf when none)."""
    best_gt = np.full(len(det_boxes), -1, dtype=np.int64)
    best_iou = np.full(len(det_boxes), -np.inf)
    if len(det_boxes) and len(gt_boxes):
        iou = box_iou(det_boxes, gt_boxes)
        same_class = labels[:, None] == gt_labels[None, :]
        # Another class's gt must never win: put it below any real IoU (which is >= 0).
        iou = np.where(same_class, iou, -1.0)
        arg = iou.argmax(axis=1)  # first maximum, like the devkit's argmax
        has_gt = same_class.any(axis=1)
        best_gt[has_gt] = arg[has_gt]
        best_iou[has_gt] = iou[has_gt, arg[has_gt]]
    return best_gt, best_iou


def _tp_fp(
    det_gt: np.ndarray, det_iou: np.ndarray, gt_difficult: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP flags of the ranked detections (an ignored detection is neither), from
    their best ground truth (global index) and its IoU."""
    matched = det_iou >= iou_threshold
    ignored = np.zeros_like(matched)
    if len(gt_difficult):
        ignored = matched & gt_difficult[np.where(matched, det_gt, 0)]
    candidate = matched & ~ignored
    # The first ranked candidate of each gt is its TP; later ones are duplicates (FP). gt
    # indices are global and a gt is only ever matched by detections of its own class, so one
    # pass over the class-sorted list gives the per-class answer.
    tp = np.zeros(len(det_gt), dtype=bool)
    cand_idx = np.flatnonzero(candidate)
    _, first = np.unique(det_gt[cand_idx], return_index=True)
    tp[cand_idx[first]] = True
    fp = ~tp & ~ignored
    return tp, fp


def evaluate_voc(
    ground_truths: Sequence[Mapping[str, Any]],
    detections: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """VOC detection AP per class and its mean.

    Args:
        ground_truths: one dict per image: ``boxes`` float [N, 4] xyxy pixels (continuous,
            no +1), ``labels`` int [N] in 1..num_classes, optional ``difficult`` bool [N]
            (default all False). numpy arrays, torch tensors or lists.
        detections: one dict per image, same order: ``boxes`` float [D, 4], ``scores``
            float [D], ``labels`` int [D] in 1..num_classes.
        num_classes: K, the number of foreground classes.
        iou_threshold: a detection matches when IoU >= this (see the module docstring).
        use_07_metric: VOC2007 11-point AP (True) or VOC2010+ area AP (False).

    Returns:
        dict with
        - ``map``: mean of ``ap`` over the classes that have at least one non-difficult
          ground truth (classes without any are **excluded** from the mean, where the devkit
          would produce nan; NaN when no class has one);
        - ``ap``: list of K floats, class c at index c-1; NaN for a class without any
          non-difficult ground truth; 0 for a class with ground truth but no detection;
        - ``precision``, ``recall``: lists of K float64 arrays [D_c], the PR curve after each
          ranked detection of the class (ignored detections included, as in the devkit;
          recall is NaN-filled when the class has no non-difficult ground truth);
        - ``num_gt``: list of K ints, non-difficult ground truths per class;
        - ``num_detections``: list of K ints; ``iou_threshold``; ``use_07_metric``.

    Raises:
        DataError: naming the image index, for malformed or inconsistent inputs.
    """
    m = match_detections(ground_truths, detections, num_classes, iou_threshold)
    npos = m["gt_count"].sum(axis=0)
    bounds = np.searchsorted(m["label"], np.arange(1, num_classes + 2))
    ap, precisions, recalls, num_det = [], [], [], []
    for c in range(num_classes):
        lo, hi = bounds[c], bounds[c + 1]
        prec, rec = _pr_curve(m["tp"][lo:hi], m["fp"][lo:hi], int(npos[c]))
        ap.append(voc_ap(rec, prec, use_07_metric) if npos[c] > 0 else float("nan"))
        precisions.append(prec)
        recalls.append(rec)
        num_det.append(int(hi - lo))

    ap_arr = np.asarray(ap, dtype=np.float64)
    valid = ~np.isnan(ap_arr)
    return {
        "map": float(ap_arr[valid].mean()) if valid.any() else float("nan"),
        "ap": [float(a) for a in ap_arr],
        "precision": precisions,
        "recall": recalls,
        "num_gt": [int(n) for n in npos],
        "num_detections": num_det,
        "iou_threshold": float(iou_threshold),
        "use_07_metric": bool(use_07_metric),
    }


def _pr_curve(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each ranked detection of one class (recall NaN-filled when
    the class has no non-difficult ground truth)."""
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(fp, dtype=np.float64)
    # Devkit: an ignored first detection gives 0/eps = 0 precision at recall 0.
    prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    if npos > 0:
        return prec, tp_cum / float(npos)
    return prec, np.full(len(tp), np.nan)


class ResampledVOC:
    """VOC mAP of any multiset of a test set's images, without matching again.

    Built once from the matched detections (:func:`match_detections`); :meth:`map` takes a
    weight per image (how many times it is drawn, 0 for left out) and returns the mAP of that
    multiset: each copy of an image brings the same TPs, FPs and ground truths, so the ranked
    cumulative sums are weighted sums in the same order. With all weights 1 it equals
    :func:`evaluate_voc`'s ``map``; a bootstrap replicate costs one pass over the detections.
    """

    def __init__(
        self,
        ground_truths: Sequence[Mapping[str, Any]],
        detections: Sequence[Mapping[str, Any]],
        num_classes: int,
        iou_threshold: float = 0.5,
        use_07_metric: bool = True,
    ) -> None:
        self._load(match_detections(ground_truths, detections, num_classes, iou_threshold))
        self.use_07_metric = use_07_metric

    @classmethod
    def from_matches(cls, matches: Mapping[str, Any], use_07_metric: bool = True) -> ResampledVOC:
        """From a saved :func:`match_detections` table (arrays ``label``, ``image``, ``tp``,
        ``fp``, ``gt_count``), e.g. the evaluate stage's ``matches.npz``."""
        self = cls.__new__(cls)
        self._load(matches)
        self.use_07_metric = use_07_metric
        return self

    def _load(self, m: Mapping[str, Any]) -> None:
        gt_count = np.asarray(m["gt_count"])
        self.num_images = len(gt_count)
        num_classes = gt_count.shape[1]
        self._image, self._gt_count = np.asarray(m["image"]), gt_count.astype(np.float64)
        self._tp = np.asarray(m["tp"], dtype=np.float64)
        self._fp = np.asarray(m["fp"], dtype=np.float64)
        self._bounds = np.searchsorted(np.asarray(m["label"]), np.arange(1, num_classes + 2))

    def map(self, weights: Any) -> float:
        """mAP of the multiset that holds image ``i`` ``weights[i]`` times (NaN: no class
        has a ground truth in it; classes without one are left out, as in evaluate_voc)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_images,):
            raise ValueError(f"need {self.num_images} weights, got shape {w.shape}")
        npos = w @ self._gt_count
        wd = w[self._image]
        tp_all, fp_all = wd * self._tp, wd * self._fp
        aps = []
        for c, n in enumerate(npos):
            if n <= 0:
                continue
            lo, hi = self._bounds[c], self._bounds[c + 1]
            tp_cum = np.cumsum(tp_all[lo:hi])
            fp_cum = np.cumsum(fp_all[lo:hi])
            prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
            aps.append(voc_ap(tp_cum / n, prec, self.use_07_metric))
        return float(np.mean(aps)) if aps else float("nan")
