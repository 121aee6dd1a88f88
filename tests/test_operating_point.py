"""The operating point: a score threshold chosen on val, stored in model.pt, used by detect.

The picked threshold is checked against a brute-force search that re-matches the detections
kept at every candidate threshold with the project's VOC matcher (no prefix-sum shortcut);
the stored record is what ``dsod detect`` applies by default and reports (stdout line and
``detect_summary.json``), ``--score-threshold`` overrides it, and a model without one falls
back to the old default with a note.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dsod_core.errors import ConfigError
from dsod_core.inference import Predictor
from dsod_core.metrics.voc import match_detections
from dsod_core.operating_point import (
    DEFAULT_SCORE_THRESHOLD,
    OperatingPointParams,
    calibrate,
    from_predictions,
    pick,
)
from pipelines import detect
from tests.detect_helpers import train_demo_model


# --- brute force --------------------------------------------------------------------------
def _counts(gts, dets, k, t):
    """TP, FP and ground truths of the detections scoring >= t, matched afresh."""
    kept = [
        {key: np.asarray(v)[np.asarray(d["scores"]) >= t] for key, v in d.items()} for d in dets
    ]
    m = match_detections(gts, kept, k, 0.5)
    return int(m["tp"].sum()), int(m["fp"].sum()), int(m["gt_count"].sum())


def brute_force(gts, dets, k, rule, target):
    """The best threshold among the distinct scores (ties: the higher one), by the rule."""
    rows = []
    for t in sorted({float(s) for d in dets for s in d["scores"]}, reverse=True):
        tp, fp, n = _counts(gts, dets, k, t)
        p = tp / (tp + fp) if tp + fp else 0.0
        rows.append((t, p, tp / n, 2 * tp / (tp + fp + n)))
    key = {"f1": 3, "precision": 2, "recall": 1}[rule]
    ok = [r for r in rows if rule == "f1" or r[{"precision": 1, "recall": 2}[rule]] >= target]
    if not ok:  # target not reached: best F1
        ok, key = rows, 3
    return max(ok, key=lambda r: (r[key], r[0]))


def random_set(rng, images=6, k=2):
    gts, dets = [], []
    for _ in range(images):
        n = int(rng.integers(0, 4))
        xy = rng.uniform(0, 60, (n, 2))
        gts.append(
            {
                "boxes": np.c_[xy, xy + rng.uniform(8, 20, (n, 2))],
                "labels": rng.integers(1, k + 1, n),
                "difficult": rng.random(n) < 0.15,
            }
        )
        d = int(rng.integers(0, 8))
        near = gts[-1]["boxes"][rng.integers(0, max(n, 1), d)] if n else np.zeros((d, 4)) + 5
        jitter = rng.normal(0, 3, (d, 4)) * (rng.random((d, 1)) < 0.7)
        boxes = np.sort((near + jitter).reshape(d, 2, 2), axis=1).reshape(d, 4)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = np.round(rng.random(d), 1)  # ties across images and classes
        dets.append({"boxes": boxes, "scores": scores, "labels": rng.integers(1, k + 1, d)})
    return gts, dets


@pytest.mark.parametrize(
    "rule,target",
    [("f1", None), ("precision", 0.5), ("precision", 0.99), ("recall", 0.4), ("recall", 1.0)],
)
def test_pick_equals_brute_force(rule, target):
    rng = np.random.default_rng(7)
    settings = OperatingPointParams.parse({"rule": rule, "target": target})
    checked = 0
    for _ in range(25):
        gts, dets = random_set(rng)
        rec = from_predictions(dets, gts, 2, settings)
        if rec["threshold"] is None:  # no true positive at any threshold
            assert _counts(gts, dets, 2, 0.0)[0] == 0
            continue
        t, p, r, f1 = brute_force(gts, dets, 2, rule, target)
        # The stored threshold keeps exactly the detections the brute-force one keeps.
        all_scores = np.concatenate([d["scores"] for d in dets])
        assert np.array_equal(all_scores >= rec["threshold"], all_scores >= t)
        assert (rec["precision"], rec["recall"], rec["f1"]) == pytest.approx((p, r, f1))
        assert rec["reached"] == (rule == "f1" or (p if rule == "precision" else r) >= target)
        checked += 1
    assert checked >= 15


def test_pick_by_hand():
    # Ranked: 0.9 TP, 0.8 FP, 0.7 TP, 0.6 FP, 0.5 TP; 4 ground truths.
    s, tp, fp = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]
    f1 = pick(s, tp, fp, 4)
    # F1 after each: 2/5, 2/6, 4/7, 4/8, 6/9 -> the last; threshold 0.5 (nothing lower).
    assert f1["threshold"] == 0.5 and f1["f1"] == pytest.approx(6 / 9)
    prec = pick(s, tp, fp, 4, "precision", 0.65)  # P: 1, .5, .67, .5, .6 -> 0.7 (R 0.5)
    assert prec["threshold"] == pytest.approx(0.65) and prec["recall"] == 0.5
    rec = pick(s, tp, fp, 4, "recall", 0.5)  # R>=.5 at 0.7 (P .67), 0.6 (.5), 0.5 (.6)
    assert rec["threshold"] == pytest.approx(0.65) and rec["precision"] == pytest.approx(2 / 3)
    missed = pick(s, tp, fp, 4, "recall", 0.9)
    assert not missed["reached"] and missed["threshold"] == 0.5
    assert pick(s, [0] * 5, [1] * 5, 4)["threshold"] is None


def test_params_refuse_inconsistent_targets():
    with pytest.raises(ConfigError, match="target"):
        OperatingPointParams.parse({"rule": "precision"})
    with pytest.raises(ConfigError, match="target"):
        OperatingPointParams.parse({"rule": "f1", "target": 0.9})


# --- stored in model.pt, used by detect -----------------------------------------------------
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_demo_model(
        "rgb", tmp_path_factory.mktemp("op"), num_images=24, image_size=32, epochs=1
    )


def _detect(model_path, out, image, extra=()):
    argv = ["--model", str(model_path), "--out", str(out), "--no-progress", *extra, str(image)]
    with pytest.raises(SystemExit) as exc:
        detect.main(argv)
    assert exc.value.code == 0
    return json.loads((out / "detect_summary.json").read_text())


def test_calibrate_stores_what_the_val_matches_give(model, tmp_path):
    from dsod_core.data.store import StoreReader
    from dsod_core.engine.weights import load_trained_model
    from dsod_core.evaluation import predict_split

    path = tmp_path / "model.pt"
    shutil.copy(model.model, path)
    settings = OperatingPointParams()
    post = {"score_threshold": 0.01, "nms_iou": 0.45, "max_detections": 200}
    record = calibrate(path, model.store, settings, post=post, device="cpu")
    stored = torch.load(path, weights_only=True)["operating_point"]
    assert stored == record and stored["split"] == "val"
    reader = StoreReader(model.store)
    net, meta = load_trained_model(path)
    preds, targets = predict_split(net, meta, reader, "val", post, torch.device("cpu"), 8)
    assert {k: v for k, v in from_predictions(preds, targets, 3, settings).items()} == {
        k: v for k, v in record.items() if k not in ("split", "least_score")
    }
    assert Predictor(path).threshold["source"] == ("model" if record["threshold"] else "default")


def test_detect_uses_the_stored_threshold_and_reports_it(model, tmp_path, capsys):
    weights = torch.load(model.model, weights_only=True)
    weights["operating_point"] = {
        "threshold": 0.2, "rule": "f1", "target": None, "reached": True,
        "precision": 0.8, "recall": 0.6, "split": "val",
    }  # fmt: skip
    path = tmp_path / "model.pt"
    torch.save(weights, path)
    image = model.root / "JPEGImages" / "000001.jpg"

    summary = _detect(path, tmp_path / "a", image)
    line = capsys.readouterr().out.splitlines()[0]
    assert line == "score threshold 0.2 (stored in model.pt: best F1 on val: P 0.80 R 0.60)"
    assert summary["threshold"]["source"] == "model"
    assert summary["model"]["score_threshold"] == 0.2
    rows = json.loads((tmp_path / "a" / "000001.json").read_text())
    assert all(r["score"] >= 0.2 for r in rows)

    summary = _detect(path, tmp_path / "b", image, ("--score-threshold", "0.05"))
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("score threshold 0.05 (--score-threshold: given explicitly")
    assert summary["threshold"]["source"] == "option" and "0.2" in line
    rows_low = json.loads((tmp_path / "b" / "000001.json").read_text())
    assert len(rows_low) >= len(rows) and min(r["score"] for r in rows_low) >= 0.05

    del weights["operating_point"]  # a model trained before thresholds were stored
    torch.save(weights, path)
    summary = _detect(path, tmp_path / "c", image)
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"score threshold {DEFAULT_SCORE_THRESHOLD} (default: the model")
    assert summary["threshold"]["source"] == "default"
    assert "no operating point" in summary["threshold"]["note"]
