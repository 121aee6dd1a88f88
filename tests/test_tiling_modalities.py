"""Tiling for every 2D modality (``datasets.<name>.tiling``): samples cut into tiles at
prepare time, the tiles' detections merged back into whole frames by the house's one merge
(:func:`dsod_core.tiling.merge_tiles`) in evaluation and in ``dsod detect``.

The acceptance check runs a detector of known answers (for each tile, exactly the ground-truth
boxes visible in it, in tile pixels; a truncated view scored below a whole one, as a real
detector scores it) on real samples of each modality, read by its adapter from its demo data
in the native format: after tiling and the merge, the frame's detections are its ground-truth
boxes, one per object, coordinates exact.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsod_core.data.sample import Sample
from dsod_core.data.store import StoreReader
from dsod_core.detection import TiledPredictor, tiled
from dsod_core.errors import ConfigError
from dsod_core.evaluation import frame_level
from dsod_core.metrics.scoring import score_detections
from dsod_core.tiling import FRAMES_UNIT, merge_frames, tile_grid, tile_sample
from modalities import get_adapter
from pipelines.params import DatasetEntry

MODALITIES = ("rgb", "depth", "thermal", "medical")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Per modality: (demo root, adapter params, samples as its adapter reads them)."""
    out = {}
    for name in MODALITIES:
        root = tmp_path_factory.mktemp(name)
        cls = get_adapter(name)
        params = cls.write_demo(root, num_images=6 if name != "medical" else 2, image_size=96)
        adapter = cls(root, params)
        samples = [s for ref in adapter.discover() for s in adapter.read(ref)]
        out[name] = (root, params, samples)
    return out


def _grid_for(samples: list[Sample]) -> tuple[int, int]:
    """A tile and an overlap with the overlap above every object (the merge's exactness
    condition) and several tiles per 96-px frame."""
    largest = max(float((s.boxes[:, 2:] - s.boxes[:, :2]).max()) for s in samples if len(s.boxes))
    overlap = math.ceil(largest) + 2
    return overlap + 16, overlap


def _known_answers(gt: np.ndarray, labels: np.ndarray, x0: int, y0: int, tile: int, size):
    """The detector of known answers on the tile at ``(x0, y0)``: every ground-truth box with a
    visible part, clipped to the tile (tile pixels), scored 1 - 0.5 x the share cut off."""
    w, h = size
    x1, y1 = min(x0 + tile, w), min(y0 + tile, h)
    c = np.stack(
        [
            np.clip(gt[:, 0], x0, x1),
            np.clip(gt[:, 1], y0, y1),
            np.clip(gt[:, 2], x0, x1),
            np.clip(gt[:, 3], y0, y1),
        ],
        axis=1,
    ).astype(np.float64)
    area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    seen_area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    scores = 1.0 - 0.5 * (1.0 - seen_area / area) - 0.001 * np.arange(len(gt))
    return {
        "boxes": (c - [x0, y0, x0, y0])[keep],
        "scores": scores[keep],
        "labels": labels[keep].astype(np.int64),
    }


def _same_boxes(found: dict, sample: Sample) -> None:
    """``found`` holds exactly the sample's boxes and labels, once each."""
    want = np.asarray(sample.boxes, dtype=np.float64)
    got = np.asarray(found["boxes"], dtype=np.float64).reshape(-1, 4)
    assert len(got) == len(want), (got, want)
    order_w = np.lexsort(want.T[::-1])
    order_g = np.lexsort(got.T[::-1])
    np.testing.assert_allclose(got[order_g], want[order_w], atol=1e-4)
    assert list(np.asarray(found["labels"])[order_g]) == list(sample.labels[order_w])


class _FakePredictor:
    """The known-answer detector behind ``dsod detect``: it recognises each tile it is given
    by its pixels (the frame's crop at one grid offset) and answers that tile's boxes."""

    def __init__(self, sample: Sample, tile: int, overlap: int):
        self.sample, self.tile = sample, tile
        _, h, w = sample.image.shape
        self.offsets = tile_grid(w, h, tile, overlap)
        self.meta = {"tiling": {"tile_size": tile, "overlap": overlap, "merge_iou": 0.45}}
        self.post = {"max_detections": 200}
        self.calls = []

    def _where(self, crop: np.ndarray) -> tuple[int, int]:
        im, t = self.sample.image, self.tile
        hits = [
            (x0, y0)
            for x0, y0 in self.offsets
            if np.array_equal(
                crop[:, : min(t, im.shape[1] - y0), : min(t, im.shape[2] - x0)],
                im[:, y0 : y0 + t, x0 : x0 + t],
            )
        ]
        assert len(hits) == 1, hits
        return hits[0]

    def __call__(self, images):
        self.calls.append(len(images))
        _, h, w = self.sample.image.shape
        out = []
        for crop in images:
            assert crop.shape[1:] == (self.tile, self.tile)
            x0, y0 = self._where(crop)
            out.append(
                _known_answers(self.sample.boxes, self.sample.labels, x0, y0, self.tile, (w, h))
            )
        return out

    def describe(self):
        return {"model": "known answers"}


# --- acceptance: tiling + merge exact on a detector of known answers, every modality ------
@pytest.mark.parametrize("name", MODALITIES)
def test_tiling_and_merge_exact_on_known_answers(demos, name):
    _, _, samples = demos[name]
    tile, overlap = _grid_for(samples)
    with_boxes = [s for s in samples if len(s.boxes)]
    assert with_boxes
    for sample in with_boxes[:3]:
        _, h, w = sample.image.shape
        # detect: the image cut, predicted in batches, merged by merge_tiles
        fake = _FakePredictor(sample, tile, overlap)
        predictor = tiled(fake, batch_size=3)
        assert isinstance(predictor, TiledPredictor)
        (found,) = predictor([sample.image])
        assert fake.calls and max(fake.calls) <= 3 and sum(fake.calls) == len(fake.offsets) > 1
        _same_boxes(found, sample)
        assert found["boxes"].dtype == np.float32
        # prepare + evaluate: the stored tiles' predictions merged per frame
        tiles = tile_sample(sample, tile, overlap)
        items = []
        for t in tiles:
            x0, y0 = t.meta["tile"]["x0"], t.meta["tile"]["y0"]
            det = _known_answers(sample.boxes, sample.labels, x0, y0, tile, (w, h))
            items.append({"meta": t.meta, "detections": det})
        merged = merge_frames(items, 0.45)
        assert list(merged) == [sample.sample_id]
        _same_boxes(merged[sample.sample_id], sample)


def test_untiled_model_is_left_alone():
    class Plain:
        meta = {"tiling": None}

    p = Plain()
    assert tiled(p) is p


# --- tile_sample: ids, crops, affine, the box rule, padding --------------------------------
def test_tile_sample_cuts_boxes_by_the_visible_fraction_rule():
    rng = np.random.default_rng(0)
    image = rng.random((2, 70, 100)).astype(np.float32)
    boxes = np.array(
        [
            [5, 5, 15, 15],  # whole in tile (0, 0)
            [40, 10, 56, 20],  # across the first column limit
            [46, 30, 50, 40],  # tile (0, 0) sees 2 of its 4 px wide: half
        ],
        dtype=np.float32,
    )
    affine = np.diag([0.5, 0.5, 1.0, 1.0])
    affine[:2, 3] = [100.0, 200.0]
    s = Sample(image, boxes, [1, 2, 1], "im7", "im7.png", "train", affine=affine, meta={"k": 1})
    tiles = tile_sample(s, 48, 16, min_visible=0.6)
    assert [t.sample_id for t in tiles] == [
        "im7@0_0", "im7@32_0", "im7@52_0", "im7@0_22", "im7@32_22", "im7@52_22"
    ]  # fmt: skip
    first = tiles[0]
    assert first.meta == {
        "k": 1,
        "tile": {"x0": 0, "y0": 0, "width": 48, "height": 48},
        "parent": "im7",
        "parent_size": [100, 70],
    }
    np.testing.assert_array_equal(first.image, image[:, :48, :48])
    assert first.valid is None
    # box 1 whole; box 2 8 of 16 px shown (< 0.6: a crowd region); box 3 2 of 4 px (crowd)
    np.testing.assert_allclose(first.boxes, [[5, 5, 15, 15], [40, 10, 48, 20], [46, 30, 48, 40]])
    assert list(first.crowd) == [False, True, True]
    second = tiles[1]  # x0 = 32: boxes 2 and 3 whole, shifted
    np.testing.assert_allclose(second.boxes, [[8, 10, 24, 20], [14, 30, 18, 40]])
    assert list(second.labels) == [2, 1] and not second.crowd.any()
    # tile pixel (0, 0) of tile (32, 22) is frame pixel (32, 22): the same world point
    world = tiles[4].affine @ [0, 0, 0, 1]
    np.testing.assert_allclose(world[:2], [100 + 0.5 * 32, 200 + 0.5 * 22])
    for t in tiles:
        t.validate(num_channels=2, num_classes=2)


def test_tile_sample_pads_an_input_smaller_than_a_tile():
    image = np.ones((1, 20, 30), dtype=np.float32)
    s = Sample(image, [[2, 2, 10, 8]], [1], "small", "small.png", "val")
    (t,) = tile_sample(s, 32, 8)
    assert t.image.shape == (1, 32, 32) and t.sample_id == "small@0_0"
    assert t.valid.sum() == 20 * 30 and not t.valid[20:].any() and not t.valid[:, 30:].any()
    assert float(t.image[0, 25, 5]) == 0.0
    np.testing.assert_allclose(t.boxes, [[2, 2, 10, 8]])


# --- params ------------------------------------------------------------------------------
def test_tiling_param_is_typed_and_refused_for_multispectral():
    entry = {"modality": "thermal", "root": "r", "code": "c", "adapter": {}}
    parsed = DatasetEntry.parse({**entry, "tiling": {"tile_size": 64, "overlap": 16}})
    assert (parsed.tiling.tile_size, parsed.tiling.keep_empty) == (64, 0.25)
    assert DatasetEntry.parse(entry).tiling is None
    with pytest.raises(ConfigError, match="overlap: must be < tile_size"):
        DatasetEntry.parse({**entry, "tiling": {"tile_size": 64, "overlap": 64}})
    with pytest.raises(ConfigError, match="tiling: multispectral rasters are cut by"):
        DatasetEntry.parse(
            {**entry, "modality": "multispectral", "tiling": {"tile_size": 64, "overlap": 8}}
        )


# --- prepare a tiled dataset, then score it by frames ----------------------------------------
@pytest.fixture(scope="module")
def tiled_store(demos, tmp_path_factory):
    from modalities.registry import adapter_code
    from pipelines.prepare import prepare

    root, _, samples = demos["thermal"]
    out = tmp_path_factory.mktemp("prepared")
    tile, overlap = _grid_for(samples)  # the overlap above every object: an exact merge
    tiling = {"tile_size": tile, "overlap": overlap, "keep_empty": 0.5}
    entry = {
        "modality": "thermal",
        "root": str(root),
        "code": str(adapter_code("thermal")),
        "adapter": {},
        "tiling": tiling,
    }
    report = prepare("th", entry, out / "th.h5", out / "th.report.json")
    return StoreReader(out / "th.h5"), report, samples


def test_prepare_writes_tiles_and_frame_records(tiled_store):
    reader, report, samples = tiled_store
    tile, overlap = reader.params["tiling"]["tile_size"], reader.params["tiling"]["overlap"]
    per_frame = len(tile_grid(96, 96, tile, overlap))
    assert per_frame > 4
    counts = report["counts"]
    assert counts["tiles"] == per_frame * len(samples)
    assert counts["tiles"] == len(reader) + counts["empty tiles dropped (train)"]
    assert counts["empty tiles dropped (train)"] > 0  # keep_empty 0.5 on the train split
    assert report["tiling"]["min_visible"] == 0.5  # the defaults filled, recorded
    frames = reader.units[FRAMES_UNIT]["frames"]
    assert sorted(frames) == sorted(s.sample_id for s in samples)
    assert reader.units[FRAMES_UNIT]["tile_size"] == tile
    by_id = {s.sample_id: s for s in samples}
    for parent, rec in frames.items():
        got = np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4)
        np.testing.assert_allclose(got, by_id[parent].boxes, atol=1e-5)
        assert rec["size"] == [96, 96]
    for i in range(len(reader)):
        t = reader.read_targets(i)
        parent = t["meta"]["parent"]
        assert t["sample_id"].startswith(f"{parent}@") and t["split"] == frames[parent]["split"]
    for split in ("val", "test"):  # every tile kept where scores are taken
        n = sum(r["split"] == split for r in frames.values())
        assert len(reader.split_indices(split)) == n * per_frame
    json.dumps(reader.units)  # JSON all the way


def test_evaluate_scores_a_tiled_store_by_whole_frames(tiled_store):
    reader, _, samples = tiled_store
    split = "train"  # the demo's six frames are mostly train; frames of dropped tiles too
    tile = reader.params["tiling"]["tile_size"]
    predictions, targets = [], []
    for i in reader.split_indices(split):
        t = reader.read_targets(int(i))
        x0, y0 = t["meta"]["tile"]["x0"], t["meta"]["tile"]["y0"]
        parent = next(s for s in samples if s.sample_id == t["meta"]["parent"])
        det = _known_answers(parent.boxes, parent.labels, x0, y0, tile, (96, 96))
        predictions.append({"index": int(i), **det})
        targets.append(t)
    frames, truth = frame_level(predictions, targets, reader, split)
    records = reader.units[FRAMES_UNIT]["frames"]
    assert [t["sample_id"] for t in truth] == [p for p, r in records.items() if r["split"] == split]
    assert len(truth) < len(predictions)  # frames, not tiles
    summary, _ = score_detections(truth, frames, reader.class_names)
    assert summary["num_images"] == len(truth)
    assert summary["map50"] == pytest.approx(1.0) and summary["coco_ap"] == pytest.approx(1.0)
    # an object is seen by several tiles; the frame keeps one box per object
    assert sum(len(p["boxes"]) for p in predictions) > sum(len(t["boxes"]) for t in truth)
    assert sum(len(f["boxes"]) for f in frames) == sum(len(t["boxes"]) for t in truth) > 0


def test_frame_level_is_none_for_a_store_of_whole_images(tiled_store):
    reader, _, _ = tiled_store

    class Whole:
        params = {"dataset": "x"}

    assert frame_level([], [], Whole(), "test") is None
    assert reader.params.get("tiling") is not None
