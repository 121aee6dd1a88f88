"""Detection metrics: VOC07 11-point and VOC area AP, COCO AP via an established evaluator."""

from dsod_core.metrics.coco import (
    COCO_STAT_NAMES,
    build_coco_ground_truth,
    build_coco_results,
    coco_to_arrays,
    evaluate_coco,
    evaluate_coco_dicts,
    evaluate_coco_files,
    read_coco_files,
)
from dsod_core.metrics.froc import LUNA16_FP_RATES, froc, froc_from_datalists
from dsod_core.metrics.plots import (
    draw_detections,
    plot_comparison,
    plot_curves,
    plot_pr_curves,
    save_picture,
)
from dsod_core.metrics.scoring import score_detections
from dsod_core.metrics.voc import evaluate_voc, voc_ap

__all__ = [
    "LUNA16_FP_RATES",
    "froc",
    "froc_from_datalists",
    "COCO_STAT_NAMES",
    "build_coco_ground_truth",
    "build_coco_results",
    "coco_to_arrays",
    "evaluate_coco",
    "evaluate_coco_dicts",
    "evaluate_coco_files",
    "evaluate_voc",
    "plot_comparison",
    "plot_curves",
    "plot_pr_curves",
    "draw_detections",
    "save_picture",
    "score_detections",
    "read_coco_files",
    "voc_ap",
]
