"""Box-aware augmentation and collate, for 1, 3, 4 and 13 channels."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dsod_core.data.collate import detection_collate
from dsod_core.data.transforms import (
    TRAIN_CFG_DEFAULTS,
    Compose,
    GaussianNoise,
    HorizontalFlip,
    MinIoURandomCrop,
    PhotometricDistort,
    RandomIntensityScale,
    Resize,
    ZoomOut,
    build_eval_transform,
    build_train_transform,
)
from dsod_core.errors import ConfigError, DataError

CHANNELS = (1, 3, 4, 13)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def make_item(c: int, h: int, w: int, n: int, rng: np.random.Generator, integer: bool = False):
    """Random item whose label ``i+1`` identifies box ``i``; difficult = label is even."""
    image = rng.standard_normal((c, h, w)).astype(np.float32)
    boxes = np.zeros((n, 4), dtype=np.float32)
    for i in range(n):
        bw = rng.uniform(2, w * 0.8)
        bh = rng.uniform(2, h * 0.8)
        x1 = rng.uniform(0, w - bw)
        y1 = rng.uniform(0, h - bh)
        boxes[i] = (x1, y1, x1 + bw, y1 + bh)
    if integer:
        boxes = np.floor(boxes)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = np.arange(1, n + 1, dtype=np.int64)
    return {
        "image": image,
        "boxes": boxes,
        "labels": labels,
        "difficult": labels % 2 == 0,
        "index": 7,
    }


def coord_image(c: int, h: int, w: int) -> np.ndarray:
    """Channel 0 = column + 1, channel 1 = row + 1 (never 0, the fill), the rest random."""
    assert c >= 2
    img = np.random.default_rng(0).standard_normal((c, h, w)).astype(np.float32)
    img[0] = np.arange(w, dtype=np.float32)[None, :] + 1
    img[1] = np.arange(h, dtype=np.float32)[:, None] + 1
    return img


def assert_contract(item: dict, c: int) -> None:
    image, boxes, labels, difficult = (
        item["image"],
        item["boxes"],
        item["labels"],
        item["difficult"],
    )
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[0] == c
    assert np.isfinite(image).all()
    _, h, w = image.shape
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert labels.dtype == np.int64 and difficult.dtype == bool
    assert len(boxes) == len(labels) == len(difficult)
    assert np.isfinite(boxes).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    # labels and difficult travelled together: difficult was defined as "label is even"
    np.testing.assert_array_equal(difficult, labels % 2 == 0)
    assert len(np.unique(labels)) == len(labels)
    assert item["index"] == 7


def iou_ref(box: np.ndarray, crop: np.ndarray) -> float:
    ix = max(0.0, min(box[2], crop[2]) - max(box[0], crop[0]))
    iy = max(0.0, min(box[3], crop[3]) - max(box[1], crop[1]))
    inter = ix * iy
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (crop[2] - crop[0]) * (crop[3] - crop[1])
    return float(inter / (a + b - inter))


def all_transforms(size: int = 24) -> list:
    return [
        ZoomOut(max_scale=4.0, p=1.0),
        MinIoURandomCrop(),
        MinIoURandomCrop(min_ious=(0.7,)),
        MinIoURandomCrop(min_ious=("any",)),
        HorizontalFlip(p=1.0),
        Resize(size),
        Resize((size, size + 7)),
        RandomIntensityScale((0.5, 1.5), (-1, 1), per_channel=True, p=1.0),
        GaussianNoise(0.1, p=1.0),
        build_train_transform(size),
        build_train_transform(
            size, {"intensity_scale": [0.8, 1.2], "intensity_shift": [-0.2, 0.2], "noise_std": 0.1}
        ),
        build_eval_transform(size),
    ]


# ---------------------------------------------------------------------------------------------
# contract for every transform and channel count
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_every_transform_keeps_the_contract(c: int) -> None:
    rng = np.random.default_rng(c)
    for t in all_transforms():
        for seed in range(12):
            item = make_item(c, 20 + seed % 3, 30 - seed % 4, n=seed % 5, rng=rng)
            before = {k: np.copy(v) for k, v in item.items() if isinstance(v, np.ndarray)}
            out = t(item, np.random.default_rng(seed))
            assert_contract(out, c)
            # inputs are never modified in place
            for k, v in before.items():
                np.testing.assert_array_equal(item[k], v)


@pytest.mark.parametrize("c", CHANNELS)
def test_empty_box_images(c: int) -> None:
    for t in all_transforms():
        for seed in range(6):
            item = make_item(c, 18, 22, n=0, rng=np.random.default_rng(seed))
            out = t(item, np.random.default_rng(seed))
            assert_contract(out, c)
            assert out["boxes"].shape == (0, 4) and out["labels"].shape == (0,)
    # a min-IoU sampler cannot be met without boxes: the image comes back whole (Caffe SSD)
    item = make_item(c, 18, 22, n=0, rng=np.random.default_rng(0))
    out = MinIoURandomCrop(min_ious=(0.5,))(item, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], item["image"])
    # so is the unconstrained one (SSD's max_jaccard_overlap 1 needs an object to compare)
    for s in range(10):
        out = MinIoURandomCrop(min_ious=("any",))(item, np.random.default_rng(s))
        np.testing.assert_array_equal(out["image"], item["image"])


# ---------------------------------------------------------------------------------------------
# flip
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_flip_matches_reference_and_twice_is_identity(c: int) -> None:
    rng = np.random.default_rng(1)
    item = make_item(c, 16, 21, n=4, rng=rng, integer=True)
    flip = HorizontalFlip(p=1.0)
    once = flip(item, rng)
    h, w = 16, 21
    for y in range(h):
        for x in range(w):
            np.testing.assert_array_equal(once["image"][:, y, x], item["image"][:, y, w - 1 - x])
    # an integer box covers columns x1..x2-1; mirrored, columns w-x2..w-x1-1
    for b, nb in zip(item["boxes"], once["boxes"]):
        mask = np.zeros((h, w), bool)
        mask[int(b[1]) : int(b[3]), int(b[0]) : int(b[2])] = True
        cols = np.nonzero(mask[:, ::-1].any(axis=0))[0]
        np.testing.assert_array_equal(nb[[0, 2]], [cols.min(), cols.max() + 1])
        np.testing.assert_array_equal(nb[[1, 3]], b[[1, 3]])
    twice = flip(once, rng)
    np.testing.assert_array_equal(twice["image"], item["image"])
    np.testing.assert_array_equal(twice["boxes"], item["boxes"])
    np.testing.assert_array_equal(twice["labels"], item["labels"])
    # p=0 never flips
    same = HorizontalFlip(p=0.0)(item, rng)
    np.testing.assert_array_equal(same["image"], item["image"])


# ---------------------------------------------------------------------------------------------
# resize
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_resize_scales_boxes_exactly_and_channels_independently(c: int) -> None:
    rng = np.random.default_rng(2)
    item = make_item(c, 17, 26, n=5, rng=rng)
    out = Resize((40, 13))(item, rng)
    assert out["image"].shape == (c, 40, 13)
    expected = item["boxes"].astype(np.float64) * np.array([13 / 26, 40 / 17, 13 / 26, 40 / 17])
    np.testing.assert_allclose(out["boxes"], expected, rtol=1e-6, atol=1e-5)
    # each channel resized on its own gives the same result: channels never mix
    for k in range(c):
        ref = F.interpolate(
            torch.from_numpy(item["image"][k])[None, None],
            size=(40, 13),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
        np.testing.assert_allclose(out["image"][k], ref, rtol=1e-6, atol=1e-6)
    # a constant box region stays constant inside the scaled box (away from its border)
    img = np.zeros((c, 20, 20), np.float32)
    img[:, 4:16, 6:14] = 3.0
    item2 = {
        "image": img,
        "boxes": np.array([[6, 4, 14, 16]], np.float32),
        "labels": np.array([1]),
        "difficult": np.array([False]),
    }
    out2 = Resize(40)(item2, rng)
    np.testing.assert_array_equal(out2["boxes"], [[12, 8, 28, 32]])
    np.testing.assert_allclose(out2["image"][:, 9:31, 13:27], 3.0)
    np.testing.assert_allclose(out2["image"][:, :7, :], 0.0)


# ---------------------------------------------------------------------------------------------
# zoom out
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_zoom_out_places_content_at_offset(c: int) -> None:
    zoom = ZoomOut(max_scale=4.0, p=1.0, fill=0.0)
    grown = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        item = make_item(c, 12, 15, n=3, rng=rng, integer=True)
        # strictly non-zero content so the fill (0) is distinguishable
        item["image"] = (np.abs(item["image"]) + 0.5).astype(np.float32)
        out = zoom(item, rng)
        canvas = out["image"]
        hh, ww = canvas.shape[1:]
        assert hh >= 12 and ww >= 15 and hh <= 48 and ww <= 60
        grown += (hh, ww) != (12, 15)
        rows = np.nonzero((canvas != 0).any(axis=(0, 2)))[0]
        cols = np.nonzero((canvas != 0).any(axis=(0, 1)))[0]
        top, left = rows.min(), cols.min()
        assert rows.max() - top + 1 == 12 and cols.max() - left + 1 == 15
        np.testing.assert_array_equal(canvas[:, top : top + 12, left : left + 15], item["image"])
        outside = canvas.copy()
        outside[:, top : top + 12, left : left + 15] = 0
        assert (outside == 0).all()
        # the pixels inside each box moved with the box
        for b, nb in zip(item["boxes"].astype(int), out["boxes"]):
            np.testing.assert_array_equal(nb - b, [left, top, left, top])
            x1, y1, x2, y2 = nb.astype(int)
            np.testing.assert_array_equal(
                canvas[:, y1:y2, x1:x2], item["image"][:, b[1] : b[3], b[0] : b[2]]
            )
    assert grown >= 6
    # p=0 leaves the item alone
    out = ZoomOut(p=0.0)(item, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], item["image"])


# ---------------------------------------------------------------------------------------------
# min-IoU crop
# ---------------------------------------------------------------------------------------------
def _recover_crop(out_image: np.ndarray) -> np.ndarray:
    x1 = out_image[0, 0, 0] - 1
    y1 = out_image[1, 0, 0] - 1
    h, w = out_image.shape[1:]
    return np.array([x1, y1, x1 + w, y1 + h], dtype=np.float64)


@pytest.mark.parametrize("c", (4, 13))
@pytest.mark.parametrize("threshold", (0.1, 0.3, 0.5, 0.7, 0.9))
def test_min_iou_crop_meets_the_constraint(c: int, threshold: float) -> None:
    crop = MinIoURandomCrop(min_ious=(threshold,))
    cropped = 0
    for seed in range(150 if threshold == 0.9 else 40):
        rng = np.random.default_rng(seed)
        item = make_item(c, 40, 50, n=1 + seed % 4, rng=rng)
        item["image"] = coord_image(c, 40, 50)
        # one large box so that even the 0.9 sampler can be met within its 50 trials
        bw, bh = rng.uniform(0.75, 0.95) * 50, rng.uniform(0.75, 0.95) * 40
        x1, y1 = rng.uniform(0, 50 - bw), rng.uniform(0, 40 - bh)
        item["boxes"][0] = (x1, y1, x1 + bw, y1 + bh)
        out = crop(item, rng)
        assert_contract(out, c)
        box_crop = _recover_crop(out["image"])
        x1, y1, x2, y2 = box_crop.astype(int)
        np.testing.assert_array_equal(out["image"], item["image"][:, y1:y2, x1:x2])
        if out["image"].shape == item["image"].shape:
            continue  # no trial met the constraint: the whole image, unchanged
        cropped += 1
        ious = [iou_ref(b, box_crop) for b in item["boxes"].astype(np.float64)]
        assert max(ious) >= threshold - 1e-6
        # kept = exactly the boxes with their centre strictly inside the crop, clipped
        centres = (item["boxes"][:, :2] + item["boxes"][:, 2:]) / 2
        inside = [
            box_crop[0] < cx < box_crop[2] and box_crop[1] < cy < box_crop[3] for cx, cy in centres
        ]
        np.testing.assert_array_equal(sorted(out["labels"]), item["labels"][np.array(inside)])
        for nb, lab in zip(out["boxes"], out["labels"]):
            b = item["boxes"][lab - 1].astype(np.float64)
            ref = [
                min(max(b[0], box_crop[0]), box_crop[2]) - box_crop[0],
                min(max(b[1], box_crop[1]), box_crop[3]) - box_crop[1],
                min(max(b[2], box_crop[0]), box_crop[2]) - box_crop[0],
                min(max(b[3], box_crop[1]), box_crop[3]) - box_crop[1],
            ]
            np.testing.assert_allclose(nb, ref, atol=1e-4)
    # the sampler really crops (0.9 is hard to meet in 50 trials, as in SSD itself)
    assert cropped >= (5 if threshold == 0.9 else 10)


def test_crop_needs_any_not_all_ground_truths() -> None:
    # one big box (IoU >= 0.7 is easy) and one tiny box (IoU with any 0.3+ crop < 0.01):
    # requiring ALL ground truths would never crop.
    c, h, w = 4, 60, 60
    big = [1.0, 1.0, 59.0, 59.0]
    tiny = [30.0, 30.0, 32.0, 32.0]
    item = {
        "image": coord_image(c, h, w),
        "boxes": np.array([big, tiny], np.float32),
        "labels": np.array([1, 2]),
        "difficult": np.array([False, True]),
        "index": 7,
    }
    crop = MinIoURandomCrop(min_ious=(0.7,))
    cropped = 0
    for seed in range(20):
        out = crop(item, np.random.default_rng(seed))
        if out["image"].shape != item["image"].shape:
            cropped += 1
            box_crop = _recover_crop(out["image"])
            assert iou_ref(np.array(big), box_crop) >= 0.7 - 1e-6
            assert iou_ref(np.array(tiny), box_crop) < 0.7
    assert cropped >= 5


def test_crop_sampler_none_keeps_whole_image_and_choice_is_uniform() -> None:
    item = make_item(3, 30, 30, n=2, rng=np.random.default_rng(0))
    out = MinIoURandomCrop(min_ious=(None,))(item, np.random.default_rng(0))
    np.testing.assert_array_equal(out["image"], item["image"])
    np.testing.assert_array_equal(out["boxes"], item["boxes"])
    # with all seven samplers, a good share of calls must leave the image whole (None, and
    # failed high thresholds) and a good share must crop
    crop = MinIoURandomCrop()
    whole = sum(
        crop(item, np.random.default_rng(s))["image"].shape == (3, 30, 30) for s in range(70)
    )
    assert 5 <= whole <= 60


def _caffe_uncropped_fraction(side: float, draws: int, seed: int) -> float:
    """The share of draws left whole by Caffe SSD's batch sampler, written from its
    ``GenerateBatchSamples`` / ``SampleBBox`` / ``SatisfySampleConstraint`` (normalised
    coordinates, one loop per trial): every sampler runs, one produced crop is picked
    uniformly, the whole-image sampler always produces one."""
    rng = np.random.default_rng(seed)
    lo = 0.5 - side / 2
    obj = (lo, lo, lo + side, lo + side)

    def jaccard(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    whole = 0
    for _ in range(draws):
        produced = ["whole"]
        for min_iou in (0.1, 0.3, 0.5, 0.7, 0.9, None):  # None: max_jaccard_overlap 1.0
            for _trial in range(50):
                scale = rng.uniform(0.3, 1.0)
                ar = min(max(rng.uniform(0.5, 2.0), scale**2), 1 / scale**2)
                bw, bh = min(scale * ar**0.5, 1.0), min(scale / ar**0.5, 1.0)
                x, y = rng.uniform(0, 1 - bw), rng.uniform(0, 1 - bh)
                if min_iou is None or jaccard((x, y, x + bw, y + bh), obj) >= min_iou:
                    produced.append("crop")
                    break
        whole += produced[int(rng.integers(len(produced)))] == "whole"
    return whole / draws


@pytest.mark.parametrize("side", (0.1, 0.3))
def test_crop_statistics_follow_caffe_batch_sampler(side: float) -> None:
    """With one centred object of side 10% / 30% of a 300 px image, the share of draws left
    uncropped is Caffe's (all samplers run, uniform choice among those that produced a crop),
    not that of drawing one sampler and giving up (84% / 53% uncropped before)."""
    draws = 2000
    size = 300
    lo = size * (0.5 - side / 2)
    item = {
        "image": np.zeros((1, size, size), np.float32),
        "boxes": np.array([[lo, lo, lo + side * size, lo + side * size]], np.float32),
        "labels": np.array([1]),
        "difficult": np.array([False]),
    }
    crop = MinIoURandomCrop()
    rng = np.random.default_rng(123)
    whole = sum(crop(item, rng)["image"].shape == (1, size, size) for _ in range(draws)) / draws
    reference = _caffe_uncropped_fraction(side, draws, seed=7)
    assert abs(whole - reference) < 0.035, (whole, reference)
    assert whole < (0.6 if side == 0.1 else 0.35)  # far from the old 84% / 53%


def test_crop_may_keep_no_box() -> None:
    """The unconstrained sampler takes any crop once the image has an object, also one that
    keeps none of them (a negative-only image, as in Caffe)."""
    item = {
        "image": np.zeros((1, 100, 100), np.float32),
        "boxes": np.array([[2.0, 2.0, 8.0, 8.0]], np.float32),
        "labels": np.array([1]),
        "difficult": np.array([False]),
    }
    crop = MinIoURandomCrop(min_ious=("any",))
    outs = [crop(item, np.random.default_rng(s)) for s in range(60)]
    assert any(len(o["labels"]) == 0 and o["image"].shape != (1, 100, 100) for o in outs)


@pytest.mark.parametrize("bad", [{"min_ious": (1.5,)}, {"min_ious": ()}, {"scale": (0.3, 2.0)}])
def test_crop_rejects_bad_parameters(bad: dict) -> None:
    with pytest.raises(ConfigError):
        MinIoURandomCrop(**bad)


# ---------------------------------------------------------------------------------------------
# intensity
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_intensity_scale_is_affine(c: int) -> None:
    rng = np.random.default_rng(3)
    item = make_item(c, 9, 11, n=2, rng=rng)
    out = RandomIntensityScale((2.0, 2.0), (1.0, 1.0), p=1.0)(item, rng)
    np.testing.assert_allclose(out["image"], item["image"] * 2 + 1, rtol=1e-6)
    out = RandomIntensityScale((0.5, 1.5), (-1.0, 1.0), per_channel=True, p=1.0)(item, rng)
    for k in range(c):
        x = item["image"][k].ravel()
        y = out["image"][k].ravel()
        a, b = np.polyfit(x, y, 1)
        assert 0.5 - 1e-4 <= a <= 1.5 + 1e-4 and -1 - 1e-4 <= b <= 1 + 1e-4
        np.testing.assert_allclose(y, a * x + b, atol=1e-4)
    np.testing.assert_array_equal(out["boxes"], item["boxes"])


def test_gaussian_noise_has_the_requested_std() -> None:
    rng = np.random.default_rng(4)
    item = make_item(13, 64, 64, n=1, rng=rng)
    out = GaussianNoise(0.3, p=1.0)(item, rng)
    diff = out["image"] - item["image"]
    assert abs(diff.std() - 0.3) < 0.01 and abs(diff.mean()) < 0.01


# ---------------------------------------------------------------------------------------------
# photometric distortion (RGB channels only)
# ---------------------------------------------------------------------------------------------
def test_photometric_saturation_matches_colorsys_and_spares_other_channels() -> None:
    rng = np.random.default_rng(5)
    mean, std = np.array([120.0, 110.0, 100.0]), np.array([60.0, 55.0, 50.0])
    raw = rng.uniform(0, 255, size=(3, 5, 6))
    nir = rng.standard_normal((1, 5, 6))
    # channel order N, B, G, R to check the RGB indices are honoured
    image = np.concatenate([nir, ((raw - mean[:, None, None]) / std[:, None, None])[::-1]])
    item = {
        "image": image.astype(np.float32),
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int64),
        "difficult": np.zeros(0, bool),
    }
    t = PhotometricDistort(
        mean,
        std,
        255.0,
        rgb_channels=(3, 2, 1),
        brightness=0.0,
        contrast=(1, 1),
        saturation=(0.6, 0.6),
        hue=0.0,
        p=1.0,
    )
    out = t(item, rng)
    np.testing.assert_array_equal(out["image"][0], item["image"][0])
    rgb_in = item["image"][[3, 2, 1]].astype(np.float64) * std[:, None, None] + mean[:, None, None]
    rgb_out = out["image"][[3, 2, 1]].astype(np.float64) * std[:, None, None] + mean[:, None, None]
    for y in range(5):
        for x in range(6):
            hh, s, v = colorsys.rgb_to_hsv(*(rgb_in[:, y, x] / 255.0))
            ref = np.array(colorsys.hsv_to_rgb(hh, s * 0.6, v)) * 255.0
            np.testing.assert_allclose(rgb_out[:, y, x], ref, atol=1e-2)


def test_photometric_grey_is_hue_invariant_and_output_finite() -> None:
    rng = np.random.default_rng(6)
    grey = np.full((3, 4, 4), 0.3, np.float32)  # normalised: same raw value on each channel
    item = {"image": grey, "boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0)}
    t = PhotometricDistort(
        [100.0] * 3,
        [50.0] * 3,
        255.0,
        brightness=0.0,
        contrast=(1, 1),
        saturation=(1, 1),
        hue=18.0,
        p=1.0,
    )
    out = t(item, rng)
    np.testing.assert_allclose(out["image"], grey, atol=1e-5)
    full = PhotometricDistort([100.0] * 3, [50.0] * 3, 255.0, p=1.0)
    for seed in range(10):
        item = make_item(3, 8, 8, n=2, rng=np.random.default_rng(seed))
        item["image"] *= 5  # out-of-range raw values are clipped, never NaN
        assert_contract(full(item, np.random.default_rng(seed)), 3)
    with pytest.raises(DataError):
        full(make_item(1, 8, 8, n=0, rng=rng), rng)


def test_build_train_photometric_needs_rgb_names_and_stats() -> None:
    with pytest.raises(ConfigError, match="red, green and blue"):
        build_train_transform(32, {"photometric": True}, channel_names=["depth", "valid"])
    with pytest.raises(ConfigError, match="channel_mean"):
        build_train_transform(32, {"photometric": True}, channel_names=["red", "green", "blue"])
    t = build_train_transform(
        32,
        {"photometric": True},
        channel_names=["nir", "Red", "Green", "Blue"],
        channel_mean=[0.3, 0.4, 0.4, 0.4],
        channel_std=[0.2, 0.2, 0.2, 0.2],
        value_range=1.0,
    )
    photometric = [s for s in t.transforms if isinstance(s, PhotometricDistort)]
    assert len(photometric) == 1 and photometric[0].rgb_channels == (1, 2, 3)
    for seed in range(5):
        item = make_item(4, 20, 25, n=3, rng=np.random.default_rng(seed))
        out = t(item, np.random.default_rng(seed))
        assert_contract(out, 4)
        assert out["image"].shape == (4, 32, 32)


# ---------------------------------------------------------------------------------------------
# builders and determinism
# ---------------------------------------------------------------------------------------------
def test_unknown_cfg_key_lists_accepted_ones() -> None:
    with pytest.raises(ConfigError) as err:
        build_train_transform(300, {"flip": True, "hue_shift": 3})
    assert "hue_shift" in str(err.value)
    for key in TRAIN_CFG_DEFAULTS:
        assert key in str(err.value)
    with pytest.raises(ConfigError):
        build_train_transform(300, {"zoom_out": "yes"})
    with pytest.raises(ConfigError):
        build_train_transform(300, {"intensity_scale": [2.0, 1.0]})


def test_builders_compose_what_the_cfg_asks() -> None:
    kinds = [type(t) for t in build_train_transform(300).transforms]
    assert kinds == [ZoomOut, MinIoURandomCrop, Resize, HorizontalFlip]
    kinds = [
        type(t)
        for t in build_train_transform(
            300,
            {
                "zoom_out": False,
                "crop": False,
                "flip": False,
                "intensity_shift": [-1, 1],
                "noise_std": 0.2,
            },
        ).transforms
    ]
    assert kinds == [RandomIntensityScale, Resize, GaussianNoise]
    zoom = build_train_transform(300, {"zoom_out": 0.25, "max_zoom": 2.0}).transforms[0]
    assert isinstance(zoom, ZoomOut) and zoom.p == 0.25 and zoom.max_scale == 2.0
    ev = build_eval_transform(300)
    assert isinstance(ev, Compose) and [type(t) for t in ev.transforms] == [Resize]


@pytest.mark.parametrize("c", (1, 13))
def test_seeded_pipeline_is_deterministic(c: int) -> None:
    t = build_train_transform(32, {"noise_std": 0.1, "intensity_scale": [0.8, 1.2]})
    item = make_item(c, 40, 44, n=4, rng=np.random.default_rng(0))
    outs = [t(item, np.random.default_rng(s)) for s in (11, 11, 12, 13, 14)]
    for key in ("image", "boxes", "labels", "difficult"):
        np.testing.assert_array_equal(outs[0][key], outs[1][key])
    assert any(not np.array_equal(outs[0]["image"], o["image"]) for o in outs[2:])


# ---------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", CHANNELS)
def test_collate_shapes_and_dtypes(c: int) -> None:
    t = build_train_transform(16)
    items = []
    for i, n in enumerate((3, 0, 5)):
        item = t(make_item(c, 20, 23, n=n, rng=np.random.default_rng(i)), np.random.default_rng(i))
        item["index"] = i
        items.append(item)
    batch = detection_collate(items)
    assert batch["images"].dtype == torch.float32 and batch["images"].shape == (3, c, 16, 16)
    assert batch["index"] == [0, 1, 2]
    assert len(batch["targets"]) == 3
    for item, target, image in zip(items, batch["targets"], batch["images"]):
        np.testing.assert_array_equal(image.numpy(), item["image"])
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape[1] == 4
        assert target["labels"].dtype == torch.int64 and target["difficult"].dtype == torch.bool
        np.testing.assert_array_equal(target["boxes"].numpy(), item["boxes"])
        np.testing.assert_array_equal(target["labels"].numpy(), item["labels"])
        np.testing.assert_array_equal(target["difficult"].numpy(), item["difficult"])
    assert batch["targets"][1]["boxes"].shape == (0, 4)


def test_collate_rejects_mixed_sizes_and_keys() -> None:
    a = make_item(2, 8, 8, n=1, rng=np.random.default_rng(0))
    b = make_item(2, 8, 9, n=1, rng=np.random.default_rng(1))
    with pytest.raises(DataError, match="differ in shape"):
        detection_collate([a, b])
    b = make_item(2, 8, 8, n=1, rng=np.random.default_rng(1))
    del b["index"]
    with pytest.raises(DataError, match="different keys"):
        detection_collate([a, b])
    with pytest.raises(DataError):
        detection_collate([])
