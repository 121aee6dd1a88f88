"""Tiling of large 2D inputs and the merge of tile detections: one implementation for every
modality (pure array/box functions; no file format, no model).

Coverage rule: along each axis tiles start every ``tile - overlap`` pixels; the last tile is
aligned to the input's edge (its overlap with the previous tile is then >= ``overlap``), so
the tiles cover the input exactly, never reaching past it. Only an input smaller than one
tile along an axis gives a tile that extends past that edge (the reader pads it). All
coordinates are continuous pixels (no +1).

Merge rule (:func:`merge_tiles`): a tile keeps only the detections whose box centre lies in
its *core*, the part of the tile nearer to its centre than to any neighbour's (the cores of
the tiles tile the input exactly; an input edge belongs to the tile at it). An object no
larger than the overlap lies whole in the tile whose core holds its centre, and the truncated
copies that neighbouring tiles see have their centres outside their own cores, so each object
is reported once, from a tile that saw it whole, wherever the grid falls (each core is widened
by a 1-px tolerance, so that an object centred on a core limit is not lost between two
slightly different estimates of its centre). Then class-wise
greedy NMS over the input (:func:`local_nms`, box-local: only boxes within one tile side of
each other are compared) removes what is left: duplicates of objects larger than the overlap.
Weighted box fusion is not used: it moves boxes of separate adjacent objects towards each
other.

The cores are computed from the tiles that are present: a tile that was never run (all
no-data, or left out of a store) leaves its neighbours' cores where they were, so the same
tiles give the same merge whether they come from ``dsod detect`` or from a prepared store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets (px) of the tiles along one axis of ``length`` pixels.

    Consecutive tiles overlap by exactly ``overlap`` px, except the last one, which is moved
    back to end at the edge (overlap >= ``overlap``). ``length <= tile`` -> ``[0]``.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got {tile}, {overlap}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(col, row)`` offsets of every tile of a ``width`` x ``height`` input, row-major."""
    return [
        (col, row)
        for row in tile_starts(height, tile, overlap)
        for col in tile_starts(width, tile, overlap)
    ]


def core_limits(starts: Sequence[int], tile: int) -> np.ndarray:
    """Core limits ``[n + 1]`` of tiles starting at ``starts`` (sorted, distinct) along one
    axis: tile ``i`` owns ``[limits[i], limits[i + 1])``, the midpoints of the overlaps with
    its neighbours; the first and last limits are -inf and +inf."""
    s = list(starts)
    mids = [(s[i + 1] + s[i] + tile) / 2.0 for i in range(len(s) - 1)]
    return np.array([-np.inf, *mids, np.inf])


def local_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float, cell: float
) -> np.ndarray:
    """Class-wise greedy NMS (suppress IoU > ``iou``), exact, for many boxes none wider than
    ``cell``: boxes are hashed into ``cell``-sized grid squares and each is compared with the
    kept boxes of its 3 x 3 neighbourhood only (memory linear in the boxes, not quadratic).
    Returns the kept indices by decreasing score (ties: lower index first)."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -scores))
    cx = np.floor((boxes[:, 0] + boxes[:, 2]) / 2.0 / cell).astype(np.int64)
    cy = np.floor((boxes[:, 1] + boxes[:, 3]) / 2.0 / cell).astype(np.int64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    grid: dict[tuple[int, int, int], list[int]] = {}
    kept = []
    for i in order:
        key = (int(labels[i]), cx[i], cy[i])
        near = [
            j
            for dx in (-1, 0, 1)
            for dy in (-1, 0, 1)
            for j in grid.get((key[0], key[1] + dx, key[2] + dy), ())
        ]
        if near:
            o = boxes[near]
            w = np.minimum(boxes[i, 2], o[:, 2]) - np.maximum(boxes[i, 0], o[:, 0])
            h = np.minimum(boxes[i, 3], o[:, 3]) - np.maximum(boxes[i, 1], o[:, 1])
            inter = np.clip(w, 0, None) * np.clip(h, 0, None)
            if (inter / (area[i] + area[near] - inter) > iou).any():
                continue
        kept.append(int(i))
        grid.setdefault(key, []).append(int(i))
    return np.asarray(kept, dtype=np.int64)


@dataclass
class TileDetections:
    """One tile's detections: ``offset`` ``(col, row)`` of the tile in the input, ``boxes``
    ``[N, 4]`` xyxy in tile pixels, ``scores`` ``[N]``, ``labels`` ``[N]`` (1..K)."""

    offset: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def merge_tiles(
    tiles: Sequence[TileDetections], tile: int, iou: float, tolerance: float = 1.0
) -> dict[str, np.ndarray]:
    """The detections of a whole input from its tiles' (see the module docstring): ``boxes``
    float64 ``[M, 4]`` xyxy in input pixels, ``scores`` float64 ``[M]``, ``labels`` int64
    ``[M]``, best first. ``tile``: the tiles' side in px; ``iou``: the NMS threshold.

    ``tolerance`` (px) widens every core on each side: an object centred on a core limit is
    seen whole by both tiles, and two slightly different estimates of its centre could
    otherwise fall each into the other tile's core and both be dropped; the copies kept
    twice are near-identical and the NMS removes one. A truncated copy is kept only when the
    object starts within ``2 * tolerance`` px of the overlap, so it is nearly whole too."""
    cols = sorted({int(t.offset[0]) for t in tiles})
    rows = sorted({int(t.offset[1]) for t in tiles})
    col_core, row_core = core_limits(cols, tile), core_limits(rows, tile)
    boxes, scores, labels = [], [], []
    for t in tiles:
        col, row = int(t.offset[0]), int(t.offset[1])
        b = np.asarray(t.boxes, dtype=np.float64).reshape(-1, 4) + [col, row, col, row]
        ci, ri = cols.index(col), rows.index(row)
        cx, cy = (b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0
        core = (
            (cx >= col_core[ci] - tolerance)
            & (cx < col_core[ci + 1] + tolerance)
            & (cy >= row_core[ri] - tolerance)
            & (cy < row_core[ri + 1] + tolerance)
        )
        boxes.append(b[core])
        scores.append(np.asarray(t.scores, dtype=np.float64).reshape(-1)[core])
        labels.append(np.asarray(t.labels, dtype=np.int64).reshape(-1)[core])
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    s = np.concatenate(scores) if scores else np.zeros(0)
    lab = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    keep = local_nms(b, s, lab, iou, float(tile))
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
