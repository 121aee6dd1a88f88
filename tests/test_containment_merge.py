"""The containment rule of the whole-scene merge (``dsod_core.tiling.local_nms`` /
``merge_tiles``, ``merge_containment`` of the multispectral adapter and ``dsod detect``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dsod_core.boxes import batched_nms
from dsod_core.errors import ConfigError
from dsod_core.tiling import TileDetections, local_nms, merge_tiles
from modalities.multispectral.detect import merge_containment
from modalities.multispectral.params import MultispectralDetectParams, MultispectralParams
from modalities.multispectral.scene import merge_chips


def reference(boxes, scores, labels, iou, containment):
    """Quadratic greedy NMS with the containment rule, written from its definition."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in order:
        drop = False
        for j in kept:
            if labels[i] != labels[j]:
                continue
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(w, 0) * max(h, 0)
            if inter / (area[i] + area[j] - inter) > iou:
                drop = True
            elif containment and area[j] >= area[i] and 0 < inter >= containment * area[i]:
                drop = True
        if not drop:
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


# A 20 x 20 object (0), its fragments and neighbours; columns: x0, y0, x1, y1, score, label.
HAND = np.array(
    [
        [0, 0, 20, 20, 0.9, 1],  # 0 the object
        [2, 2, 10, 10, 0.6, 1],  # 1 fragment wholly inside 0 (IoU 0.16): dropped
        [10, 5, 22, 15, 0.5, 1],  # 2 fragment 100/120 = 0.83 inside 0: dropped
        [14, 0, 24, 10, 0.55, 1],  # 3 60/100 = 0.6 inside 0: below 0.7, kept
        [4, 4, 12, 12, 0.7, 2],  # 4 inside 0 but another class: kept
        [30, 30, 38, 38, 0.95, 1],  # 5 small box scored above the larger 6 around it
        [28, 28, 42, 42, 0.8, 1],  # 6 larger, lower-scored, holds 5: both kept
        [3, 3, 7, 7, 0.58, 1],  # 7 inside fragment 1 (dropped itself) and inside 0: dropped
    ]
)


def hand(containment):
    b, s, lab = HAND[:, :4], HAND[:, 4], HAND[:, 5].astype(np.int64)
    return local_nms(b, s, lab, 0.5, 64.0, containment).tolist()


def test_exact_survivors_on_hand_made_boxes():
    assert hand(0.7) == [5, 0, 6, 4, 3]
    # 0.5: the 60 % overlap (3) is now a fragment too
    assert hand(0.5) == [5, 0, 6, 4]
    # off (None or 0): IoU alone, every box here is kept (no pair has IoU > 0.5)
    assert hand(None) == hand(0.0) == [5, 0, 6, 4, 1, 7, 3, 2]


def test_containment_off_is_the_iou_only_merge():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 300, (500, 2))
    wh = rng.uniform(3, 30, (500, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores, labels = rng.uniform(0, 1, 500), rng.integers(1, 3, 500)
    ref = batched_nms(
        torch.as_tensor(boxes), torch.as_tensor(scores), torch.as_tensor(labels), 0.5
    ).numpy()
    for off in (None, 0, 0.0):
        np.testing.assert_array_equal(local_nms(boxes, scores, labels, 0.5, 32.0, off), ref)
    on = local_nms(boxes, scores, labels, 0.5, 32.0, 0.7)
    assert set(on) < set(ref)  # the rule only removes boxes, and here it removes some


@pytest.mark.parametrize("share", [0.5, 0.7, 0.9, 1.0])
def test_grid_hashed_rule_matches_the_quadratic_reference(share):
    rng = np.random.default_rng(int(share * 10))
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(2, 30, (300, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    scores, labels = rng.uniform(0, 1, 300), rng.integers(1, 3, 300)
    got = local_nms(boxes, scores, labels, 0.5, 32.0, share)
    np.testing.assert_array_equal(got, reference(boxes, scores, labels, 0.5, share))


def tiles_of(boxes, scores, offsets):
    """Every tile reports every box (scene pixels) that lies whole in it."""
    out = []
    for col, row in offsets:
        inside = (boxes[:, 0] >= col) & (boxes[:, 1] >= row)
        inside &= (boxes[:, 2] <= col + 64) & (boxes[:, 3] <= row + 64)
        b = boxes[inside] - [col, row, col, row]
        out.append(TileDetections((col, row), b, scores[inside], np.ones(inside.sum(), int)))
    return out


def test_fragments_of_one_object_seen_by_four_tiles_merge_to_one():
    ship = [40.0, 40.0, 54.0, 52.0]  # 14 x 12 px, in the overlap of 4 tiles
    frags = [[40, 40, 47, 52], [47, 40, 54, 52], [42, 43, 52, 50], [40, 46, 54, 52]]
    boxes = np.array([ship, *frags], dtype=float)
    scores = np.array([0.8, 0.5, 0.45, 0.6, 0.3])
    tiles = tiles_of(boxes, scores, [(0, 0), (32, 0), (0, 32), (32, 32)])
    on = merge_tiles(tiles, 64, 0.5, containment=0.7)
    np.testing.assert_array_equal(on["boxes"], [ship])
    off = merge_tiles(tiles, 64, 0.5)
    assert len(off["boxes"]) == 5  # today: the ship and its 4 fragments
    assert np.array_equal(merge_tiles(tiles, 64, 0.5, containment=0)["boxes"], off["boxes"])


def test_two_adjacent_ships_are_both_kept():
    # Side by side, touching, and overlapping by 3 px: neither lies 70 % inside the other.
    boxes = np.array(
        [[10, 10, 26, 20], [23, 10, 39, 20], [39, 10, 51, 20], [10, 20, 26, 30]], dtype=float
    )
    scores = np.array([0.9, 0.6, 0.7, 0.5])
    tiles = tiles_of(boxes, scores, [(0, 0)])
    got = merge_tiles(tiles, 64, 0.5, containment=0.7)
    assert len(got["boxes"]) == 4


def chip_item(window, boxes, scores):
    meta = {
        "raster": "a.tif",
        "window": [*window, 64, 64],
        "crs": None,
        "raster_transform": [1, 0, 0, 0, 1, 0],
        "raster_size": [128, 64],
    }
    det = {
        "boxes": np.asarray(boxes, float),
        "scores": np.asarray(scores, float),
        "labels": np.ones(len(scores), dtype=np.int64),
    }
    return {"source": "a.tif", "meta": meta, "detections": det}


def test_scene_merge_takes_the_share_and_detect_can_override_it():
    items = [
        chip_item((0, 0), [[10, 10, 24, 22], [11, 11, 18, 20]], [0.9, 0.4]),
        chip_item((64, 0), [[5, 5, 17, 17]], [0.8]),
    ]
    (on,) = merge_chips(items, 0.5, 0.7)
    (off,) = merge_chips(items, 0.5)
    assert len(on["detections"]["scores"]) == 2 and len(off["detections"]["scores"]) == 3
    adapter = SimpleNamespace(params=MultispectralParams())
    assert adapter.params.merge_containment == 0.7  # on by default
    assert merge_containment(adapter, MultispectralDetectParams()) == 0.7
    given = MultispectralDetectParams.parse({"merge_containment": "0"})
    assert merge_containment(adapter, given) == 0.0
    assert MultispectralParams.parse({"merge_containment": None}).merge_containment is None
    with pytest.raises(ConfigError, match="merge_containment"):
        MultispectralParams.parse({"merge_containment": 1.5})
