"""``python -m dsod_core.metrics GT.json DETS.json [--iou 0.5]``: VOC and COCO figures as JSON.

GT.json is a COCO ground-truth file (an annotation may carry ``"difficult": 1``; ``iscrowd``
is honoured), DETS.json a COCO results list. Prints one JSON object on stdout; on any input
error prints one line naming the file on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from dsod_core.errors import DataError, ProjectError
from dsod_core.metrics.coco import (
    COCO_STAT_NAMES,
    coco_to_arrays,
    evaluate_coco_dicts,
    read_coco_files,
)
from dsod_core.metrics.voc import evaluate_voc


def _clean(value: float | None) -> float | None:
    # Strict JSON has no NaN: a figure that cannot be measured is null.
    return None if value is None or math.isnan(value) else float(value)


def compute_report(
    gt_json: str, dets_json: str, iou_threshold: float = 0.5, backend: str = "faster"
) -> dict[str, Any]:
    """The CLI's JSON object (see the module docstring); raises DataError on bad input."""
    gt, dets = read_coco_files(gt_json, dets_json)
    arrays = coco_to_arrays(gt, dets)
    k = len(arrays["category_ids"])
    if k == 0:
        raise DataError("ground truth has no categories", path=gt_json)
    voc07 = evaluate_voc(arrays["ground_truths"], arrays["detections"], k, iou_threshold, True)
    voc_area = evaluate_voc(arrays["ground_truths"], arrays["detections"], k, iou_threshold, False)
    coco = evaluate_coco_dicts(gt, dets, backend=backend)  # type: ignore[arg-type]
    coco_ap_of = dict(zip(coco["category_ids"], coco["per_class_ap"]))
    per_class = [
        {
            "category_id": cid,
            "name": name,
            "num_gt": voc07["num_gt"][c],
            "voc07_ap": _clean(voc07["ap"][c]),
            "voc_area_ap": _clean(voc_area["ap"][c]),
            "coco_ap": _clean(coco_ap_of.get(cid, float("nan"))),
        }
        for c, (cid, name) in enumerate(zip(arrays["category_ids"], arrays["class_names"]))
    ]
    report: dict[str, Any] = {
        "num_images": len(arrays["image_ids"]),
        "num_detections": len(dets),
        "iou_threshold": iou_threshold,
        "voc07_map": _clean(voc07["map"]),
        "voc_area_map": _clean(voc_area["map"]),
    }
    for name in COCO_STAT_NAMES:
        report[f"coco_{name}"] = _clean(coco[name])
    report["coco_backend"] = backend
    report["per_class"] = per_class
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dsod_core.metrics",
        description="VOC07, VOC area and COCO box AP of COCO results against COCO ground truth.",
    )
    parser.add_argument("gt_json", help="COCO ground-truth JSON")
    parser.add_argument(
        "dets_json", help="COCO results JSON (list of image_id, category_id, bbox, score)"
    )
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of the VOC metrics")
    parser.add_argument("--backend", choices=("faster", "pycocotools"), default="faster")
    args = parser.parse_args(argv)
    if not 0.0 < args.iou <= 1.0:
        parser.error(f"--iou must be in (0, 1], got {args.iou}")
    try:
        report = compute_report(args.gt_json, args.dets_json, args.iou, args.backend)
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
