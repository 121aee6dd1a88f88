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
With a ``containment`` share (e.g. 0.7; 0 or None: off) the NMS also suppresses a box lying
that much inside a kept box of its class at least as large (intersection / area of the
smaller box >= ``containment``): the fragments of one object (a part of a ship scored
below the whole ship) that IoU alone keeps, since a small box inside a large one has a small
IoU with it.
Weighted box fusion is not used: it moves boxes of separate adjacent objects towards each
other.

The cores are computed from the tiles that are present: a tile that was never run (all
no-data, or left out of a store) leaves its neighbours' cores where they were, so the same
tiles give the same merge whether they come from ``dsod detect`` or from a prepared store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    iou: float,
    cell: float,
    containment: float | None = None,
) -> np.ndarray:
    """Class-wise greedy NMS (suppress IoU > ``iou``), exact, for many boxes none wider than
    ``cell``: boxes are hashed into ``cell``-sized grid squares and each is compared with the
    kept boxes of its 3 x 3 neighbourhood only (memory linear in the boxes, not quadratic).
    Returns the kept indices by decreasing score (ties: lower index first).

    ``containment`` (0 or None: off): a box is also suppressed when a kept box of its class
    (so one scored at least as high) is at least as large and holds ``>= containment`` of
    its area (intersection / area of this box): a fragment of an object inside the object's
    whole box. A larger box scored below a small one inside it is kept (both are)."""
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
            if containment and _contained(inter, area[i], area[near], containment):
                continue
        kept.append(int(i))
        grid.setdefault(key, []).append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _contained(inter: np.ndarray, own: float, others: np.ndarray, share: float) -> bool:
    """Whether a box of area ``own`` lies ``>= share`` inside one of ``others`` (their
    intersections with it: ``inter``) that is at least as large (a zero-area box: never)."""
    return bool(((others >= own) & (inter > 0) & (inter >= share * own)).any())


@dataclass
class TileDetections:
    """One tile's detections: ``offset`` ``(col, row)`` of the tile in the input, ``boxes``
    ``[N, 4]`` xyxy in tile pixels, ``scores`` ``[N]``, ``labels`` ``[N]`` (1..K)."""

    offset: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def merge_tiles(
    tiles: Sequence[TileDetections],
    tile: int,
    iou: float,
    tolerance: float = 1.0,
    containment: float | None = None,
) -> dict[str, np.ndarray]:
    """The detections of a whole input from its tiles' (see the module docstring): ``boxes``
    float64 ``[M, 4]`` xyxy in input pixels, ``scores`` float64 ``[M]``, ``labels`` int64
    ``[M]``, best first. ``tile``: the tiles' side in px; ``iou``: the NMS threshold;
    ``containment``: the NMS's containment rule (:func:`local_nms`; 0 or None: off).

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
    keep = local_nms(b, s, lab, iou, float(tile), containment)
    return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


# --- tiling the samples of any 2D modality (the prepare stage) and its images (dsod detect) --
#: The reserved ``/units`` key of a tiled store (docs/store.md): ``{"tile_size", "overlap",
#: "frames": {parent sample id: frame_record(...)}}``, the ground truth of the whole frames
#: that evaluation scores (never a unit id: unit ids are file paths and volume ids).
FRAMES_UNIT = "@tiling"


def crop_tile(
    image: np.ndarray, valid: np.ndarray | None, x0: int, y0: int, tile: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``tile`` x ``tile`` crop at ``(x0, y0)`` of a ``[C, H, W]`` image and of its
    valid mask. The part past the image's edge (only an image smaller than a tile along an
    axis has one) is padded with 0 and marked no-data (valid False), as a raster chip is.
    Returns ``(image [C, tile, tile], valid [tile, tile] or None)``: None when ``valid`` is
    None and nothing was padded."""
    c, h, w = image.shape
    ch, cw = min(tile, h - y0), min(tile, w - x0)
    if ch == tile and cw == tile:
        crop = np.ascontiguousarray(image[:, y0 : y0 + tile, x0 : x0 + tile])
        mask = None if valid is None else valid[y0 : y0 + tile, x0 : x0 + tile].copy()
        return crop, mask
    crop = np.zeros((c, tile, tile), dtype=image.dtype)
    crop[:, :ch, :cw] = image[:, y0 : y0 + ch, x0 : x0 + cw]
    mask = np.zeros((tile, tile), dtype=bool)
    mask[:ch, :cw] = True if valid is None else valid[y0 : y0 + ch, x0 : x0 + cw]
    return crop, mask


def clip_to_tile(
    boxes: np.ndarray, x0: int, y0: int, tile: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (input px ``[N, 4]`` xyxy) clipped to the part of the tile at ``(x0, y0)`` that
    lies on the ``size`` = ``(W, H)`` input. Returns ``(boxes in tile px [N, 4] float64,
    visible fraction [N], seen [N] bool)``: the fraction is of what one tile could show of
    the box (per axis the visible extent over ``min(extent, tile)``: 1 for a box larger than
    the tile that fills it); ``seen``: at least one pixel of the box shows in
    each direction (or the whole box, for a box under one pixel)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1 = min(x0 + tile, size[0]), min(y0 + tile, size[1])
    c = np.stack(
        [np.clip(b[:, 0], x0, x1), np.clip(b[:, 1], y0, y1), np.clip(b[:, 2], x0, x1)]
        + [np.clip(b[:, 3], y0, y1)],
        axis=1,
    )
    vw, vh = c[:, 2] - c[:, 0], c[:, 3] - c[:, 1]
    fw, fh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    # of what one tile could show of the box: an object larger than a tile filling it counts
    fraction = (np.clip(vw, 0, None) / np.maximum(np.minimum(fw, tile), 1e-12)) * (
        np.clip(vh, 0, None) / np.maximum(np.minimum(fh, tile), 1e-12)
    )
    seen = (vw >= np.minimum(fw, 1.0) - 1e-6) & (vh >= np.minimum(fh, 1.0) - 1e-6) & (vw > 0)
    seen &= vh > 0
    return c - [x0, y0, x0, y0], fraction, seen


def tile_sample(sample: Any, tile: int, overlap: int, min_visible: float = 0.5) -> list[Any]:
    """One :class:`~dsod_core.data.sample.Sample` (any 2D modality's image or slice) cut into
    the tiles of :func:`tile_grid`, row-major, each a ``tile`` x ``tile`` Sample.

    Per tile: image and valid mask cropped (:func:`crop_tile`: an input smaller than a tile
    is padded as no-data); ``affine`` composed with the tile offset (tile pixel ``(x, y)`` is
    input pixel ``(x + x0, y + y0)``), so the world positions are unchanged; ``sample_id``
    ``<id>@<x0>_<y0>``; ``meta`` the input's plus ``tile`` ``{x0, y0, width, height}``,
    ``parent`` (the input's id) and ``parent_size`` ``[W, H]``; a native (integer) image is
    cropped with it (a padded tile is stored as float32).

    Boxes (:func:`clip_to_tile`), the minimum-visible-fraction rule: a box of which at least
    ``min_visible`` of the area lies in the tile is kept, clipped to the tile, with its own
    flags (a partly cut object is still that object: the network learns to find the visible
    part, which is what the merge maps back); a box seen less than that, but by at least one
    pixel each way, is kept clipped as a *crowd* region (ignored: neither a positive nor a
    negative in training, ignored truth in a tile-level score), so a sliver of an object is
    never taught as background; a box not seen is dropped."""
    from dsod_core.data.sample import NativeImage, Sample

    _, h, w = sample.image.shape
    out = []
    for x0, y0 in tile_grid(w, h, tile, overlap):
        image, valid = crop_tile(sample.image, sample.valid, x0, y0, tile)
        boxes, fraction, seen = clip_to_tile(sample.boxes, x0, y0, tile, (w, h))
        part = fraction < min_visible - 1e-9
        native = sample.native
        if native is not None:
            data = native.data[:, y0 : y0 + tile, x0 : x0 + tile]
            native = NativeImage(data, **native.params()) if data.shape[1:] == (tile,) * 2 else None
        shift = np.eye(4)
        shift[0, 3], shift[1, 3] = x0, y0
        meta = {
            **sample.meta,
            "tile": {"x0": int(x0), "y0": int(y0), "width": int(tile), "height": int(tile)},
            "parent": sample.sample_id,
            "parent_size": [int(w), int(h)],
        }
        out.append(
            Sample(
                image=image,
                boxes=boxes[seen],
                labels=sample.labels[seen],
                difficult=sample.difficult[seen],
                crowd=(sample.crowd | part)[seen],
                sample_id=f"{sample.sample_id}@{x0}_{y0}",
                source=sample.source,
                split=sample.split,
                affine=np.asarray(sample.affine, dtype=np.float64) @ shift,
                valid=valid,
                meta=meta,
                native=native,
                group=getattr(sample, "group", None),
            )
        )
    return out


def frame_record(sample: Any) -> dict[str, Any]:
    """The whole-frame ground truth of a tiled input (JSON): ``split``, ``source``, ``unit``,
    ``size`` ``[W, H]``, ``affine``, ``meta`` and its ``boxes``, ``labels``, ``difficult``,
    ``crowd``: what the evaluate stage scores the merged detections of its tiles against."""
    _, h, w = sample.image.shape
    return {
        "split": sample.split,
        "source": sample.source,
        "unit": getattr(sample, "unit", sample.source),
        "size": [int(w), int(h)],
        "affine": np.asarray(sample.affine, dtype=np.float64).tolist(),
        "meta": sample.meta,
        "boxes": np.asarray(sample.boxes, dtype=np.float64).reshape(-1, 4).tolist(),
        "labels": np.asarray(sample.labels).astype(int).tolist(),
        "difficult": np.asarray(sample.difficult).astype(bool).tolist(),
        "crowd": np.asarray(sample.crowd).astype(bool).tolist(),
    }


def merge_frames(
    items: Sequence[Mapping[str, Any]], iou: float, containment: float | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Tile detections -> per parent frame, in frame pixels, by :func:`merge_tiles` (the
    rule every tiled input follows: raster chips, ``dsod detect`` tiles, a tiled store).
    ``items``: per tile its ``meta`` (``parent``, ``tile`` as :func:`tile_sample` writes
    it) and ``detections`` (``boxes`` in tile px, ``scores``, ``labels``)."""
    groups: dict[str, list[TileDetections]] = {}
    sides: dict[str, int] = {}
    for it in items:
        meta, det = it["meta"], it["detections"]
        t = meta["tile"]
        groups.setdefault(meta["parent"], []).append(
            TileDetections((int(t["x0"]), int(t["y0"])), det["boxes"], det["scores"], det["labels"])
        )
        sides[meta["parent"]] = int(t["width"])
    return {p: merge_tiles(g, sides[p], iou, containment=containment) for p, g in groups.items()}
