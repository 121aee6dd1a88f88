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
from dsod_core.errors import ConfigError


def select_device(name: str, key: str = "device") -> torch.device:
    """``auto`` (the GPU when there is one), ``cpu`` or ``cuda``; in a distributed run the
    process's own GPU. ``key`` names the param in the error (``train.device``, ...)."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} is 'cuda' but no GPU is available")
        return idist.device() if idist.get_world_size() > 1 else torch.device("cuda")
    return torch.device("cpu")


def eval_loader(
    reader: StoreReader,
    split: str,
    input_size: int,
    batch_size: int,
    num_workers: int = 0,
    normalisation: tuple[Any, Any] | None = None,
) -> DataLoader:
    """A loader over ``split`` (resize only), sharded across processes by sample position.
    ``normalisation``: ``(mean, std)`` per channel, the model's own (default: the store's).

    Its batch targets keep the stored labels (crowd boxes are not relabelled -1): scoring reads
    the truth from the store instead (:func:`score_predictions`)."""
    ds = DetectionDataset(
        reader,
        split,
        build_eval_transform(input_size),
        crowd_label=None,
        normalisation=normalisation,
    )
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
    """:func:`dsod_core.metrics.score_detections` against the store's truth (read once per
    image: real labels 1..K with the ``difficult`` and ``crowd`` flags, both ignored ground
    truth); the full VOC07 result is under ``"_voc07"``."""
    from dsod_core.metrics.scoring import score_detections

    targets = [reader.read_targets(p["index"]) for p in predictions]
    summary, voc07 = score_detections(targets, predictions, reader.class_names, with_coco)
    return {**summary, "_voc07": voc07}
