"""Independent, deliberately plain reference implementations (loops, numpy) for the box tests.

Written from the SSD Caffe sources (``PriorBoxLayer``, ``MatchBBox``, ``ApplyNMSFast``,
``MultiBoxLossLayer``, ``DetectionOutputLayer``), not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np


def iou_one(a, b) -> float:
    """IoU of two xyxy boxes, continuous coordinates; 0 when the union is empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)), dtype=np.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = iou_one([float(v) for v in a[i]], [float(v) for v in b[j]])
    return out


def prior_box_caffe(
    fmap: int, img: int, min_size: float, max_size: float, ratios, step: float, offset=0.5
):
    """Port of Caffe ``PriorBoxLayer::Forward_cpu`` (square map and image), normalised cxcywh."""
    ars = [1.0]
    for r in ratios:
        for a in (r, 1.0 / r):  # flip=True
            if all(abs(a - x) > 1e-6 for x in ars):
                ars.append(a)
    out = []
    for h in range(fmap):
        for w in range(fmap):
            cx = (w + offset) * step
            cy = (h + offset) * step
            out.append([cx / img, cy / img, min_size / img, min_size / img])
            s = math.sqrt(min_size * max_size)
            out.append([cx / img, cy / img, s / img, s / img])
            for a in ars:
                if abs(a - 1.0) < 1e-6:
                    continue
                out.append(
                    [
                        cx / img,
                        cy / img,
                        min_size * math.sqrt(a) / img,
                        min_size / math.sqrt(a) / img,
                    ]
                )
    return out


def cxcywh_to_xyxy_np(b: np.ndarray) -> np.ndarray:
    return np.stack(
        [
            b[:, 0] - b[:, 2] / 2,
            b[:, 1] - b[:, 3] / 2,
            b[:, 0] + b[:, 2] / 2,
            b[:, 1] + b[:, 3] / 2,
        ],
        axis=1,
    )


def match_caffe(gt: np.ndarray, priors_xyxy: np.ndarray, threshold: float) -> list[int]:
    """Port of Caffe ``MatchBBox`` (BIPARTITE then PER_PREDICTION): gt index per prior or -1."""
    num_pred, num_gt = len(priors_xyxy), len(gt)
    match = [-1] * num_pred
    if num_gt == 0:
        return match
    ov = iou_matrix(priors_xyxy.astype(np.float32), gt.astype(np.float32))
    gt_pool = list(range(num_gt))
    while gt_pool:
        max_idx, max_gt, max_ov = -1, -1, -1.0
        for i in range(num_pred):
            if match[i] != -1:
                continue
            for j in gt_pool:
                if ov[i, j] > 1e-6 and ov[i, j] > max_ov:
                    max_idx, max_gt, max_ov = i, j, ov[i, j]
        if max_idx == -1:
            break
        match[max_idx] = max_gt
        gt_pool.remove(max_gt)
    for i in range(num_pred):
        if match[i] != -1:
            continue
        best_j, best = -1, -1.0
        for j in range(num_gt):
            if ov[i, j] >= threshold and ov[i, j] > best:
                best_j, best = j, ov[i, j]
        match[i] = best_j
    return match


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Textbook greedy NMS; equal scores taken in input order (Python's sort is stable)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(iou_one(list(boxes[i]), list(boxes[k])) <= thr for k in keep):
            keep.append(i)
    return keep


def encode_np(matched_xyxy: np.ndarray, priors: np.ndarray, var=(0.1, 0.2)) -> np.ndarray:
    gw = matched_xyxy[:, 2] - matched_xyxy[:, 0]
    gh = matched_xyxy[:, 3] - matched_xyxy[:, 1]
    gcx = (matched_xyxy[:, 0] + matched_xyxy[:, 2]) / 2
    gcy = (matched_xyxy[:, 1] + matched_xyxy[:, 3]) / 2
    return np.stack(
        [
            (gcx - priors[:, 0]) / priors[:, 2] / var[0],
            (gcy - priors[:, 1]) / priors[:, 3] / var[0],
            np.log(gw / priors[:, 2]) / var[1],
            np.log(gh / priors[:, 3]) / var[1],
        ],
        axis=1,
    )


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
