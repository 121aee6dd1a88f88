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
from dsod_core.errors import DataError
from dsod_core.io import atomic_path, write_json
from dsod_core.metrics import build_coco_results, draw_detections, save_picture
from dsod_core.metrics.scoring import voc_matches
from dsod_core.tiling import FRAMES_UNIT, merge_frames

# The run's metrics file: few, flat, numeric (what `dvc exp show` and `dvc metrics diff` list);
# `collapsed`: 1 when the model learnt nothing (dsod_core.diagnostics.collapse_check), else 0.
HEADLINE = (
    "map50",
    "map50_area",
    "coco_ap",
    "coco_ap50",
    "coco_ap75",
    "train_seconds",
    "params",
    "collapsed",
)


def headline(metrics: dict[str, Any]) -> dict[str, float | int | None]:
    """The :data:`HEADLINE` entries of a run's detail metrics, rounded for tables."""
    out: dict[str, float | int | None] = {}
    for key in HEADLINE:
        v = metrics.get(key)
        if isinstance(v, bool):  # numbers only: 1 / 0
            v = int(v)
        elif isinstance(v, float):
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


def frame_level(
    predictions: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    reader: StoreReader,
    split: str,
    max_detections: int = 200,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The whole frames of a tiled store (its params record ``tiling``; None for a store of
    whole images): the detections of each frame's tiles mapped to frame pixels and merged by
    :func:`dsod_core.tiling.merge_frames` (the rule ``dsod detect`` and raster chips use;
    at most ``max_detections``, best first), with the frame's own ground truth from
    ``/units`` (:data:`dsod_core.tiling.FRAMES_UNIT`), in the shape of
    :func:`predict_split`'s. Every frame of ``split`` is scored, ordered by its first tile's
    store index (a prediction's ``index``; -1 for a frame none of whose tiles was kept)."""
    tiling = reader.params.get("tiling")
    if not tiling:
        return None
    frames = (reader.units.get(FRAMES_UNIT) or {}).get("frames")
    if not frames:
        raise DataError("tiled store without frame records in /units: re-run prepare", reader.path)
    items = [{"meta": t["meta"], "detections": p} for p, t in zip(predictions, targets)]
    merged = merge_frames(items, float(tiling.get("merge_iou", 0.45)))
    first: dict[str, int] = {}
    for p, t in zip(predictions, targets):
        first.setdefault(t["meta"]["parent"], int(p["index"]))
    rows = []
    for parent, rec in frames.items():
        if rec["split"] != split:
            continue
        det = merged.get(parent) or {"boxes": np.zeros((0, 4)), "scores": [], "labels": []}
        n = min(len(det["scores"]), max_detections)
        pred = {
            "index": first.get(parent, -1),
            "boxes": np.asarray(det["boxes"], dtype=np.float32).reshape(-1, 4)[:n],
            "scores": np.asarray(det["scores"], dtype=np.float32)[:n],
            "labels": np.asarray(det["labels"], dtype=np.int64)[:n],
        }
        rows.append((pred, _frame_target(parent, rec, reader.num_channels)))
    rows.sort(key=lambda r: (r[0]["index"] < 0, r[0]["index"]))
    return [r[0] for r in rows], [r[1] for r in rows]


def _frame_target(parent: str, rec: dict[str, Any], channels: int) -> dict[str, Any]:
    """A frame record (:func:`dsod_core.tiling.frame_record`) as ``StoreReader.read_targets``
    gives a sample's."""
    n = len(rec["labels"])
    return {
        "boxes": np.asarray(rec["boxes"], dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(rec["labels"], dtype=np.int64).reshape(-1),
        "difficult": np.asarray(rec["difficult"], dtype=bool).reshape(n),
        "crowd": np.asarray(rec["crowd"], dtype=bool).reshape(n),
        "shape": (channels, int(rec["size"][1]), int(rec["size"][0])),
        "sample_id": parent,
        "source": rec["source"],
        "unit": rec.get("unit", rec["source"]),
        "split": rec["split"],
        "affine": np.asarray(rec["affine"], dtype=np.float64),
        "meta": rec["meta"],
    }


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
    ``tp``, ``fp``; ``gt_count`` per image and class) with each image's independence ``unit``
    (its group, else its source) and store ``index``, from which the compare stage bootstraps
    intervals without the store."""
    table = voc_matches(targets, predictions, num_classes)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                **{k: v for k, v in table.items() if k != "num_classes"},
                unit=np.asarray([t.get("unit", t["source"]) for t in targets], dtype=str),
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
