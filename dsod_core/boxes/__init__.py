"""Box machinery: default boxes, IoU, box coding, matching and NMS (pure tensor functions)."""

from dsod_core.boxes.ops import (
    batched_nms,
    box_area,
    box_iou,
    cxcywh_to_xyxy,
    decode,
    encode,
    greedy_nms_mask,
    match,
    match_batch,
    nms,
    xyxy_to_cxcywh,
)
from dsod_core.boxes.priors import LAYOUTS, boxes_per_location, default_boxes

__all__ = [
    "LAYOUTS",
    "batched_nms",
    "box_area",
    "box_iou",
    "boxes_per_location",
    "cxcywh_to_xyxy",
    "decode",
    "default_boxes",
    "encode",
    "greedy_nms_mask",
    "match",
    "match_batch",
    "nms",
    "xyxy_to_cxcywh",
]
