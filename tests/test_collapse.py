"""A run that learnt nothing says so: :func:`dsod_core.diagnostics.collapse_check` flags a real
detector whose output does not depend on the image, not a learning run (nor the demo's weakest
one), and the compare report names the arm that did not learn instead of reading its interval
as "no difference"."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from dsod_core.diagnostics import MAP_FLOOR, collapse_check
from dsod_core.evaluation import headline, write_matches
from dsod_core.model import build_model
from dsod_core.report.compare import build_report, load_run_row, markdown, summary

FLAT = [{"epoch": e, "loss": v} for e, v in enumerate([5.12, 5.08, 5.05, 5.03, 5.01, 5.0], 1)]
LEARNT = [
    {"epoch": 4, "loss": 8.1, "val_map50": 0.21},
    {"epoch": 8, "loss": 4.0, "val_map50": 0.45},
    {"epoch": 12, "loss": 3.1, "val_map50": 0.55},
    {"epoch": 16, "loss": 2.7, "val_map50": 0.61},
]


def _detections(model: nn.Module, n: int = 6) -> list[dict]:
    torch.manual_seed(0)
    images = torch.randn(n, 2, 32, 32) * 2
    with torch.no_grad():
        dets = model.eval().detect(images, score_threshold=0.01, max_detections=200)
    return [{k: v.numpy() for k, v in d.items()} for d in dets]


def _model(collapsed: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("dsod_tiny", in_channels=2, num_classes=2, input_size=32)
    if collapsed:  # every conv weight 0: the heads see the same features for every image
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.weight)
    return model


def test_constant_model_is_flagged():
    preds = _detections(_model(collapsed=True))
    assert all(len(p["scores"]) == len(preds[0]["scores"]) > 50 for p in preds)
    check = collapse_check(FLAT, preds, map50=0.0)
    assert check["collapsed"] is True
    assert check["scores"]["constant"] and check["scores"]["spread"] < 1e-6
    assert check["loss"]["flat"] and len(check["reasons"]) == 3
    mean = check["scores"]["mean"]
    assert check["summary"] == (
        f"mAP@0.5 0.000, scores constant ({mean:.3f} ± 0.000), loss 5.1 -> 5.0"
    )


def test_learning_runs_are_not_flagged():
    preds = _detections(_model(collapsed=False))  # random weights: scores differ per image
    check = collapse_check(LEARNT, preds, map50=0.61)
    assert check["collapsed"] is False and check["reasons"] == []
    assert not check["scores"]["constant"] and not check["loss"]["flat"]
    # the demo's weakest run (depth, scratch, half the data): mAP 0.069, loss falling
    assert not collapse_check(LEARNT, None, map50=0.069)["collapsed"]
    # near-zero mAP after a whole run is enough, even with a falling loss and varied scores
    low = collapse_check(LEARNT, preds, map50=0.004)
    assert low["collapsed"] and low["reasons"] == [f"mAP@0.5 0.004 < {MAP_FLOOR}"]
    # training only (no predictions): the last val mAP and the loss decide
    assert collapse_check(FLAT + [{"epoch": 7, "loss": 5.0, "val_map50": 0.0}])["collapsed"]
    assert headline({"map50": 0.5, "collapsed": False})["collapsed"] == 0  # numbers only
    assert headline({"map50": 0.0, "collapsed": True})["collapsed"] == 1


def _truth(i: int) -> dict:
    return {
        "boxes": np.array([[4.0 + i, 6.0, 20.0 + i, 22.0]], np.float32),
        "labels": np.array([1]),
        "difficult": np.array([False]),
        "crowd": np.array([False]),
        "source": f"u{i}",
    }


def _write_run(folder, preds, truths, history, map50, check=True):
    folder.mkdir(parents=True)
    write_matches(folder / "matches.npz", preds, truths, num_classes=1)
    detail = {
        "dataset": "ir",
        "modality": "thermal",
        "map50": map50,
        "coco_ap": map50 / 2,
        "map50_area": map50,
        "coco_ap50": map50,
        "per_class_ap50": {"target": map50},
        "params": 10,
        "train_seconds": 1.0,
        "epochs": len(history),
        "channels": ["t"],
        "train_images": 8,
    }
    if check:
        detail["collapse"] = collapse_check(history, preds, map50)
    (folder / "detail.json").write_text(json.dumps(detail))
    (folder / "history.json").write_text(json.dumps(history))


def test_compare_report_names_the_arm_that_did_not_learn(tmp_path):
    truths = [_truth(i) for i in range(8)]
    grid = np.array([[x, y, x + 8, y + 8] for x in (0, 40) for y in (0, 40)], np.float32)
    constant = [
        {"index": i, "boxes": grid, "scores": np.full(4, 0.124, np.float32), "labels": np.ones(4)}
        for i in range(8)
    ]
    good = [
        {"index": i, "boxes": t["boxes"], "scores": np.array([0.9 - i / 100]), "labels": [1]}
        for i, t in enumerate(truths)
    ]
    _write_run(tmp_path / "s", constant, truths, FLAT, 0.0)
    _write_run(tmp_path / "f", good, truths, LEARNT, 1.0)
    keys = {"seed": 0, "train_fraction": 1.0}
    rows = [
        load_run_row(tmp_path / "s", init="scratch", source=None, **keys),
        load_run_row(tmp_path / "f", init="finetuned", source="rgb", **keys),
    ]
    report = build_report([], rows, replicates=50)
    (diff,) = report["differences"]
    expected = (
        "scratch did not learn: mAP@0.5 0.000, scores constant (0.124 ± 0.000), loss 5.1 -> 5.0"
    )
    assert diff["did_not_learn"] == ["scratch"]
    assert diff["statement"].startswith(expected)
    page = markdown(report, {})
    assert expected in page and "did not learn: scratch" in page  # statement and matrix cell
    assert "no difference is shown" not in page and "contains 0" not in page
    assert summary(report)["ir"]["scratch"]["collapsed_seeds"] == 1
    assert "collapsed_seeds" not in summary(report)["ir"]["finetuned_from_rgb"]
    # a run evaluated before the check existed: judged from its history and mAP
    _write_run(tmp_path / "old", constant, truths, FLAT, 0.0, check=False)
    old = load_run_row(tmp_path / "old", init="scratch", source=None, **keys)
    assert old["collapse"]["collapsed"] and "scores" not in old["collapse"]["summary"]
