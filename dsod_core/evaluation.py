"""Scoring a trained model on one split of a prepared store: predictions, metrics and the
modality-free outputs of the evaluate stage (COCO results, the VOC match table, pictures, the
flat headline metrics). The world outputs are the modality adapter's and are written by the
stage that glues the two (``pipelines/evaluate.py``); nothing here knows a file format.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsod_core.data.store import StoreReader
from dsod_core.engine.evaluator import create_evaluator, eval_loader
from dsod_core.io import atomic_path, write_json
from dsod_core.metrics import build_coco_results, draw_detections, save_picture
from dsod_core.metrics.scoring import voc_matches

# The run's metrics file: few, flat, numeric (what `dvc exp show` and `dvc metrics diff` list).
HEADLINE = ("map50", "map50_area", "coco_ap", "coco_ap50", "coco_ap75", "train_seconds", "params")


def headline(metrics: dict[str, Any]) -> dict[str, float | int | None]:
    """The :data:`HEADLINE` entries of a run's detail metrics, rounded for tables."""
    out: dict[str, float | int | None] = {}
    for key in HEADLINE:
        v = metrics.get(key)
        if isinstance(v, float):
            v = round(v, 1 if key == "train_seconds" else 4)
        out[key] = v
    return out


def predict_split(
    model: torch.nn.Module,
    meta: dict[str, Any],
    reader: StoreReader,
    split: str,
    post: dict[str, Any],
    device: torch.device,
    batch_size: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Detections of every sample of ``split`` (by store index) and their targets, the images
    normalised with the model's own statistics (``meta["mean"]``/``["std"]``)."""
    with torch.no_grad():
        evaluator = create_evaluator(model, device, post)
        evaluator.run(
            eval_loader(
                reader,
                split,
                int(meta["input_size"]),
                batch_size,
                normalisation=(meta["mean"].numpy(), meta["std"].numpy()),
            )
        )
    predictions = sorted(evaluator.state.predictions, key=lambda p: p["index"])
    targets = [reader.read_targets(p["index"]) for p in predictions]  # once per image
    return predictions, targets


def sample_items(
    predictions: list[dict[str, Any]], targets: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The per-sample items an adapter's ``merge``/``export_predictions`` take."""
    return [
        {
            "sample_id": t["sample_id"],
            "source": t["source"],
            "meta": t["meta"],
            "affine": t["affine"],
            "split": t["split"],
            "detections": p,
        }
        for p, t in zip(predictions, targets)
    ]


def write_coco_results(path: Path, predictions: list[dict[str, Any]]) -> Path:
    """COCO results in stored-image pixels (``image_id`` = store index + 1)."""
    rows = build_coco_results(predictions, indices=[p["index"] for p in predictions])
    return write_json(path, rows)


def write_matches(
    path: Path,
    predictions: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    num_classes: int,
) -> Path:
    """``matches.npz``: the VOC match table of the predictions (ranked ``label``, ``image``,
    ``tp``, ``fp``; ``gt_count`` per image and class) with each image's source ``unit`` and
    store ``index``, from which the compare stage bootstraps intervals without the store."""
    table = voc_matches(targets, predictions, num_classes)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                **{k: v for k, v in table.items() if k != "num_classes"},
                unit=np.asarray([t["source"] for t in targets], dtype=str),
                index=np.asarray([p["index"] for p in predictions], dtype=np.int64),
            )
    return path


def write_pictures(
    folder: Path,
    reader: StoreReader,
    predictions: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    render: Callable[[np.ndarray], np.ndarray],
    count: int,
) -> list[Path]:
    """The first ``count`` images with objects, predicted boxes red and true boxes green,
    drawn on ``render(stored image)`` (the adapter's picture of its channels)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with_objects = [(p, t) for p, t in zip(predictions, targets) if len(t["labels"])]
    for p, t in with_objects[:count]:
        rgb = render(reader.read_image(p["index"]))
        path = folder / f"{p['index']:06d}.png"
        save_picture(draw_detections(rgb, p, t, reader.class_names), path)
        written.append(path)
    return written
