"""Evaluation: batched inference, gathering across processes, and scoring on rank 0."""

from __future__ import annotations

from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.utils.data import DataLoader

from dsod_core.data.collate import detection_collate
from dsod_core.data.dataset import DetectionDataset
from dsod_core.data.store import StoreReader
from dsod_core.data.transforms import build_eval_transform


def eval_loader(
    reader: StoreReader, split: str, input_size: int, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """A loader over ``split`` (resize only), sharded across processes by sample position."""
    ds = DetectionDataset(reader, split, build_eval_transform(input_size))
    indices = list(range(len(ds)))[idist.get_rank() :: idist.get_world_size()]
    subset = torch.utils.data.Subset(ds, indices)
    return DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=detection_collate,
    )


def create_evaluator(
    model: nn.Module, device: torch.device, postprocess: dict[str, Any] | None = None
) -> Engine:
    """An Ignite engine whose ``state.predictions`` collects one dict per image:
    ``index`` (store index), ``boxes`` float32 ``[D, 4]`` in pixels of the **stored** image,
    ``scores`` ``[D]`` and ``labels`` int64 ``[D]``."""
    kwargs = dict(postprocess or {})

    @torch.no_grad()
    def step(engine: Engine, batch: dict[str, Any]) -> None:
        model.eval()
        images = batch["images"].to(device)
        detector = model.module if hasattr(model, "module") else model
        dets = detector.detect(images, **kwargs)
        h, w = images.shape[-2:]
        for det, index, (oh, ow) in zip(dets, batch["index"], batch["orig_size"]):
            scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=det["boxes"].device)
            engine.state.predictions.append(
                {
                    "index": int(index),
                    "boxes": (det["boxes"] * scale).float().cpu().numpy(),
                    "scores": det["scores"].float().cpu().numpy(),
                    "labels": det["labels"].cpu().numpy().astype(np.int64),
                }
            )

    engine = Engine(step)

    @engine.on(Events.STARTED)
    def _reset(e: Engine) -> None:
        e.state.predictions = []

    return engine


def gather_predictions(local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All processes' predictions, ordered by store index (variable sizes: gather objects)."""
    if idist.get_world_size() > 1:
        parts: list[Any] = [None] * idist.get_world_size()
        torch.distributed.all_gather_object(parts, local)
        local = [p for part in parts for p in part]
    return sorted(local, key=lambda p: p["index"])


def score_predictions(
    reader: StoreReader, predictions: list[dict[str, Any]], with_coco: bool = True
) -> dict[str, Any]:
    """VOC07 11-point / VOC area mAP at IoU 0.5 and COCO metrics against the store's truth."""
    from dsod_core.metrics import evaluate_coco, evaluate_voc

    gts = []
    for p in predictions:
        t = reader.read_targets(p["index"])
        gts.append({"boxes": t["boxes"], "labels": t["labels"], "difficult": t["difficult"]})
    k = reader.num_classes
    voc07 = evaluate_voc(gts, predictions, k, 0.5, use_07_metric=True)
    area = evaluate_voc(gts, predictions, k, 0.5, use_07_metric=False)
    out: dict[str, Any] = {
        "map50": _num(voc07["map"]),
        "map50_area": _num(area["map"]),
        "per_class_ap50": {n: _num(a) for n, a in zip(reader.class_names, voc07["ap"])},
        "num_images": len(predictions),
    }
    if with_coco:
        coco = evaluate_coco(gts, predictions, class_names=reader.class_names)
        out.update(
            {
                "coco_ap": _num(coco["ap"]),
                "coco_ap50": _num(coco["ap50"]),
                "coco_ap75": _num(coco["ap75"]),
                "coco_ar100": _num(coco["ar100"]),
                "per_class_coco_ap": {
                    n: _num(a) for n, a in zip(reader.class_names, coco["per_class_ap"])
                },
            }
        )
    out["_voc07"] = voc07
    return out


def _num(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x
