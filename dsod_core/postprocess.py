"""Decode + per-class NMS: network outputs to one detection dict per image (docs/dsod.md s. 5)."""

from __future__ import annotations

import torch
from torch import Tensor

from dsod_core.boxes.ops import decode, greedy_nms_mask


def postprocess(
    loc: Tensor,
    conf: Tensor,
    default_boxes: Tensor,
    image_size: tuple[int, int],
    score_threshold: float = 0.01,
    pre_nms_top_k: int = 400,
    nms_iou: float = 0.45,
    max_detections: int = 200,
    variances: tuple[float, float] = (0.1, 0.2),
    clip: bool = True,
) -> list[dict[str, Tensor]]:
    """SSD ``DetectionOutput``: softmax, per-class threshold, top-k, NMS, best per image.

    For each image and each foreground class k: keep priors whose score is ``>= score_threshold``,
    take the ``pre_nms_top_k`` best, apply greedy NMS (suppress IoU > ``nms_iou``); then keep the
    ``max_detections`` best detections of the image over all classes. All classes of an image go
    through one batched NMS (no loop per class or per box). Equal scores are ordered by prior
    index within a class and by class then rank across classes (stable sorts), so the output is
    deterministic.

    Args:
        loc: ``Tensor[B, P, 4]`` regression outputs.
        conf: ``Tensor[B, P, K+1]`` class logits (0 = background).
        default_boxes: ``Tensor[P, 4]`` (cx, cy, w, h) normalised.
        image_size: ``(H, W)`` of the model input in pixels.
        clip: clip decoded boxes to the image before NMS (torchvision's SSD does; the boxes of
            the Caffe model are unclipped, which can only lower their IoU with in-image objects).

    Returns:
        B dicts: ``boxes`` float32 ``[N, 4]`` xyxy in input pixels, ``scores`` float32 ``[N]``,
        ``labels`` int64 ``[N]`` in 1..K, sorted by decreasing score, ``N <= max_detections``.
    """
    bsz, p, k1 = conf.shape
    num_classes = k1 - 1
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=loc.device)
    boxes_all = decode(loc.float(), default_boxes.to(loc.device), variances) * scale  # [B, P, 4]
    if clip:
        boxes_all = torch.minimum(boxes_all.clamp(min=0), scale)
    scores_all = torch.softmax(conf.float(), dim=2)[:, :, 1:]  # [B, P, K]
    top = min(pre_nms_top_k, p)
    labels_k = torch.arange(1, num_classes + 1, device=loc.device)
    return [
        _image_detections(
            boxes_all[b], scores_all[b], labels_k, top, score_threshold, nms_iou, max_detections
        )
        for b in range(bsz)
    ]


def _image_detections(
    boxes: Tensor,
    scores: Tensor,
    labels_k: Tensor,
    top: int,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> dict[str, Tensor]:
    """One image of :func:`postprocess`: ``boxes [P, 4]`` decoded, ``scores [P, K]``
    foreground probabilities, ``labels_k [K]`` = 1..K."""
    cls_scores = scores.t()  # [K, P]
    srt = torch.sort(cls_scores, dim=1, descending=True, stable=True)
    # Scores are sorted, so the candidates of each class are a prefix: trim the columns to
    # the longest prefix (a trained model leaves most classes with few candidates).
    width = int((srt.values[:, :top] >= score_threshold).sum(dim=1).max())
    sc, idx = srt.values[:, :width], srt.indices[:, :width]  # [K, T], best first
    valid = sc >= score_threshold
    cand = boxes[idx]  # [K, T, 4]
    keep = greedy_nms_mask(cand, valid, nms_iou)  # [K, T], classes batched
    kept_scores = sc[keep]  # class-major, rank-minor order
    kept_boxes = cand[keep]
    kept_labels = labels_k[:, None].expand(-1, width)[keep]
    order = torch.sort(kept_scores, descending=True, stable=True).indices[:max_detections]
    return {
        "boxes": kept_boxes[order],
        "scores": kept_scores[order],
        "labels": kept_labels[order].long(),
    }
