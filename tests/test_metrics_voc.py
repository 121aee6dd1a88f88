"""VOC AP: against an independent loop implementation of the devkit's rules, and by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dsod_core.errors import DataError
from dsod_core.metrics import evaluate_voc, plot_pr_curves, voc_ap

EPS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------------
# Reference: the classic voc_eval structure (py-faster-rcnn / devkit VOCevaldet), plain Python.
# Deliberate, documented choices shared with the library: IoU without +1, match at IoU >= thr,
# stable ranking on score ties, VOC07 recall thresholds k/10.
# --------------------------------------------------------------------------------------------
def ref_iou(d: list[float], g: list[float]) -> float:
    ix1, iy1 = max(d[0], g[0]), max(d[1], g[1])
    ix2, iy2 = min(d[2], g[2]), min(d[3], g[3])
    inter = max(ix2 - ix1, 0.0) * max(iy2 - iy1, 0.0)
    union = (d[2] - d[0]) * (d[3] - d[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union


def ref_voc_ap(rec: list[float], prec: list[float], use_07: bool) -> float:
    if use_07:
        ap = 0.0
        for k in range(11):
            t = k / 10
            reached = [p for r, p in zip(rec, prec) if r >= t]
            ap += (max(reached) if reached else 0.0) / 11.0
        return ap
    mrec = [0.0] + list(rec) + [1.0]
    mpre = [0.0] + list(prec) + [0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    ap = 0.0
    for i in range(len(mrec) - 1):
        if mrec[i + 1] != mrec[i]:
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
    return ap


def ref_voc_eval(gts, dets, cls: int, thr: float, use_07: bool):
    class_recs = {}
    npos = 0
    for i, gt in enumerate(gts):
        boxes = [[float(v) for v in b] for b, lab in zip(gt["boxes"], gt["labels"]) if lab == cls]
        diff = [bool(d) for d, lab in zip(gt["difficult"], gt["labels"]) if lab == cls]
        npos += sum(1 for d in diff if not d)
        class_recs[i] = {"bbox": boxes, "difficult": diff, "det": [False] * len(boxes)}
    entries = []
    for i, det in enumerate(dets):
        for b, s, lab in zip(det["boxes"], det["scores"], det["labels"]):
            if lab == cls:
                entries.append((i, float(s), [float(v) for v in b]))
    entries = sorted(entries, key=lambda e: -e[1])  # sorted() is stable
    tp, fp = [], []
    for i, _, bb in entries:
        rec = class_recs[i]
        ovmax, jmax = -math.inf, -1
        for j, g in enumerate(rec["bbox"]):
            ov = ref_iou(bb, g)
            if ov > ovmax:
                ovmax, jmax = ov, j
        if ovmax >= thr:
            if not rec["difficult"][jmax]:
                if not rec["det"][jmax]:
                    tp.append(1.0)
                    fp.append(0.0)
                    rec["det"][jmax] = True
                else:
                    tp.append(0.0)
                    fp.append(1.0)
            else:
                tp.append(0.0)
                fp.append(0.0)
        else:
            tp.append(0.0)
            fp.append(1.0)
    ctp, cfp, a, b = [], [], 0.0, 0.0
    for t, f in zip(tp, fp):
        a, b = a + t, b + f
        ctp.append(a)
        cfp.append(b)
    prec = [t / max(t + f, EPS) for t, f in zip(ctp, cfp)]
    if npos == 0:
        return float("nan"), prec, None, npos
    rec = [t / npos for t in ctp]
    return ref_voc_ap(rec, prec, use_07), prec, rec, npos


def random_case(rng: np.random.Generator, num_classes: int):
    """Random images with difficult objects, duplicates, empty images, ties, exact IoU 0.5."""
    n_images = int(rng.integers(1, 7))
    integer_coords = rng.random() < 0.5  # integer boxes produce exact IoU ties and IoU == 0.5
    gts, dets = [], []
    for _ in range(n_images):
        n = int(rng.integers(0, 6)) if rng.random() > 0.15 else 0
        xy = rng.uniform(0, 60, (n, 2))
        wh = rng.uniform(4, 40, (n, 2))
        if integer_coords:
            xy, wh = np.round(xy), np.round(wh)
        boxes = np.concatenate([xy, xy + wh], axis=1)
        # The last class never gets ground truth.
        labels = rng.integers(1, max(num_classes, 2), n) if num_classes > 1 else np.ones(n, int)
        if n >= 2 and rng.random() < 0.4:  # a duplicated object: equal IoU with both copies
            boxes[-1], labels[-1] = boxes[0], labels[0]
        gts.append(
            {
                "boxes": boxes.astype(np.float32),
                "labels": labels.astype(np.int64),
                "difficult": rng.random(n) < 0.25,
            }
        )
        d_boxes, d_labels = [], []
        if rng.random() > 0.15:  # some images without any detection
            for _ in range(int(rng.integers(0, 9))):
                kind = rng.random()
                if n and kind < 0.6:  # near a gt (often several near the same one: duplicates)
                    j = int(rng.integers(0, n))
                    jitter = rng.normal(0, 4, 4)
                    if integer_coords:
                        jitter = np.round(jitter)
                    b = boxes[j] + jitter
                    lab = labels[j] if rng.random() < 0.85 else rng.integers(1, num_classes + 1)
                elif n and kind < 0.7:  # exact half-height copy: IoU exactly 0.5
                    j = int(rng.integers(0, n))
                    b = boxes[j].copy()
                    b[3] = b[1] + (b[3] - b[1]) / 2
                    lab = labels[j]
                else:
                    xy0 = rng.uniform(0, 60, 2)
                    b = np.concatenate([xy0, xy0 + rng.uniform(2, 40, 2)])
                    lab = rng.integers(1, num_classes + 1)
                b = np.array([b[0], b[1], max(b[2], b[0]), max(b[3], b[1])])
                d_boxes.append(b)
                d_labels.append(int(lab))
        m = len(d_boxes)
        scores = rng.choice([0.9, 0.5, 0.3], m) if rng.random() < 0.4 else rng.random(m)
        dets.append(
            {
                "boxes": np.asarray(d_boxes, dtype=np.float32).reshape(-1, 4),
                "scores": np.asarray(scores, dtype=np.float32),
                "labels": np.asarray(d_labels, dtype=np.int64),
            }
        )
    return gts, dets


@pytest.mark.parametrize("use_07", [True, False])
def test_matches_loop_reference_on_random_cases(use_07: bool) -> None:
    rng = np.random.default_rng(1234 + int(use_07))
    checked_classes = 0
    for case in range(300):
        k = int(rng.integers(1, 5))
        gts, dets = random_case(rng, k)
        thr = 0.5 if case % 3 else float(rng.choice([0.3, 0.7]))
        result = evaluate_voc(gts, dets, k, iou_threshold=thr, use_07_metric=use_07)
        ref_aps = []
        for cls in range(1, k + 1):
            ap, prec, rec, npos = ref_voc_eval(gts, dets, cls, thr, use_07)
            ref_aps.append(ap)
            assert result["num_gt"][cls - 1] == npos
            # cumsum of 0/1 and one division: bit-identical to the loops.
            np.testing.assert_array_equal(result["precision"][cls - 1], np.asarray(prec))
            if rec is None:
                assert math.isnan(result["ap"][cls - 1])
                assert np.isnan(result["recall"][cls - 1]).all()
            else:
                np.testing.assert_array_equal(result["recall"][cls - 1], np.asarray(rec))
                assert abs(result["ap"][cls - 1] - ap) <= 1e-12, (case, cls)
            checked_classes += 1
        valid = [a for a in ref_aps if not math.isnan(a)]
        if valid:
            assert abs(result["map"] - sum(valid) / len(valid)) <= 1e-12
        else:
            assert math.isnan(result["map"])
    assert checked_classes > 500


def _one_image(gt_boxes, gt_labels, det_boxes, det_scores, det_labels, difficult=None):
    gt = {"boxes": np.asarray(gt_boxes, float).reshape(-1, 4), "labels": np.asarray(gt_labels)}
    if difficult is not None:
        gt["difficult"] = np.asarray(difficult, bool)
    det = {
        "boxes": np.asarray(det_boxes, float).reshape(-1, 4),
        "scores": np.asarray(det_scores, float),
        "labels": np.asarray(det_labels),
    }
    return [gt], [det]


def test_hand_computed_three_detections_two_objects() -> None:
    # d1 (0.9) hits gt1: TP; d2 (0.8) hits nothing: FP; d3 (0.7) hits gt2: TP.
    # recall .5 .5 1, precision 1 .5 2/3.
    gts, dets = _one_image(
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [1, 1],
        [[0, 0, 10, 10], [50, 50, 60, 60], [21, 21, 30, 30]],
        [0.9, 0.8, 0.7],
        [1, 1, 1],
    )
    r07 = evaluate_voc(gts, dets, 1, use_07_metric=True)
    # Thresholds 0..0.5 (6 of them) see precision 1; 0.6..1 (5) see 2/3.
    assert r07["ap"][0] == pytest.approx(28 / 33, abs=1e-12)
    np.testing.assert_allclose(r07["recall"][0], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(r07["precision"][0], [1.0, 0.5, 2 / 3])
    r10 = evaluate_voc(gts, dets, 1, use_07_metric=False)
    assert r10["ap"][0] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-12)
    assert r10["map"] == r10["ap"][0]


def test_difficult_is_ignored_and_duplicate_is_false_positive() -> None:
    # d1 on the difficult gt: ignored; d2 on gt1: TP; d3 on gt1 again: FP.
    gts, dets = _one_image(
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [1, 1],
        [[20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 9]],
        [0.9, 0.8, 0.7],
        [1, 1, 1],
        difficult=[False, True],
    )
    r = evaluate_voc(gts, dets, 1)
    assert r["num_gt"] == [1]
    np.testing.assert_array_equal(r["recall"][0], [0.0, 1.0, 1.0])
    # The ignored first detection gives the devkit's 0/eps = 0 precision.
    np.testing.assert_array_equal(r["precision"][0], [0.0, 1.0, 0.5])
    assert r["ap"][0] == pytest.approx(1.0, abs=1e-12)
    # Without the difficult flag the first detection is a TP and the AP is still 1 but npos 2.
    gts[0]["difficult"] = np.array([False, False])
    r = evaluate_voc(gts, dets, 1)
    assert r["num_gt"] == [2]
    np.testing.assert_array_equal(r["recall"][0], [0.5, 1.0, 1.0])


def test_iou_exactly_at_threshold_matches() -> None:
    # IoU = 50 / 100 = 0.5 exactly: a match at >= 0.5 (the devkit's '>' would reject it).
    gts, dets = _one_image([[0, 0, 10, 10]], [1], [[0, 0, 10, 5]], [0.9], [1])
    assert evaluate_voc(gts, dets, 1, iou_threshold=0.5)["ap"][0] == pytest.approx(1.0)
    assert evaluate_voc(gts, dets, 1, iou_threshold=0.5000001)["ap"][0] == 0.0


def test_voc07_recall_of_exactly_three_tenths_reaches_threshold_point_three() -> None:
    # 10 objects, 3 found with precision 1: thresholds 0, .1, .2, .3 → AP 4/11.
    # (np.arange(0, 1.1, 0.1) would give 0.30000000000000004 and 3/11.)
    assert voc_ap([0.1, 0.2, 3 / 10], [1.0, 1.0, 1.0], True) == pytest.approx(4 / 11, abs=1e-15)
    assert voc_ap([0.1, 0.2, 0.3], [1.0, 1.0, 1.0], False) == pytest.approx(0.3, abs=1e-15)


def test_voc_ap_envelope_by_hand() -> None:
    rec = [0.2, 0.4, 0.4, 0.8]
    prec = [1.0, 0.5, 0.6, 0.4]
    # Envelope: 1 on (0, .2], 0.6 on (.2, .4], 0.4 on (.4, .8], 0 beyond.
    assert voc_ap(rec, prec, False) == pytest.approx(0.2 + 0.2 * 0.6 + 0.4 * 0.4, abs=1e-15)
    # 11-point: t=0,.1,.2 → 1; .3,.4 → .6; .5..,.8 → .4; .9, 1 → 0.
    assert voc_ap(rec, prec, True) == pytest.approx((3 + 2 * 0.6 + 4 * 0.4) / 11, abs=1e-15)
    assert voc_ap([], [], True) == 0.0
    assert voc_ap([], [], False) == 0.0


def test_class_without_ground_truth_is_nan_and_excluded_from_mean() -> None:
    # Class 1: perfect. Class 2: ground truth, no detection → 0, counted.
    # Class 3: a detection but no ground truth → NaN, excluded.
    gts, dets = _one_image(
        [[0, 0, 10, 10], [20, 20, 30, 30]],
        [1, 2],
        [[0, 0, 10, 10], [40, 40, 50, 50]],
        [0.9, 0.8],
        [1, 3],
    )
    r = evaluate_voc(gts, dets, 3)
    assert r["ap"][0] == pytest.approx(1.0)
    assert r["ap"][1] == 0.0
    assert math.isnan(r["ap"][2])
    assert r["map"] == pytest.approx(0.5)
    assert r["num_gt"] == [1, 1, 0]
    assert r["num_detections"] == [1, 0, 1]


def test_empty_inputs() -> None:
    r = evaluate_voc([], [], 2)
    assert math.isnan(r["map"]) and all(math.isnan(a) for a in r["ap"])
    gts, dets = _one_image([[0, 0, 5, 5]], [2], [], [], [])
    r = evaluate_voc(gts, dets, 2)
    assert r["ap"][1] == 0.0 and r["map"] == 0.0


def test_torch_inputs_give_the_same_result() -> None:
    rng = np.random.default_rng(7)
    gts, dets = random_case(rng, 3)
    as_torch = lambda d: {k: torch.from_numpy(np.asarray(v)) for k, v in d.items()}  # noqa: E731
    r_np = evaluate_voc(gts, dets, 3, use_07_metric=False)
    r_t = evaluate_voc([as_torch(g) for g in gts], [as_torch(d) for d in dets], 3, 0.5, False)
    np.testing.assert_array_equal(np.array(r_np["ap"]), np.array(r_t["ap"]))


@pytest.mark.parametrize(
    "gt_labels, det_labels, n_gt_boxes",
    [([0], [1], 1), ([1], [4], 1), ([1, 1], [1], 1)],
)
def test_bad_inputs_raise_data_error(gt_labels, det_labels, n_gt_boxes) -> None:
    gts, dets = _one_image(
        [[0, 0, 4, 4]] * n_gt_boxes, gt_labels, [[0, 0, 4, 4]], [0.5], det_labels
    )
    with pytest.raises(DataError, match="image 0"):
        evaluate_voc(gts, dets, 3)


def test_scores_5000_images_of_100_detections_in_seconds() -> None:
    rng = np.random.default_rng(3)
    gts, dets = [], []
    for _ in range(5000):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 100, (n, 2))], axis=1)
        gts.append(
            {"boxes": boxes, "labels": rng.integers(1, 21, n), "difficult": rng.random(n) < 0.1}
        )
        d = boxes[rng.integers(0, n, 100)] + rng.normal(0, 5, (100, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        dets.append({"boxes": d, "scores": rng.random(100), "labels": rng.integers(1, 21, 100)})
    start = time.perf_counter()
    r = evaluate_voc(gts, dets, 20)
    elapsed = time.perf_counter() - start
    assert sum(r["num_detections"]) == 500_000
    assert 0.0 < r["map"] < 1.0
    assert elapsed < 10.0, f"{elapsed:.1f}s"  # ~0.5 s on one core of the dev machine


def test_plot_pr_curves_writes_a_png(tmp_path) -> None:
    gts, dets = random_case(np.random.default_rng(11), 3)
    result = evaluate_voc(gts, dets, 3)
    out = plot_pr_curves(result, ["a", "b", "c"], tmp_path / "plots" / "pr.png")
    assert out == tmp_path / "plots" / "pr.png"
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (700, 500)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pr.png"]  # no temp file left
    with pytest.raises(ValueError):
        plot_pr_curves(result, ["a", "b"], tmp_path / "x.png")
