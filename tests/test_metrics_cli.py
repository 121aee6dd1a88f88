"""``python -m dsod_core.metrics``: real files, a real subprocess, values against the library."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsod_core.metrics import evaluate_coco_files, evaluate_voc
from dsod_core.metrics.__main__ import main

REPO = Path(__file__).resolve().parents[1]
CATS = [{"id": 7, "name": "car"}, {"id": 3, "name": "person"}, {"id": 12, "name": "dog"}]


def _write_case(tmp_path: Path, seed: int = 0) -> tuple[Path, Path, dict, list]:
    """Three categories with ids 7, 3, 12 (file order not sorted), difficult and crowd objects."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for i in range(6):
        image_id = 10 + i
        images.append({"id": image_id, "file_name": f"{i}.jpg", "width": 320, "height": 240})
        for _ in range(int(rng.integers(1, 5))):
            x, y = rng.uniform(0, 200, 2)
            w, h = rng.uniform(8, 120, 2)
            cat = int(rng.choice([7, 3]))  # category 12 has no ground truth
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [float(x), float(y), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": int(rng.random() < 0.1),
            }
            if rng.random() < 0.2:
                ann["difficult"] = 1
            annotations.append(ann)
            for _ in range(int(rng.integers(0, 3))):
                jit = rng.normal(0, 6, 4)
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": cat if rng.random() < 0.9 else 12,
                        "bbox": [
                            float(x + jit[0]),
                            float(y + jit[1]),
                            float(max(w + jit[2], 1)),
                            float(max(h + jit[3], 1)),
                        ],
                        "score": float(rng.random()),
                    }
                )
        results.append(
            {
                "image_id": image_id,
                "category_id": 3,
                "bbox": [250.0, 200.0, 20.0, 20.0],
                "score": float(rng.random()),
            }
        )
    gt = {"images": images, "annotations": annotations, "categories": CATS}
    gt_path, dets_path = tmp_path / "gt.json", tmp_path / "dets.json"
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(results))
    return gt_path, dets_path, gt, results


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dsod_core.metrics", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _voc_arrays_by_hand(gt: dict, dets: list) -> tuple[list, list]:
    """Per-image arrays with labels 1..3 = category ids 3, 7, 12 (ascending)."""
    label = {3: 1, 7: 2, 12: 3}
    gts, ds = [], []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        mine = [d for d in dets if d["image_id"] == image["id"]]
        gts.append(
            {
                "boxes": np.array(
                    [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (a["bbox"] for a in anns)]
                ),
                "labels": np.array([label[a["category_id"]] for a in anns]),
                "difficult": np.array(
                    [bool(a.get("difficult")) or bool(a["iscrowd"]) for a in anns]
                ),
            }
        )
        ds.append(
            {
                "boxes": np.array(
                    [[b[0], b[1], b[0] + b[2], b[1] + b[3]] for b in (d["bbox"] for d in mine)]
                ).reshape(-1, 4),
                "scores": np.array([d["score"] for d in mine]),
                "labels": np.array([label[d["category_id"]] for d in mine], dtype=int),
            }
        )
    return gts, ds


def _close(value, expected) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return value is None
    return value is not None and abs(value - expected) <= 1e-12


def test_cli_prints_json_matching_the_library(tmp_path: Path) -> None:
    gt_path, dets_path, gt, dets = _write_case(tmp_path)
    proc = _run(str(gt_path), str(dets_path))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("voc07_map", "voc_area_map", "coco_ap", "coco_ap50", "coco_ap75", "per_class"):
        assert key in out

    gts, ds = _voc_arrays_by_hand(gt, dets)
    voc07 = evaluate_voc(gts, ds, 3, 0.5, True)
    voc10 = evaluate_voc(gts, ds, 3, 0.5, False)
    coco = evaluate_coco_files(gt_path, dets_path)
    assert _close(out["voc07_map"], voc07["map"])
    assert _close(out["voc_area_map"], voc10["map"])
    assert _close(out["coco_ap"], coco["ap"]) and _close(out["coco_ap50"], coco["ap50"])
    assert _close(out["coco_ap75"], coco["ap75"])
    assert 0.0 < out["voc07_map"] < 1.0

    # Per class, back in the file's ids, ascending; category 12 has no ground truth → null.
    assert [c["category_id"] for c in out["per_class"]] == [3, 7, 12]
    assert [c["name"] for c in out["per_class"]] == ["person", "car", "dog"]
    coco_ap = dict(zip(coco["category_ids"], coco["per_class_ap"]))
    for c, entry in enumerate(out["per_class"]):
        assert _close(entry["voc07_ap"], voc07["ap"][c])
        assert _close(entry["voc_area_ap"], voc10["ap"][c])
        assert _close(entry["coco_ap"], coco_ap[entry["category_id"]])
    assert out["per_class"][2]["voc07_ap"] is None and out["per_class"][2]["coco_ap"] is None

    # --iou changes only the VOC matching.
    strict = _run(str(gt_path), str(dets_path), "--iou", "0.75")
    assert strict.returncode == 0, strict.stderr
    strict_out = json.loads(strict.stdout)
    assert _close(strict_out["voc07_map"], evaluate_voc(gts, ds, 3, 0.75, True)["map"])
    assert strict_out["voc07_map"] < out["voc07_map"]
    assert strict_out["coco_ap"] == out["coco_ap"]


def test_cli_malformed_json_exits_2_naming_the_file(tmp_path: Path) -> None:
    gt_path, dets_path, _, _ = _write_case(tmp_path)
    dets_path.write_text('[{"image_id": 10, ')
    proc = _run(str(gt_path), str(dets_path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(dets_path) in lines[0] and "malformed JSON" in lines[0]


@pytest.mark.parametrize(
    "change, which, message",
    [
        (lambda gt, dets: dets.append({**dets[0], "image_id": 999}), "dets", "unknown image 999"),
        (lambda gt, dets: dets.append({**dets[0], "category_id": 5}), "dets", "unknown category 5"),
        (lambda gt, dets: gt["annotations"][0].update(bbox=[0, 0, 0, 5]), "gt", "bbox"),
        (lambda gt, dets: gt.pop("categories"), "gt", "categories"),
        (lambda gt, dets: dets[0].pop("score"), "dets", "score"),
    ],
)
def test_cli_bad_content_exits_2(tmp_path: Path, capsys, change, which, message) -> None:
    gt_path, dets_path, gt, dets = _write_case(tmp_path)
    change(gt, dets)
    gt_path.write_text(json.dumps(gt))
    dets_path.write_text(json.dumps(dets))
    assert main([str(gt_path), str(dets_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    named = dets_path if which == "dets" else gt_path
    assert len(err) == 1 and str(named) in err[0] and message in err[0]


def test_cli_missing_file_exits_2(tmp_path: Path, capsys) -> None:
    gt_path, _, _, _ = _write_case(tmp_path)
    assert main([str(gt_path), str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err
    assert "nope.json: file not found" in err
