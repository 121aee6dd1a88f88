"""How well the default boxes fit the training boxes, and default boxes fitted to them.

Everything here works in the network input's frame: boxes are ``xyxy`` in network-input pixels
after the resize the training applies (the whole stored image, or the stored tile when the
dataset is tiled at prepare time, resized to ``input_size`` x ``input_size``), and the default
boxes are given as :class:`dsod_core.boxes.priors.PriorMap` s (``DSOD.prior_maps``).

**Coverage** is the share of training boxes whose best default box, over every map, shape
and location, has IoU >= 0.5 with the box *at the box's own position* (what the matcher
sees, not an idealised centred box). It is computed exactly without the [N, P] IoU matrix:
for a prior of fixed size, the overlap along x only shrinks as its centre moves away from the
box's, and the same along y, so for every map and shape the best location is the grid centre
nearest to the box centre in x and, independently, in y (the cell that contains the centre,
clamped to the map). That is one IoU per map and shape per box, and it equals the brute-force
maximum over all priors (``tests/test_coverage.py`` checks it).

**Matcher recall** runs the training matcher itself (:func:`dsod_core.boxes.ops.match_batch`:
bipartite best-prior rule, then IoU >= 0.5) image by image and counts the boxes that end up
with at least one positive prior; the best-prior rule gives almost every box one, so the
share matched *at IoU >= 0.5* (the coverage) and the mean number of positives per box are
what say whether the network is given something learnable.

**Fitting** (:func:`fit_prior_sizes`): each box of side ``s = sqrt(w h)`` (fraction of the
input) goes to the coarsest map whose step is at most ``s / 2`` (at a step of half the box
side, most positions of the box have a same-size prior at IoU >= 0.5); boxes smaller than two
finest steps go to the finest map. A map with boxes gets min size = their 25th percentile
side and max size such that its second square, ``sqrt(min * max)``, is their 75th percentile;
a map with none keeps the layout's sizes. The aspect ratios 2 and 3 become the median and the
90th percentile of the boxes' elongation ``max(w, h) / min(w, h)`` (at least 1.25 and 0.25
apart, so the ratio boxes differ from the squares). Like SSD's scales and YOLO's anchor
check, it only uses the boxes' sizes; box counts per location, and so the head, are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dsod_core.boxes.ops import cxcywh_to_xyxy, match_batch
from dsod_core.boxes.priors import PriorMap, boxes_of_maps

IOU_THRESHOLD = 0.5
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def best_prior_iou(boxes: np.ndarray | torch.Tensor, maps: Sequence[PriorMap]) -> np.ndarray:
    """Best IoU of each box ``[N, 4]`` (xyxy, fractions of the input) with any default box of
    ``maps`` at any location (exact; see the module docstring). Returns float64 ``[N]``."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    best = torch.zeros(b.shape[0], dtype=torch.float64)
    if b.shape[0] == 0:
        return best.numpy()
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    bw, bh = (b[:, 2] - b[:, 0]).clamp(min=0), (b[:, 3] - b[:, 1]).clamp(min=0)
    for m in maps:
        # The nearest centre (i + 0.5) * step is that of the cell holding the box centre.
        ix = torch.floor(cx / m.step).clamp(0, m.size - 1)
        iy = torch.floor(cy / m.step).clamp(0, m.size - 1)
        px, py = (ix + 0.5) * m.step, (iy + 0.5) * m.step
        wh = torch.tensor(m.shapes(), dtype=torch.float64)  # [A, 2]
        pw, ph = wh[None, :, 0], wh[None, :, 1]
        ox = _overlap(cx[:, None], bw[:, None], px[:, None], pw)
        oy = _overlap(cy[:, None], bh[:, None], py[:, None], ph)
        inter = ox * oy
        union = (bw * bh)[:, None] + pw * ph - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1e-300), 0.0)
        best = torch.maximum(best, iou.max(dim=1).values)
    return best.numpy()


def _overlap(c1: torch.Tensor, w1: torch.Tensor, c2: torch.Tensor, w2: torch.Tensor):
    lo = torch.maximum(c1 - w1 / 2, c2 - w2 / 2)
    hi = torch.minimum(c1 + w1 / 2, c2 + w2 / 2)
    return (hi - lo).clamp(min=0)


def matcher_stats(
    image_boxes: Sequence[np.ndarray],
    maps: Sequence[PriorMap],
    iou_threshold: float = IOU_THRESHOLD,
    chunk: int = 16,
) -> dict[str, float]:
    """The training matcher on every image's boxes (xyxy fractions): ``recall`` (share of
    boxes with >= 1 positive prior) and ``positives_per_box`` (mean positives per box)."""
    priors = boxes_of_maps(maps)
    images = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in image_boxes]
    images = [b for b in images if len(b)]
    total = sum(len(b) for b in images)
    matched = positives = 0
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        n = max(len(b) for b in part)
        gt = torch.zeros(len(part), n, 4)
        valid = torch.zeros(len(part), n, dtype=torch.bool)
        for i, b in enumerate(part):
            gt[i, : len(b)] = torch.from_numpy(b)
            valid[i, : len(b)] = True
        labels = valid.long()
        _, _, matched_gt = match_batch(gt, labels, valid, priors, iou_threshold)
        for i in range(len(part)):
            hits = matched_gt[i][matched_gt[i] >= 0]
            matched += int(torch.unique(hits).numel())
            positives += int(hits.numel())
    return {
        "recall": matched / total if total else 1.0,
        "positives_per_box": positives / total if total else 0.0,
    }


def size_distribution(wh_px: np.ndarray, input_size: int) -> dict[str, Any]:
    """Quantiles of the box side ``sqrt(w h)`` and of ``min(w, h)`` in network-input pixels,
    and of the side as a fraction of the input."""
    wh = np.asarray(wh_px, dtype=np.float64).reshape(-1, 2)
    if not len(wh):
        return {"quantiles": list(QUANTILES), "side_px": [], "min_side_px": [], "side_frac": []}
    side = np.sqrt(np.clip(wh[:, 0], 0, None) * np.clip(wh[:, 1], 0, None))
    q = list(QUANTILES)
    return {
        "quantiles": q,
        "side_px": _rounded(np.quantile(side, q)),
        "min_side_px": _rounded(np.quantile(wh.min(axis=1), q)),
        "side_frac": _rounded(np.quantile(side / input_size, q), 4),
    }


def _rounded(values: np.ndarray, digits: int = 2) -> list[float]:
    return [round(float(v), digits) for v in values]


def coverage_report(
    image_boxes: Sequence[np.ndarray],
    maps: Sequence[PriorMap],
    input_size: int,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Box sizes, coverage and matcher statistics of the boxes of every training image
    (``[N_i, 4]`` xyxy in network-input pixels) against the default boxes ``maps``."""
    scaled = [np.asarray(b, dtype=np.float64).reshape(-1, 4) / input_size for b in image_boxes]
    flat = np.concatenate(scaled) if scaled else np.zeros((0, 4))
    best = best_prior_iou(flat, maps)
    wh = (flat[:, 2:] - flat[:, :2]) * input_size
    smallest = min(maps, key=lambda m: m.min_size)
    return {
        "boxes": int(len(flat)),
        "input_size": int(input_size),
        "sizes": size_distribution(wh, input_size),
        "coverage": round(float((best >= iou_threshold).mean()), 4) if len(flat) else 1.0,
        "best_iou_median": round(float(np.median(best)), 4) if len(flat) else 1.0,
        "matcher": {k: round(v, 4) for k, v in matcher_stats(scaled, maps, iou_threshold).items()},
        "smallest_default_box_px": round(smallest.min_size * input_size, 2),
        "finest_step_px": round(min(m.step for m in maps) * input_size, 2),
    }


def coverage_warning(report: dict[str, Any], min_coverage: float = 0.2) -> str | None:
    """One line when the coverage is below ``min_coverage`` (None otherwise), naming the
    numbers and the params that change them."""
    if report["boxes"] == 0 or report["coverage"] >= min_coverage:
        return None
    med = report["sizes"]["side_px"][3]
    return (
        f"only {100 * report['coverage']:.0f}% of {report['boxes']} training boxes have a "
        f"default box at IoU >= 0.5 (median box side {med:g} px of a "
        f"{report['input_size']} px input; smallest default box "
        f"{report['smallest_default_box_px']:g} px, finest step {report['finest_step_px']:g} px): "
        "raise datasets.<name>.input_size or cut tiles (datasets.<name>.tiling.tile_size "
        "below the input size upsamples), set model.prior_fit: true, or "
        "model.overrides.high_res_source: true (docs/small_objects.md)"
    )


def fit_prior_sizes(wh_frac: np.ndarray, maps: Sequence[PriorMap]) -> dict[str, list[float]]:
    """Fitted ``prior_min_sizes``, ``prior_max_sizes`` (one per map, in ``maps``' order) and
    ``prior_ratios`` (two) for boxes ``[N, 2]`` (w, h as fractions of the input); the rule is
    the module docstring's. With no boxes the maps' own sizes and ratios 2, 3 come back."""
    wh = np.asarray(wh_frac, dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(axis=1)]
    mins = [m.min_size for m in maps]
    maxs = [m.max_size for m in maps]
    if not len(wh):
        return {"prior_min_sizes": mins, "prior_max_sizes": maxs, "prior_ratios": [2.0, 3.0]}
    side = np.sqrt(wh[:, 0] * wh[:, 1])
    order = sorted(range(len(maps)), key=lambda k: maps[k].step)  # finest first
    owner = np.full(len(side), order[0])
    for k in order[1:]:
        owner[maps[k].step <= side / 2] = k
    for k in range(len(maps)):
        mine = side[owner == k]
        if len(mine):
            lo, hi = np.quantile(mine, [0.25, 0.75])
            mins[k], maxs[k] = float(lo), float(max(hi, lo) ** 2 / lo)
    elongation = wh.max(axis=1) / wh.min(axis=1)
    r1, r2 = np.quantile(elongation, [0.5, 0.9])
    r1 = max(1.25, float(r1))
    ratios = [round(r1, 4), round(max(r1 + 0.25, float(r2)), 4)]
    return {
        "prior_min_sizes": [round(v, 6) for v in mins],
        "prior_max_sizes": [round(v, 6) for v in maxs],
        "prior_ratios": ratios,
    }


def brute_force_best_iou(boxes: np.ndarray, maps: Sequence[PriorMap]) -> np.ndarray:
    """The best IoU of each box with every default box (an [N, P] matrix): the reference
    :func:`best_prior_iou` is tested against."""
    from dsod_core.boxes.ops import box_iou

    priors = cxcywh_to_xyxy(torch.cat([m.boxes() for m in maps]))
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64)).reshape(-1, 4)
    return box_iou(b, priors).max(dim=1).values.numpy()
