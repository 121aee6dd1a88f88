"""The canonical sample: what every modality adapter produces and the store holds.

Coordinates
-----------
Pixel coordinates are continuous: pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``, so
its centre is ``(c + 0.5, r + 0.5)``. Boxes are ``x1, y1, x2, y2`` in those coordinates (no +1).

``affine`` is a float64 ``[4, 4]`` matrix mapping homogeneous pixel coordinates
``(x, y, 0, 1)`` of the *stored* image to world coordinates ``(X, Y, Z, 1)``: millimetres in
patient RAS space for medical slices, map units of the raster CRS for multispectral chips
(Z = 0), and original-image pixels for modalities without a world frame. It must be
invertible; adapters build a full-rank 4x4 (the third column carries the slice direction or
a unit Z axis).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsod_core.errors import DataError

SPLITS = ("train", "val", "test")

@dataclass
class Sample:
    """One detection sample in canonical form.

    Attributes:
        image: float32 ``[C, H, W]``, finite, in the adapter's intensity scale (not yet
            normalised by dataset statistics).
        boxes: float32 ``[N, 4]`` xyxy pixels of ``image``; N may be 0.
        labels: int64 ``[N]`` in ``1..num_classes`` (0 is background, never stored).
        sample_id: unique id within the dataset.
        source: path of the file the pixels came from.
        split: one of ``train``, ``val``, ``test``.
        difficult: bool ``[N]`` (VOC "difficult"), all False when unknown.
        affine: float64 ``[4, 4]`` pixel -> world (see module docstring).
        valid: optional bool ``[H, W]``; False marks no-data pixels, kept out of statistics.
        meta: JSON-serialisable modality metadata (units, CRS, slice index, chip window, ...).
        crowd: bool ``[N]`` (COCO ``iscrowd``: a region of many objects), all False when
            unknown. Crowd boxes are neither positives nor negatives in training (the loss
            ignores the default boxes covering them) and ignored ground truth in evaluation.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    sample_id: str
    source: str
    split: str
    difficult: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    valid: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    crowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if self.crowd is None:
            self.crowd = np.zeros(len(self.labels), dtype=bool)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.valid is not None:
            self.valid = np.asarray(self.valid, dtype=bool)

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def validate(self, num_channels: int | None = None, num_classes: int | None = None) -> None:
        """Check the contract; raise :class:`DataError` naming the source on any breach."""

        def fail(reason: str) -> None:
            raise DataError(reason, path=self.source, sample=self.sample_id)

        if self.image.ndim != 3 or min(self.image.shape) < 1:
            fail(f"image must be [C,H,W], got shape {tuple(self.image.shape)}")
        if num_channels is not None and self.image.shape[0] != num_channels:
            fail(f"expected {num_channels} channels, got {self.image.shape[0]}")
        if not np.isfinite(self.image).all():
            fail("image holds NaN or infinite values")
        _, h, w = self.image.shape
        n = len(self.boxes)
        if len(self.labels) != n or len(self.difficult) != n or len(self.crowd) != n:
            fail(
                f"{n} boxes but {len(self.labels)} labels / {len(self.difficult)} difficult / "
                f"{len(self.crowd)} crowd flags"
            )
        if n:
            b = self.boxes
            if not np.isfinite(b).all():
                fail("boxes hold NaN or infinite values")
            if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
                fail("a box has zero or negative width/height (inverted or degenerate)")
            if (
                (b[:, 0] < 0).any()
                or (b[:, 1] < 0).any()
                or (b[:, 2] > w).any()
                or (b[:, 3] > h).any()
            ):
                fail(f"a box lies outside the {w}x{h} image")
            if (self.labels < 1).any():
                fail("labels must be >= 1 (0 is background)")
            if num_classes is not None and (self.labels > num_classes).any():
                fail(f"a label exceeds the {num_classes} classes")
        if self.split not in SPLITS:
            fail(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.affine.shape != (4, 4) or not np.isfinite(self.affine).all():
            fail("affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(self.affine)) < 1e-12:
            fail("affine is singular (pixel->world must be invertible)")
        if self.valid is not None and self.valid.shape != (h, w):
            fail(f"valid mask shape {self.valid.shape} != image {(h, w)}")
        try:
            json.dumps(self.meta)
        except TypeError as exc:
            fail(f"meta is not JSON-serialisable: {exc}")


def pixel_to_world(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map pixel points ``[N, 2]`` (x, y) through a ``[4, 4]`` affine to world ``[N, 3]``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    homo = np.concatenate([xy, np.zeros((len(xy), 1)), np.ones((len(xy), 1))], axis=1)
    return (homo @ np.asarray(affine, dtype=np.float64).T)[:, :3]


def world_to_pixel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixel_to_world`: world ``[N, 3]`` to pixel ``[N, 3]`` (x, y, z≈0)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    homo = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)
    return (homo @ np.linalg.inv(np.asarray(affine, dtype=np.float64)).T)[:, :3]
