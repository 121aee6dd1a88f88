"""The contracts between ``dsod detect``, a modality adapter and a detector, as data.

A modality never imports the model or the engines: it receives a *predictor*, any callable
that follows :class:`PredictorLike` (``dsod_core.inference.Predictor`` does, and so does a
test's stand-in), and returns :class:`DetectResult` records. ``dsod detect`` passes the
options common to every modality in :class:`DetectRun`; options that belong to one modality
are declared by its adapter (``ModalityAdapter.DetectParams``, a typed params class) and
arrive, validated, as ``DetectRun.modality``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dsod_core.errors import ConfigError, DataError


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


def input_files(path: Path, suffixes: Sequence[str], modality: str, noun: str) -> list[Path]:
    """The files of one ``dsod detect`` input: ``path`` itself when its suffix is one of
    ``suffixes`` (lower case, with the dot), or those directly in the folder ``path``
    (sorted). Raises :class:`DataError` naming ``path`` for a folder holding none and for a
    file of another kind (``not a <modality> input``); ``noun`` names the files (images)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise DataError(f"no {noun} ({', '.join(suffixes)}) in this folder", path=path)
        return files
    if path.suffix.lower() in suffixes:
        return [path]
    article = "an" if modality[:1] in "aeiou" else "a"
    raise DataError(
        f"not {article} {modality} input: expected {', '.join(suffixes)} or a folder", path=path
    )


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


#: ``1``: bars even when stderr is not a terminal; ``0``: no progress output at all;
#: ``lines``: plain lines even on a terminal. Unset: bars on a terminal, lines elsewhere.
PROGRESS_ENV = "DSOD_PROGRESS"
_ENV_MODES = {"1": "bar", "0": "off", "lines": "lines"}


def progress_mode(requested: bool = True, stream: Any = None) -> str:
    """How a loop shows its progress: ``"bar"`` (a tqdm bar redrawn in place), ``"lines"``
    (:class:`ProgressLines`) or ``"off"``.

    ``requested`` False (``--no-progress``, ``train.progress: false``) is ``"off"``. Else the
    environment variable ``DSOD_PROGRESS`` decides when set (``1``, ``0``, ``lines``), and
    otherwise the stream the bar would draw on (stderr): a terminal gets a bar, anything else
    (a log file, a pipe, ``dvc repro`` captured) plain lines, since every redraw of a bar
    would be kept there as text."""
    if not requested:
        return "off"
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env:
        if env not in _ENV_MODES:
            raise ConfigError(f"{PROGRESS_ENV} must be 1, 0 or lines, got {env!r}")
        return _ENV_MODES[env]
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "lines"


class ProgressLines:
    """A progress bar's stand-in where nothing can be redrawn: a plain line on stdout
    (``desc: n/total unit (40%, 12 s)``) each time another tenth of ``total`` is done, at
    most one per ``interval`` seconds, so a loop shorter than ``interval`` prints nothing and
    a long one at most ten lines. Without a total: ``desc: n unit`` every ``interval``
    seconds. Offers what the project's loops use of a tqdm bar (``update``, ``total``,
    ``refresh``, ``close``, iteration, ``with``)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        interval: float = 10.0,
        stream: Any = None,
        clock: Any = time.monotonic,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.interval, self.stream, self.clock = interval, stream, clock
        self.n = 0
        self._started = self._last = clock()
        self._tenth = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last < self.interval:
            return
        if self.total:
            tenth = min(10, self.n * 10 // self.total)
            if tenth <= self._tenth:
                return
            self._tenth = tenth
            done = f"{self.n}/{self.total} {self.unit} ({tenth * 10}%, "
        else:
            done = f"{self.n} {self.unit} ("
        self._last = now
        line = f"{self.desc}: {done}{now - self._started:.0f} s)"
        print(line, file=self.stream or sys.stdout, flush=True)

    def refresh(self) -> None:
        """Nothing to redraw."""

    def close(self) -> None:
        """Nothing to clear (the stage prints its own summary)."""

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    iterable: Iterable[Any] | None = None,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    requested: bool = True,
) -> Any:
    """The project's one progress display of a loop (wrap ``iterable``, or call ``update``):
    a tqdm bar, :class:`ProgressLines` or a silent one, by :func:`progress_mode`."""
    mode = progress_mode(requested)
    if mode == "lines":
        return ProgressLines(iterable, total=total, desc=desc, unit=unit)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=mode == "off")


def progress_bar(total: int | None, desc: str, unit: str, run: DetectRun):
    """The progress display of a detect loop (:func:`progress`): none with ``--no-progress``,
    a bar on a terminal, plain lines on stdout elsewhere (never on stderr, so an error stays
    the only line there)."""
    return progress(total=total, desc=desc, unit=unit, requested=run.progress)


class TiledPredictor:
    """A predictor of a model trained on tiles (``datasets.<name>.tiling``, recorded in
    ``model.pt`` as ``tiling``): each image (or slice) is cut into the same tiles
    (:func:`dsod_core.tiling.tile_grid`, a part past a small image's edge padded with 0 as
    prepare pads it), the tiles go through ``inner`` in batches of ``batch_size`` and their
    detections are merged into the image's by :func:`dsod_core.tiling.merge_tiles` at the
    tiling's ``merge_iou`` (the rule of the evaluate stage). Everything else is ``inner``'s,
    so a detect module sees a :class:`PredictorLike` whose detections are in image pixels."""

    def __init__(self, inner: Any, tiling: dict[str, Any], batch_size: int = 16) -> None:
        self.inner = inner
        self.tile = int(tiling["tile_size"])
        self.overlap = int(tiling["overlap"])
        self.iou = float(tiling.get("merge_iou", 0.45))
        self.batch_size = max(1, int(batch_size))

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tiles(self, image: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
        """``((x0, y0), tile image)`` of every tile of one ``[C, H, W]`` image."""
        from dsod_core.tiling import crop_tile, tile_grid

        _, h, w = image.shape
        return [
            ((x0, y0), crop_tile(image, None, x0, y0, self.tile)[0])
            for x0, y0 in tile_grid(w, h, self.tile, self.overlap)
        ]

    def calibrate(self, images: Sequence[np.ndarray]) -> None:
        """The int8 ranges from the images' tiles (what the network is given)."""
        self.inner.calibrate([t for im in images for _, t in self.tiles(np.asarray(im))])

    def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        from dsod_core.tiling import TileDetections, merge_tiles

        jobs = [(i, off, t) for i, im in enumerate(images) for off, t in self.tiles(np.asarray(im))]
        found: list[list[TileDetections]] = [[] for _ in images]
        for batch in batched(jobs, self.batch_size):
            for (i, off, _), d in zip(batch, self.inner([t for _, _, t in batch])):
                found[i].append(TileDetections(off, d["boxes"], d["scores"], d["labels"]))
        cap = int((getattr(self.inner, "post", None) or {}).get("max_detections", 10**9))
        out = []
        for tiles in found:
            m = merge_tiles(tiles, self.tile, self.iou)
            out.append(
                {
                    "boxes": m["boxes"][:cap].astype(np.float32).reshape(-1, 4),
                    "scores": m["scores"][:cap].astype(np.float32),
                    "labels": m["labels"][:cap].astype(np.int64),
                }
            )
        return out

    def describe(self) -> dict[str, Any]:
        tiling = {"tile_size": self.tile, "overlap": self.overlap, "merge_iou": self.iou}
        return {**self.inner.describe(), "tiling": tiling}


def tiled(predictor: Any, batch_size: int = 16) -> Any:
    """``predictor`` itself, or a :class:`TiledPredictor` around it when its model was
    trained on tiles (``predictor.meta["tiling"]``, from ``model.pt``): what every 2D detect
    module calls its images through, so tiling needs nothing of the modality."""
    tiling = (getattr(predictor, "meta", None) or {}).get("tiling")
    if not tiling or isinstance(predictor, TiledPredictor):
        return predictor
    return TiledPredictor(predictor, tiling, batch_size)
