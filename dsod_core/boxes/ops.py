"""IoU, SSD centre-size box coding, Caffe-style matching and exact vectorised greedy NMS.

Conventions: ``xyxy`` boxes are ``(x1, y1, x2, y2)`` in continuous coordinates (no +1: a box's
width is ``x2 - x1``); ``cxcywh`` boxes are ``(cx, cy, w, h)``. Units are whatever the caller
uses (pixels or normalised), as long as both operands agree.

Why not MONAI/torchvision: torchvision does not import here, and MONAI's ``batched_nms`` /
``non_max_suppression`` run a Python loop per kept box (measured ~2.5 s for 8,000 boxes), and its
matchers follow the ATSS/Retina conventions, not SSD Caffe's ``MatchBBox``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# Largest log-scale a decoded box may have relative to its prior (torchvision's BoxCoder default):
# keeps exp() finite for the wild outputs of an untrained network.
_DECODE_LOG_CLIP = math.log(1000.0 / 16)
# Caffe's MatchBBox only records overlaps above this.
_MIN_OVERLAP = 1e-6


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (cx, cy, w, h) -> ``Tensor[..., 4]`` (x1, y1, x2, y2), same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` (x1, y1, x2, y2) -> ``Tensor[..., 4]`` (cx, cy, w, h), same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """``Tensor[..., 4]`` xyxy -> ``Tensor[...]`` area; inverted boxes count as zero area."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def box_iou(a: Tensor | np.ndarray, b: Tensor | np.ndarray, mode: str = "iou"):
    """Pairwise overlap of xyxy boxes (continuous coordinates, no +1): the project's one IoU.

    Args:
        a: ``[..., N, 4]``; b: ``[..., M, 4]`` (leading dims broadcast), tensors or numpy
            arrays (numpy in, numpy out, computed in the input's precision).
        mode: ``"iou"`` (intersection over union) or ``"iomin"`` (intersection over the
            smaller area: 1 for nested boxes).

    Returns:
        ``[..., N, M]``. A pair whose denominator is empty (degenerate boxes) has overlap 0.
    """
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))
        return box_iou(ta, tb, mode).numpy()
    area_a = box_area(a)
    area_b = box_area(b)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    if mode == "iou":
        denom = area_a[..., :, None] + area_b[..., None, :] - inter
    elif mode == "iomin":
        denom = torch.minimum(area_a[..., :, None], area_b[..., None, :])
    else:
        raise ValueError(f"overlap mode must be 'iou' or 'iomin', got {mode!r}")
    return torch.where(denom > 0, inter / denom.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def encode(
    matched_xyxy: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float] = (0.1, 0.2)
) -> Tensor:
    """SSD centre-size coding of matched boxes against their priors.

    Args:
        matched_xyxy: ``Tensor[..., P, 4]`` xyxy, same units as the priors (normalised).
        priors_cxcywh: ``Tensor[P, 4]`` (cx, cy, w, h).
        variances: (centre variance, size variance), SSD's 0.1 and 0.2.

    Returns:
        ``Tensor[..., P, 4]``: ``((cx - pcx) / (v0 pw), (cy - pcy) / (v0 ph), log(w / pw) / v1,
        log(h / ph) / v1)``. A zero-width or zero-height box gives -inf (never a positive match).
    """
    g = xyxy_to_cxcywh(matched_xyxy)
    p = priors_cxcywh
    dxy = (g[..., :2] - p[..., :2]) / (variances[0] * p[..., 2:])
    dwh = torch.log(g[..., 2:] / p[..., 2:]) / variances[1]
    return torch.cat([dxy, dwh], dim=-1)


def decode(
    loc: Tensor, priors_cxcywh: Tensor, variances: tuple[float, float] = (0.1, 0.2)
) -> Tensor:
    """Inverse of :func:`encode`.

    Args:
        loc: ``Tensor[..., P, 4]`` regression outputs.
        priors_cxcywh: ``Tensor[P, 4]`` (cx, cy, w, h).

    Returns:
        ``Tensor[..., P, 4]`` xyxy in the priors' units. The log-size is clipped at
        ``log(1000/16)`` so exp() stays finite.
    """
    p = priors_cxcywh.to(loc.dtype)
    cxy = p[..., :2] + loc[..., :2] * variances[0] * p[..., 2:]
    wh = p[..., 2:] * torch.exp((loc[..., 2:] * variances[1]).clamp(max=_DECODE_LOG_CLIP))
    return torch.cat([cxy - 0.5 * wh, cxy + 0.5 * wh], dim=-1)


def _bipartite_match(iou: Tensor, matched_gt: Tensor) -> None:
    """Step 1 of :func:`match_batch` on ``iou [B, P, N]``, into ``matched_gt [B, P]`` (in
    place): one greedy pick per image per round; at most N rounds, each on tensors."""
    bsz, p, n = iou.shape
    avail = torch.where(iou > _MIN_OVERLAP, iou, -1.0)
    batch_ids = torch.arange(bsz, device=matched_gt.device)
    for _ in range(n):
        flat = avail.reshape(bsz, p * n)
        # argmax returns the first maximum: row-major over (prior, gt) = Caffe's scan order.
        idx = flat.argmax(dim=1)
        best = flat.gather(1, idx[:, None]).squeeze(1)
        ok = best > _MIN_OVERLAP
        if not bool(ok.any()):
            break
        b_ok, pi, gi = batch_ids[ok], idx[ok] // n, idx[ok] % n
        matched_gt[b_ok, pi] = gi
        avail[b_ok, pi, :] = -1.0
        avail[b_ok, :, gi] = -1.0


def match_batch(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_valid: Tensor,
    priors_cxcywh: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """SSD Caffe ``MatchBBox`` (bipartite + per-prediction), batched over images.

    1. Bipartite: repeatedly take the (prior, gt) pair of highest IoU among unmatched priors and
       unmatched ground truths, match it and remove both. Ties go to the lowest prior index, then
       the lowest gt index (Caffe's scan order). Only pairs with IoU > 1e-6 take part (Caffe
       keeps no smaller overlap), so a ground truth overlapping no prior (e.g. a degenerate box)
       stays unmatched.
    2. Every still unmatched prior whose best IoU is ``>= iou_threshold`` (Caffe's
       ``overlap >= overlap_threshold``; the paper says "> 0.5", which differs only at exact
       equality) takes its best ground truth (ties: lowest gt index).

    Args:
        gt_boxes: ``Tensor[B, N, 4]`` xyxy normalised to the image (padded).
        gt_labels: ``Tensor[B, N]`` int64 in 1..K (padded).
        gt_valid: ``Tensor[B, N]`` bool, False on padding.
        priors_cxcywh: ``Tensor[P, 4]`` default boxes (cx, cy, w, h), normalised.

    Returns:
        ``matched_boxes [B, P, 4]`` xyxy (a background prior gets its own box, so it encodes to
        zeros), ``labels [B, P]`` int64 with 0 = background, ``matched_gt [B, P]`` int64 index of
        the matched ground truth or -1.
    """
    bsz, n = gt_labels.shape
    p = priors_cxcywh.shape[0]
    dev = priors_cxcywh.device
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh).to(gt_boxes.dtype)
    matched_gt = torch.full((bsz, p), -1, dtype=torch.long, device=dev)
    if n > 0:
        iou = box_iou(priors_xyxy, gt_boxes)  # [B, P, N]
        iou = torch.where(gt_valid[:, None, :], iou, -1.0)
        _bipartite_match(iou, matched_gt)
        best_iou, best_gt = iou.max(dim=2)  # first maximum -> lowest gt index on ties
        extra = (matched_gt < 0) & (best_iou >= iou_threshold)
        matched_gt = torch.where(extra, best_gt, matched_gt)
    pos = matched_gt >= 0
    safe = matched_gt.clamp(min=0)
    if n > 0:
        labels = torch.where(pos, gt_labels.gather(1, safe), 0)
        boxes = gt_boxes.gather(1, safe[..., None].expand(-1, -1, 4))
        boxes = torch.where(pos[..., None], boxes, priors_xyxy[None])
    else:
        labels = torch.zeros((bsz, p), dtype=torch.long, device=dev)
        boxes = priors_xyxy[None].expand(bsz, -1, -1).clone()
    return boxes, labels.long(), matched_gt


def match(
    gt_boxes: Tensor, gt_labels: Tensor, priors_cxcywh: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Match one image's ground truths to the priors (see :func:`match_batch` for the rule).

    Args:
        gt_boxes: ``Tensor[N, 4]`` xyxy normalised; ``gt_labels``: ``Tensor[N]`` int64 1..K;
        priors_cxcywh: ``Tensor[P, 4]``. ``N = 0`` gives all background.

    Returns:
        ``matched_boxes [P, 4]`` xyxy and ``labels [P]`` int64 (0 = background).
    """
    valid = torch.ones(gt_labels.shape, dtype=torch.bool, device=gt_labels.device)
    boxes, labels, _ = match_batch(
        gt_boxes[None], gt_labels[None], valid[None], priors_cxcywh, iou_threshold
    )
    return boxes[0], labels[0]


def _suppresses(
    a: Tensor, b: Tensor, ga: Tensor | None, gb: Tensor | None, iou_threshold: float
) -> Tensor:
    """``[..., Na, Nb]`` bool: IoU(a_i, b_j) > threshold (and same group, if groups are given).

    Tested as ``inter > threshold * union`` with in-place ops: ~2.5x faster than building the
    IoU matrix (no division, fewer temporaries); same answer for a threshold in [0, 1], and an
    empty union (two degenerate boxes) never suppresses, as IoU 0 would not.
    """
    x1 = torch.maximum(a[..., :, None, 0], b[..., None, :, 0])
    y1 = torch.maximum(a[..., :, None, 1], b[..., None, :, 1])
    inter = (torch.minimum(a[..., :, None, 2], b[..., None, :, 2]) - x1).clamp_(min=0)
    inter.mul_((torch.minimum(a[..., :, None, 3], b[..., None, :, 3]) - y1).clamp_(min=0))
    union = (box_area(a)[..., :, None] + box_area(b)[..., None, :]).sub_(inter)
    s = inter > union.mul_(iou_threshold)
    if ga is not None and gb is not None:
        s = s & (ga[..., :, None] == gb[..., None, :])
    return s


def greedy_nms_mask(
    boxes: Tensor,
    valid: Tensor,
    iou_threshold: float,
    groups: Tensor | None = None,
    block_size: int = 256,
) -> Tensor:
    """Exact greedy NMS on boxes already sorted by decreasing score, batched over leading dims.

    Box ``i`` is kept iff it is valid and no kept, valid box ``j < i`` (of the same group, if
    ``groups`` is given) has IoU > ``iou_threshold`` with it: the definition of greedy NMS.

    The boxes are processed in blocks of ``block_size``. For each block, the kept boxes of the
    earlier blocks suppress in one batched comparison; inside the block, with ``S`` the strictly
    upper-triangular "j suppresses i" matrix, the fixed point of ``keep_i = cand_i and not
    any_j(S[j, i] and keep_j)`` is found by iteration. That fixed point is unique (by induction on
    i) and equals greedy NMS; iteration t settles every box whose longest suppression chain has
    length < t, so it converges in at most ``block_size + 1`` steps and in practice in a few.
    No Python loop per box; memory is ``O(n * block_size)``.

    Args:
        boxes: ``Tensor[..., n, 4]`` xyxy, sorted by decreasing score.
        valid: ``Tensor[..., n]`` bool; invalid entries are neither kept nor suppress.
        iou_threshold: in [0, 1]; suppress when IoU is strictly greater.
        groups: optional ``Tensor[..., n]`` int; only boxes of the same group suppress each other.

    Returns:
        ``Tensor[..., n]`` bool keep mask.
    """
    n = boxes.shape[-2]
    keep = valid.clone()
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        cand = valid[..., start:end]
        if not bool(cand.any()):
            continue
        g_blk = None if groups is None else groups[..., start:end]
        if start > 0:
            cand = cand & ~_suppressed_by_kept(boxes, keep, groups, start, end, iou_threshold)
        keep[..., start:end] = _settle_block(boxes[..., start:end, :], cand, g_blk, iou_threshold)
    return keep


def _suppressed_by_kept(
    boxes: Tensor,
    keep: Tensor,
    groups: Tensor | None,
    start: int,
    end: int,
    iou_threshold: float,
) -> Tensor:
    """``[..., end - start]`` bool: the boxes of the block ``start:end`` that a kept box before
    ``start`` suppresses. Only kept earlier boxes can suppress: they are compacted to the front
    (per leading row) and compared alone, which is most of the time saved over a full IoU
    matrix."""
    kept_prev = keep[..., :start]
    m = int(kept_prev.sum(dim=-1).max())
    if m == 0:
        return torch.zeros_like(keep[..., start:end])
    blk = boxes[..., start:end, :]
    g_blk = None if groups is None else groups[..., start:end]
    sel = torch.sort(kept_prev.to(torch.uint8), dim=-1, descending=True, stable=True)
    sel = sel.indices[..., :m]
    prev = boxes[..., :start, :].gather(-2, sel[..., None].expand(*sel.shape, 4))
    g_prev = None if groups is None else groups[..., :start].gather(-1, sel)
    s_prev = _suppresses(prev, blk, g_prev, g_blk, iou_threshold)
    s_prev = s_prev & kept_prev.gather(-1, sel)[..., :, None]
    return s_prev.any(dim=-2)


def _settle_block(blk: Tensor, cand: Tensor, g_blk: Tensor | None, iou_threshold: float) -> Tensor:
    """Greedy NMS inside one block of candidates ``cand``: the fixed point of ``keep_i =
    cand_i and not any_j(S[j, i] and keep_j)`` (see :func:`greedy_nms_mask`)."""
    s_in = _suppresses(blk, blk, g_blk, g_blk, iou_threshold)
    s_in = torch.triu(s_in, diagonal=1) & cand[..., :, None]
    kb = cand
    for _ in range(blk.shape[-2] + 1):
        new = cand & ~(s_in & kb[..., :, None]).any(dim=-2)
        if torch.equal(new, kb):
            break
        kb = new
    return kb


def _order_by_score(scores: Tensor) -> Tensor:
    # Stable descending sort: equal scores keep their input order (lower index first), so the
    # result is deterministic and matches a greedy loop over ``sorted(range(n), key=-score)``.
    return torch.sort(scores, descending=True, stable=True).indices


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Exact greedy NMS.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy; scores: ``Tensor[N]`` (finite).
        iou_threshold: a box is suppressed by a higher-scored kept box with IoU > threshold.

    Returns:
        ``Tensor[K]`` int64 indices of kept boxes, by decreasing score; equal scores are taken in
        input order (lower index first).
    """
    order = _order_by_score(scores)
    valid = torch.ones(order.shape, dtype=torch.bool, device=boxes.device)
    keep = greedy_nms_mask(boxes[order], valid, iou_threshold)
    return order[keep]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware greedy NMS: boxes of different ``idxs`` never suppress each other.

    Boxes are laid out per class in a padded ``[classes, max_per_class]`` grid and all classes go
    through one batched :func:`greedy_nms_mask`, so only same-class pairs are compared. When the
    classes are so unbalanced that padding would cost more than it saves, one flat pass with a
    same-class mask is used instead. Neither uses torchvision's coordinate-offset trick, whose
    large offsets cost float precision; the result is the same.

    Args:
        boxes: ``Tensor[N, 4]`` xyxy; scores: ``Tensor[N]``; idxs: ``Tensor[N]`` int class ids.

    Returns:
        ``Tensor[K]`` int64 indices of kept boxes, by decreasing score (ties: lower index first).
    """
    n = scores.shape[0]
    dev = boxes.device
    order = _order_by_score(scores)  # score desc, ties by index
    if n == 0:
        return order
    # Stable sort by class keeps the score order inside each class.
    by_class = order[torch.sort(idxs[order], stable=True).indices]
    _, counts = torch.unique_consecutive(idxs[by_class], return_counts=True)
    num_groups, widest = counts.numel(), int(counts.max())
    if num_groups * widest > 2 * n:
        valid = torch.ones(n, dtype=torch.bool, device=dev)
        keep = greedy_nms_mask(boxes[order], valid, iou_threshold, groups=idxs[order])
        return order[keep]
    group = torch.repeat_interleave(torch.arange(num_groups, device=dev), counts)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=dev) - first[group]
    grid = boxes.new_zeros((num_groups, widest, 4))
    grid[group, slot] = boxes[by_class]
    valid = torch.zeros((num_groups, widest), dtype=torch.bool, device=dev)
    valid[group, slot] = True
    keep = greedy_nms_mask(grid, valid, iou_threshold)[group, slot]
    kept = torch.sort(by_class[keep]).values  # ascending index, so the next stable sort ...
    return kept[_order_by_score(scores[kept])]  # ... breaks score ties by lower index
