"""Cutting a raster into overlapping chips (the house's tiling, :mod:`dsod_core.tiling`) and
boxes into the chips that see them; the chips' predictions are merged back by
:func:`dsod_core.tiling.merge_tiles` (``MultispectralAdapter.merge``).

Coverage rule: along each axis chips start every ``chip_size - overlap`` pixels; the last chip
is aligned to the raster edge (its overlap with the previous chip is then >= ``overlap``), so
the chips cover the raster exactly, never reaching past it. Only a raster smaller than one
chip along an axis gives a chip that extends past that edge; the adapter pads it with
no-data (``Sample.valid`` False). All coordinates are continuous pixels (no +1).
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from dsod_core.tiling import tile_grid, tile_starts


def chip_starts(length: int, chip_size: int, overlap: int) -> list[int]:
    """Start offsets (px) of the chips along one axis of ``length`` pixels: the house's tiling
    (:func:`dsod_core.tiling.tile_starts`; see the module docstring for the coverage rule)."""
    return tile_starts(length, chip_size, overlap)


def chip_windows(width: int, height: int, chip_size: int, overlap: int) -> list[Window]:
    """All chip windows of a ``width`` x ``height`` raster, row-major, each
    ``chip_size`` x ``chip_size`` (:func:`dsod_core.tiling.tile_grid`)."""
    return [
        Window(col, row, chip_size, chip_size)
        for col, row in tile_grid(width, height, chip_size, overlap)
    ]


def boxes_in_chip(
    boxes: np.ndarray,
    labels: np.ndarray,
    window: Window,
    valid_size: tuple[int, int],
    min_visible: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (raster px ``[N, 4]`` xyxy) seen by a chip, in chip pixels.

    A box is clipped to the part of the chip that lies on the raster (``valid_size`` = raster
    ``(width, height)``) and kept when the clipped area is at least ``min_visible`` of the
    box's full area. Returns ``(boxes [M, 4] float32, labels [M] int64)``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    x0, y0 = float(window.col_off), float(window.row_off)
    x1 = min(x0 + float(window.width), float(valid_size[0]))
    y1 = min(y0 + float(window.height), float(valid_size[1]))
    cx1 = np.clip(boxes[:, 0], x0, x1)
    cy1 = np.clip(boxes[:, 1], y0, y1)
    cx2 = np.clip(boxes[:, 2], x0, x1)
    cy2 = np.clip(boxes[:, 3], y0, y1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    seen = np.clip(cx2 - cx1, 0, None) * np.clip(cy2 - cy1, 0, None)
    keep = (seen > 0) & (seen >= min_visible * area - 1e-9)
    out = np.stack([cx1 - x0, cy1 - y0, cx2 - x0, cy2 - y0], axis=1)[keep]
    return out.astype(np.float32).reshape(-1, 4), labels[keep]
