"""The contracts between ``dsod detect``, a modality adapter and a detector, as data.

A modality never imports the model or the engines: it receives a *predictor*, any callable
that follows :class:`PredictorLike` (``dsod_core.inference.Predictor`` does, and so does a
test's stand-in), and returns :class:`DetectResult` records. ``dsod detect`` passes the
options common to every modality in :class:`DetectRun`; options that belong to one modality
are declared by its adapter (``ModalityAdapter.DetectParams``, a typed params class) and
arrive, validated, as ``DetectRun.modality``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class PredictorLike(Protocol):
    """What a modality may use of a predictor."""

    class_names: list[str]
    channel_names: list[str]
    calibration_count: int
    post: dict[str, Any]
    path: Path

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detections (``boxes`` xyxy px of each image, ``scores``, ``labels``) of un-normalised
        ``[C, H, W]`` images."""

    @property
    def needs_calibration(self) -> bool: ...

    def calibrate(self, images: Sequence[np.ndarray]) -> None: ...

    def check_channels(self, channels: int, where: Any) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class DetectRun:
    """Options of one ``dsod detect`` run common to every modality. ``modality`` holds the
    validated instance of the adapter's ``DetectParams`` (None when it declares none)."""

    out_dir: Path
    batch_size: int = 16
    labels: Path | None = None  # score the merged detections against these labels
    progress: bool = True
    modality: Any = None


@dataclass
class DetectResult:
    """What one input gave: the files written, the number of detections, the units
    (windows, slices, images) run through the network and the ones skipped (all no-data),
    and, with labels, the input-level evaluation (also written beside the outputs)."""

    input: Path
    outputs: list[Path]
    detections: int
    units: int
    skipped: int = 0
    seconds: float = 0.0
    evaluation: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` consecutive items of an iterable (the last may be shorter)."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def progress_bar(total: int | None, desc: str, unit: str, run: DetectRun):
    """The tqdm bar of a detect loop (none with ``--no-progress``, nor when stderr is not a
    terminal, so an error stays one line)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if run.progress else True)
