"""Stage `evaluate@<run>`: score a trained run on its dataset's test split.

Writes ``reports/runs/<run>/``: ``metrics.json`` (VOC07 11-point mAP@0.5, VOC area mAP, COCO AP
metrics, per-class AP, parameters, training time), ``pr_curves.png``, ``predictions_coco.json``
(COCO results, stored-image coordinates, ``image_id`` = store index), the modality's world
predictions under ``world/`` (GeoJSON in the raster CRS, millimetres for NIfTI, ...) and
``pictures/`` with predicted (red) and true (green) boxes on a modality rendering.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from dsod_core.data.store import StoreReader
from dsod_core.engine.evaluator import create_evaluator, eval_loader, score_predictions
from dsod_core.engine.trainer import load_trained_model
from dsod_core.errors import CheckpointError
from dsod_core.metrics import plot_pr_curves
from pipelines._common import load_params, stage_main, write_json
from pipelines.params import dataset_entry, evaluate_section
from pipelines.prepare import adapter_for

PICTURE_SCALE = 4


def draw_picture(
    rgb: np.ndarray,
    pred: dict[str, np.ndarray],
    truth: dict[str, Any],
    class_names: list[str],
    min_score: float = 0.3,
    max_boxes: int = 10,
) -> Image.Image:
    """``rgb`` uint8 [H, W, 3] enlarged, with true boxes green and the best ``max_boxes``
    predictions scoring at least ``min_score`` red."""
    h, w = rgb.shape[:2]
    s = PICTURE_SCALE
    img = Image.fromarray(rgb).resize((w * s, h * s), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    for box, lab in zip(truth["boxes"], truth["labels"]):
        draw.rectangle([float(v) * s for v in box], outline=(0, 255, 0), width=2)
        draw.text((box[0] * s + 2, box[3] * s - 12), class_names[lab - 1], fill=(0, 255, 0))
    order = np.argsort(-np.asarray(pred["scores"]), kind="stable")[:max_boxes]
    for i in order:
        box, score, lab = pred["boxes"][i], pred["scores"][i], pred["labels"][i]
        if score < min_score:
            continue
        draw.rectangle([float(v) * s for v in box], outline=(255, 0, 0), width=2)
        draw.text(
            (box[0] * s + 2, box[1] * s + 2),
            f"{class_names[lab - 1]} {score:.2f}",
            fill=(255, 0, 0),
        )
    return img


def evaluate_run(run: str, params: dict[str, Any], source: str = "params.yaml") -> dict:
    run_dir = Path("models") / run
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.pt").is_file():
        raise CheckpointError(
            f"run {run!r} has not been trained (no config.json / model.pt)", path=run_dir
        )
    config = json.loads((run_dir / "config.json").read_text())
    dataset = config["dataset"]
    sec = evaluate_section(params, source)
    out = Path("reports/runs") / run
    reader = StoreReader(config["store"])
    model, meta = load_trained_model(run_dir / "model.pt")
    if meta["in_channels"] != reader.num_channels or meta["class_names"] != reader.class_names:
        raise CheckpointError(
            f"model expects {meta['in_channels']} channels / classes {meta['class_names']}, "
            f"store {reader.path} has {reader.num_channels} / {reader.class_names}",
            path=run_dir / "model.pt",
        )
    split = sec.get("split", "test")
    post = {k: sec[k] for k in ("score_threshold", "nms_iou", "max_detections") if k in sec}
    torch.set_grad_enabled(False)
    evaluator = create_evaluator(model, torch.device("cpu"), post)
    evaluator.run(
        eval_loader(reader, split, int(meta["input_size"]), int(sec.get("batch_size", 16)))
    )
    predictions = sorted(evaluator.state.predictions, key=lambda p: p["index"])
    scores = score_predictions(reader, predictions)
    voc07 = scores.pop("_voc07")
    n_params = sum(v.numel() for v in model.parameters() if v.requires_grad)
    metrics = {
        "run": run,
        "dataset": dataset,
        "modality": reader.modality,
        "init": config["init"],
        "split": split,
        **scores,
        "params": n_params,
        "train_seconds": float(meta.get("train_seconds", 0.0)),
        "epochs": len(meta.get("history", [])),
        "variant": meta["variant"],
        "input_size": meta["input_size"],
        "channels": reader.channel_names,
    }
    out.mkdir(parents=True, exist_ok=True)
    plot_pr_curves(voc07, reader.class_names, out / "pr_curves.png")
    coco_results = [
        {
            "image_id": p["index"],
            "category_id": int(lab),
            "score": float(sc),
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
        }
        for p in predictions
        for b, sc, lab in zip(p["boxes"], p["scores"], p["labels"])
    ]
    write_json(out / "predictions_coco.json", coco_results)

    # World coordinates and pictures need the modality adapter (its root holds the sources).
    adapter, _ = adapter_for(dataset_entry(params, dataset, source), source)
    items = []
    for p in predictions:
        t = reader.read_targets(p["index"])
        items.append(
            {
                "sample_id": t["sample_id"],
                "source": t["source"],
                "meta": t["meta"],
                "affine": t["affine"],
                "detections": p,
            }
        )
    world = adapter.export_predictions(items, out / "world")
    metrics["world_outputs"] = [str(w) for w in world]
    metrics.update(adapter.extra_metrics(world, split))
    pic_dir = out / "pictures"
    pic_dir.mkdir(exist_ok=True)
    with_objects = [p for p in predictions if len(reader.read_targets(p["index"])["labels"])]
    for p in with_objects[: int(sec.get("pictures", 4))]:
        t = reader.read_targets(p["index"])
        img = draw_picture(adapter.render(reader.read_image(p["index"])), p, t, reader.class_names)
        tmp = pic_dir / f".{p['index']:06d}.png.tmp"
        img.save(tmp, format="PNG")
        tmp.replace(pic_dir / f"{p['index']:06d}.png")
    write_json(out / "history.json", meta.get("history", []))
    write_json(out / "metrics.json", metrics)
    return metrics


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="'pretrain' or '<dataset>-<init>'")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    m = evaluate_run(args.run, load_params(args.params), args.params)
    print(f"evaluate {args.run}: mAP@0.5 {m['map50']:.3f}  COCO AP {m['coco_ap']:.3f}")
    return 0


if __name__ == "__main__":
    main()
