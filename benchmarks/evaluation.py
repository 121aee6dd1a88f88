"""Evaluation benchmark: COCO scoring of synthetic detections through
``dsod_core.metrics.evaluate_coco`` with each backend (the project's and pycocotools), at
equal results."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Plan, Report, markdown_table


def _synthetic_coco(plan: Plan, seed: int = 0):
    """``plan.eval_images`` images of ground truths and detections, half of them near a
    ground truth (jittered, 80 % with its label), the rest anywhere."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(plan.eval_images):
        n = int(rng.integers(1, 15))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(8, 200, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, plan.eval_classes + 1, n)
        gts.append({"boxes": boxes, "labels": labels})
        # Half the detections near a ground truth (jittered), the rest anywhere.
        near = plan.eval_dets // 2
        pick = rng.integers(0, n, near)
        jitter = rng.normal(0, 0.1, (near, 4)) * np.repeat(wh[pick], 2, axis=1)
        d_near = boxes[pick] + jitter
        lab_near = np.where(
            rng.random(near) < 0.8, labels[pick], rng.integers(1, plan.eval_classes + 1, near)
        )
        far = plan.eval_dets - near
        fxy = rng.uniform(0, 400, (far, 2))
        d_far = np.concatenate([fxy, fxy + rng.uniform(8, 200, (far, 2))], 1)
        d_boxes = np.concatenate([d_near, d_far])
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2] + 1)
        dets.append(
            {
                "boxes": d_boxes,
                "labels": np.concatenate([lab_near, rng.integers(1, plan.eval_classes + 1, far)]),
                "scores": rng.random(plan.eval_dets),
            }
        )
    return gts, dets


def bench_eval(plan: Plan, report: Report) -> dict[str, Any]:
    """Seconds of each backend on the same detections, and how far their scores differ."""
    from dsod_core.metrics import evaluate_coco

    gts, dets = _synthetic_coco(plan)
    results, seconds = {}, {}
    for backend in ("faster", "pycocotools"):
        start = time.perf_counter()
        results[backend] = evaluate_coco(gts, dets, num_classes=plan.eval_classes, backend=backend)
        seconds[backend] = time.perf_counter() - start
        print(f"  {backend}: {seconds[backend]:.1f} s", flush=True)
    stats_diff = float(
        np.max(np.abs(np.subtract(results["faster"]["stats"], results["pycocotools"]["stats"])))
    )
    out = {
        "seconds": seconds,
        "eval_time_ratio": seconds["faster"] / seconds["pycocotools"],
        "stats_max_abs_diff": stats_diff,
        "ap": {k: results[k]["ap"] for k in results},
    }
    rows = [[k, seconds[k], results[k]["ap"], results[k]["ap50"]] for k in seconds]
    report.section(
        f"Evaluation: COCO scoring of {plan.eval_images} images × {plan.eval_dets} detections",
        markdown_table(["backend", "seconds", "AP", "AP50"], rows)
        + f"\n\n{plan.eval_classes} classes, 1–14 ground truths per image; "
        "`dsod_core.metrics.evaluate_coco(..., backend=...)` end to end (building the COCO "
        f"dicts included). The 12 summary numbers differ by at most {stats_diff:.2g}. "
        f"Ratio faster ÷ pycocotools: {out['eval_time_ratio']:.3f}.",
    )
    return out
