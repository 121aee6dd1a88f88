"""Default boxes against a prepared store: the coverage report and fitted default boxes.

The boxes are the store's training boxes (crowd regions left out) in network-input pixels
after the training resize: each stored image (a tile when the dataset is tiled at prepare
time) resized to ``input_size`` x ``input_size``, its boxes scaled the same way. The random
crops and expansions of the training augmentation are not simulated: the report is about the
boxes as the evaluation transform, and mostly the training one, show them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dsod_core.boxes.coverage import (
    IOU_THRESHOLD,
    best_prior_iou,
    coverage_report,
    coverage_warning,
    fit_prior_sizes,
)
from dsod_core.boxes.priors import PriorMap
from dsod_core.data.store import StoreReader
from dsod_core.model.config import DSODConfig
from dsod_core.model.detector import DSOD, model_prior_maps
from dsod_core.model.registry import variant_config

FIT_KEYS = ("prior_min_sizes", "prior_max_sizes", "prior_ratios")


def config_prior_maps(config: DSODConfig) -> list[PriorMap]:
    """The default boxes a detector with ``config`` has, without building its weights."""
    with torch.device("meta"):  # only the source sizes are needed
        sizes = DSOD(config).source_sizes
    return model_prior_maps(config, tuple(sizes))


def training_boxes(
    reader: StoreReader, input_size: int, split: str = "train", indices: Sequence[int] | None = None
) -> list[np.ndarray]:
    """Per image of ``split`` (or of ``indices``): its non-crowd boxes ``[N, 4]`` xyxy in
    network-input pixels (float64)."""
    out = []
    for i in reader.split_indices(split) if indices is None else indices:
        t = reader.read_targets(int(i))
        h, w = t["shape"][-2:]
        boxes = np.asarray(t["boxes"], dtype=np.float64).reshape(-1, 4)[~t["crowd"]]
        scale = np.array([input_size / w, input_size / h] * 2)
        out.append(boxes * scale)
    return out


def run_config(
    reader: StoreReader, variant: str, input_size: int, overrides: dict[str, Any] | None
) -> DSODConfig:
    """The ``DSODConfig`` a training run on ``reader``'s store builds."""
    return variant_config(
        variant,
        in_channels=reader.num_channels,
        num_classes=reader.num_classes,
        input_size=input_size,
        **dict(overrides or {}),
    )


def fitted_overrides(
    reader: StoreReader,
    config: DSODConfig,
    indices: Sequence[int] | None = None,
    split: str = "train",
) -> dict[str, list[float]]:
    """``prior_min_sizes``, ``prior_max_sizes`` and ``prior_ratios`` fitted to the training
    boxes (:func:`dsod_core.boxes.coverage.fit_prior_sizes`): model overrides, stored in
    ``model.pt`` with the others. Fitted over the layout's own boxes (earlier fitted values in
    ``config`` are ignored). The fitted boxes are kept only when they cover at least as many
    training boxes as the layout's (:func:`dsod_core.boxes.coverage.best_prior_iou`); else
    the layout's own sizes and ratios come back, so fitting never lowers the coverage."""
    base = config.replace(**dict.fromkeys(FIT_KEYS))
    size = config.input_size
    boxes = training_boxes(reader, size, split, indices)
    flat = np.concatenate(boxes) / size if boxes else np.zeros((0, 4))
    base_maps = config_prior_maps(base)
    fitted = fit_prior_sizes(flat[:, 2:] - flat[:, :2], base_maps)
    fitted_maps = config_prior_maps(base.replace(**fitted))
    if covered(flat, fitted_maps) >= covered(flat, base_maps):
        return fitted
    return fit_prior_sizes(np.zeros((0, 2)), base_maps)  # the layout's sizes, ratios 2 and 3


def covered(boxes: np.ndarray, maps: Sequence[PriorMap]) -> int:
    """How many of ``boxes`` (xyxy fractions) have a default box at IoU >= 0.5."""
    return int((best_prior_iou(boxes, maps) >= IOU_THRESHOLD).sum())


def store_coverage(
    store: str | os.PathLike,
    *,
    variant: str,
    input_size: int,
    overrides: dict[str, Any] | None = None,
    prior_fit: bool = False,
    min_coverage: float = 0.2,
    split: str = "train",
) -> dict[str, Any]:
    """The coverage report (:func:`dsod_core.boxes.coverage.coverage_report`) of the store's
    ``split`` boxes against the default boxes of the run's model (fitted first when
    ``prior_fit``), with ``warning``: one line when the coverage is below ``min_coverage``,
    else None. A store without ``split`` samples gives ``{"boxes": 0, ...}``."""
    reader = StoreReader(store)
    config = run_config(reader, variant, input_size, overrides)
    if prior_fit:
        config = config.replace(**fitted_overrides(reader, config, split=split))
    maps = config_prior_maps(config)
    report = coverage_report(training_boxes(reader, input_size, split), maps, input_size)
    report["prior_fit"] = bool(prior_fit)
    report["high_res_source"] = bool(config.high_res_source)
    report["min_coverage"] = float(min_coverage)
    report["warning"] = coverage_warning(report, min_coverage)
    return report


def attach_coverage(
    report_path: str | os.PathLike, store: str | os.PathLike, **settings: Any
) -> str | None:
    """Add :func:`store_coverage` (``settings`` are its keyword arguments) to a prepare
    report under ``default_boxes``, rewrite the report, and return its warning line (None
    when the coverage is at least ``min_coverage``)."""
    from pathlib import Path

    from dsod_core.io import write_json

    path = Path(report_path)
    report = json.loads(path.read_text())
    coverage = store_coverage(store, **settings)
    report["default_boxes"] = coverage
    write_json(path, report)
    return coverage["warning"]
