"""COCO AP: faster-coco-eval against pycocotools, hand-computed cases, difficult policies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dsod_core.errors import DataError
from dsod_core.metrics import (
    COCO_STAT_NAMES,
    evaluate_coco,
    evaluate_coco_dicts,
    evaluate_coco_files,
    evaluate_voc,
)

CATEGORY_IDS = [2, 5, 11, 40]  # non-contiguous on purpose


def random_coco_case(rng: np.random.Generator, n_images: int):
    """COCO dicts: crowd objects, sizes across small/medium/large, a category without gt."""
    categories = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    with_gt = CATEGORY_IDS[:-1]  # category 40 never has ground truth
    images, annotations, results = [], [], []
    for i in range(n_images):
        image_id = 100 + 3 * i  # non-contiguous image ids too
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{i}.png"})
        n = int(rng.integers(0, 7))
        gt_boxes, gt_cats = [], []
        for _ in range(n):
            side = float(np.exp(rng.uniform(np.log(4), np.log(220))))  # ~16 to ~48000 px²
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 400), rng.uniform(0, 300)
            cat = int(rng.choice(with_gt))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.12),
                }
            )
            gt_boxes.append([x, y, w, h])
            gt_cats.append(cat)
        # Up to 130 detections in some images so maxDets=100 truncates.
        m = int(rng.integers(0, 130)) if rng.random() < 0.15 else int(rng.integers(0, 12))
        for _ in range(m):
            if gt_boxes and rng.random() < 0.6:
                j = int(rng.integers(0, len(gt_boxes)))
                x, y, w, h = gt_boxes[j]
                s = max(w, h)
                x, y = x + rng.normal(0, 0.08 * s), y + rng.normal(0, 0.08 * s)
                w, h = w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)
                cat = gt_cats[j] if rng.random() < 0.85 else int(rng.choice(CATEGORY_IDS))
            else:
                x, y = rng.uniform(0, 500), rng.uniform(0, 400)
                w, h = rng.uniform(3, 150), rng.uniform(3, 150)
                cat = int(rng.choice(CATEGORY_IDS))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "score": float(rng.random()),
                }
            )
    gt = {"images": images, "annotations": annotations, "categories": categories}
    return gt, results


def _assert_same(a: dict, b: dict, tol: float = 1e-6) -> None:
    np.testing.assert_allclose(np.array(a["stats"]), np.array(b["stats"]), rtol=0, atol=tol)
    for key in ("per_class_ap", "per_class_ap50"):
        np.testing.assert_allclose(np.array(a[key]), np.array(b[key]), rtol=0, atol=tol)
    assert a["category_ids"] == b["category_ids"]


def test_faster_equals_pycocotools_on_random_cases() -> None:
    rng = np.random.default_rng(2024)
    saw_crowd = saw_small = saw_large = 0
    for case in range(25):
        gt, dets = random_coco_case(rng, int(rng.integers(1, 12)))
        if case % 2:  # tied scores: both evaluators rank ties by a stable sort
            for det in dets:
                det["score"] = float(rng.choice([0.2, 0.5, 0.9]))
        gt_before, dets_before = json.dumps(gt), json.dumps(dets)
        fast = evaluate_coco_dicts(gt, dets, backend="faster")
        ref = evaluate_coco_dicts(gt, dets, backend="pycocotools")
        _assert_same(fast, ref)
        # Neither evaluator left its marks (ignore, area, id, segmentation) on our inputs.
        assert json.dumps(gt) == gt_before and json.dumps(dets) == dets_before
        assert fast["category_ids"] == CATEGORY_IDS
        assert math.isnan(fast["per_class_ap"][-1])  # category 40 has no ground truth
        saw_crowd += any(a["iscrowd"] for a in gt["annotations"])
        saw_small += not math.isnan(fast["ap_small"])
        saw_large += not math.isnan(fast["ap_large"])
        # The mean of the per-class APs is COCO's AP (same cells, same weights).
        valid = [v for v in fast["per_class_ap"] if not math.isnan(v)]
        if valid and len(dets):
            assert fast["ap"] == pytest.approx(float(np.mean(valid)), abs=1e-9)
    assert saw_crowd > 5 and saw_small > 5 and saw_large > 5


def test_in_memory_arrays_equal_the_coco_dict_path() -> None:
    rng = np.random.default_rng(5)
    gt, dets = random_coco_case(rng, 6)
    # The same data as per-image arrays with labels 1..K (category id order).
    label_of = {c: i + 1 for i, c in enumerate(CATEGORY_IDS)}
    ground_truths, detections = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        ds = [d for d in dets if d["image_id"] == image["id"]]

        def xyxy(items):
            return np.array(
                [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (x["bbox"] for x in items)]
            ).reshape(-1, 4)

        ground_truths.append(
            {
                "boxes": torch.tensor(xyxy(anns), dtype=torch.float64),
                "labels": torch.tensor([label_of[a["category_id"]] for a in anns]),
                "iscrowd": torch.tensor([bool(a["iscrowd"]) for a in anns]),
            }
        )
        detections.append(
            {
                "boxes": xyxy(ds),
                "scores": np.array([d["score"] for d in ds]),
                "labels": np.array([label_of[d["category_id"]] for d in ds], dtype=np.int64),
            }
        )
    names = [f"c{c}" for c in CATEGORY_IDS]
    from_arrays = evaluate_coco(ground_truths, detections, class_names=names)
    from_dicts = evaluate_coco_dicts(gt, dets)
    # xyxy → xywh round trip can move a coordinate by one ulp: hence 1e-9, not equality.
    np.testing.assert_allclose(from_arrays["stats"], from_dicts["stats"], atol=1e-9)
    np.testing.assert_allclose(from_arrays["per_class_ap"], from_dicts["per_class_ap"], atol=1e-9)
    assert from_arrays["category_ids"] == [1, 2, 3, 4]


def _single(gt_xyxy, det_xyxy, scores, difficult=None, labels=None):
    n = len(gt_xyxy)
    gt = {
        "boxes": np.asarray(gt_xyxy, float).reshape(-1, 4),
        "labels": np.ones(n, int) if labels is None else np.asarray(labels),
    }
    if difficult is not None:
        gt["difficult"] = np.asarray(difficult, bool)
    det = {
        "boxes": np.asarray(det_xyxy, float).reshape(-1, 4),
        "scores": np.asarray(scores, float),
        "labels": np.ones(len(det_xyxy), int),
    }
    return [gt], [det]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_hand_computed_iou_062_large_object(backend: str) -> None:
    # IoU 0.62: a TP at thresholds .50, .55, .60 of the ten → AP = 0.3, AP50 = 1, AP75 = 0.
    gts, dets = _single([[0, 0, 100, 100]], [[0, 0, 100, 62]], [0.9])
    r = evaluate_coco(gts, dets, backend=backend)
    assert r["ap"] == pytest.approx(0.3, abs=1e-12)
    assert r["ap50"] == pytest.approx(1.0) and r["ap75"] == 0.0
    assert r["ap_large"] == pytest.approx(0.3, abs=1e-12)  # area 10000 >= 96²
    assert math.isnan(r["ap_small"]) and math.isnan(r["ap_medium"])
    assert r["ar1"] == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_difficult_policies(backend: str) -> None:
    # Object A normal, B difficult; the best detection sits on B, the next on A.
    gts, dets = _single(
        [[0, 0, 50, 50], [100, 100, 150, 150]],
        [[100, 100, 150, 150], [0, 0, 50, 50]],
        [0.9, 0.8],
        difficult=[False, True],
    )
    crowd = evaluate_coco(gts, dets, backend=backend, difficult="crowd")
    drop = evaluate_coco(gts, dets, backend=backend, difficult="drop")
    keep = evaluate_coco(gts, dets, backend=backend, difficult="keep")
    assert crowd["ap50"] == pytest.approx(1.0)  # the detection on B is ignored
    assert drop["ap50"] == pytest.approx(0.5)  # it is a FP ranked first: precision 1/2
    assert keep["ap50"] == pytest.approx(1.0)
    assert keep["ar100"] == pytest.approx(1.0) and drop["ar100"] == pytest.approx(1.0)
    # VOC treats it the same way as "crowd".
    assert evaluate_voc(gts, dets, 1)["ap"][0] == pytest.approx(1.0)
    # Only A detected: B missing costs recall under "keep" alone.
    dets = [{"boxes": dets[0]["boxes"][1:], "scores": dets[0]["scores"][1:], "labels": [1]}]
    assert evaluate_coco(gts, dets, backend=backend, difficult="crowd")["ap50"] == pytest.approx(1)
    assert evaluate_coco(gts, dets, backend=backend, difficult="drop")["ap50"] == pytest.approx(1)
    keep = evaluate_coco(gts, dets, backend=backend, difficult="keep")
    assert keep["ar100"] == pytest.approx(0.5)
    assert keep["ap50"] == pytest.approx(51 / 101, abs=1e-12)  # recall points 0..0.5 of 101


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_no_detections_gives_zero_and_no_gt_gives_nan(backend: str) -> None:
    gts, dets = _single([[0, 0, 10, 10]], [], [])
    r = evaluate_coco(gts, dets, backend=backend)
    assert r["ap"] == 0.0 and r["ar100"] == 0.0
    gts, dets = _single([], [[0, 0, 10, 10]], [0.5])
    r = evaluate_coco(gts, dets, backend=backend)
    assert math.isnan(r["ap"]) and math.isnan(r["per_class_ap"][0])


def test_result_keys_and_bad_inputs(tmp_path) -> None:
    gts, dets = _single([[0, 0, 10, 10]], [[0, 0, 10, 10]], [0.5])
    r = evaluate_coco(gts, dets)
    assert set(COCO_STAT_NAMES) <= set(r) and r["ap"] == pytest.approx(1.0)
    with pytest.raises(DataError, match="1..1"):
        evaluate_coco(gts, [{**dets[0], "labels": np.array([2])}], class_names=["a"])
    with pytest.raises(ValueError):
        evaluate_coco(gts, dets, backend="nope")
    bad = tmp_path / "gt.json"
    bad.write_text("{not json")
    good = tmp_path / "dets.json"
    good.write_text(json.dumps([]))
    with pytest.raises(DataError, match="gt.json.*malformed JSON"):
        evaluate_coco_files(bad, good)
    with pytest.raises(DataError, match="missing.json: file not found"):
        evaluate_coco_files(tmp_path / "missing.json", good)


def test_evaluate_coco_files_equals_dicts(tmp_path) -> None:
    gt, dets = random_coco_case(np.random.default_rng(9), 5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    from_files = evaluate_coco_files(tmp_path / "gt.json", tmp_path / "dets.json")
    _assert_same(from_files, evaluate_coco_dicts(gt, dets, backend="pycocotools"), tol=1e-12)
