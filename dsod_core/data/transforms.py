"""Box-aware training augmentation (SSD/DSOD recipe) for images of any channel count.

Item contract (what every transform takes and returns)
------------------------------------------------------
A dict with at least

* ``image``: float32 ``[C, H, W]``, already normalised per channel (mean 0), any C >= 1;
* ``boxes``: float32 ``[N, 4]`` xyxy in pixels of ``image``, continuous coordinates (pixel
  ``(r, c)`` covers ``[c, c+1) x [r, r+1)``, no +1), N may be 0;
* ``labels``: int64 ``[N]`` in ``1..K``;
* ``difficult``: bool ``[N]`` (all False when missing).

Every other key is passed through untouched (so a spatial extra such as a ``valid`` mask is
*not* moved with the image; add it to the transforms before relying on it).

A transform is called as ``transform(item, rng)`` with a ``numpy.random.Generator`` and returns
a new dict; input arrays are never modified in place (unchanged arrays may be shared). No
transform produces NaN, a box of zero area or a box outside the image.

Order of the paper's pipeline (Caffe SSD ``DistortImage`` -> ``ExpandImage`` ->
batch sampler crop -> resize -> mirror) is what :func:`build_train_transform` composes.

Why only part of this is MONAI: MONAI's ``box_utils`` give IoU, centres and clipping and are
used below, but MONAI's detection transforms crop around positive/negative *centres*
(``RandCropBoxByPosNegLabeld``) and zoom about the image centre; neither is SSD's
"pick a sampler, draw scale/aspect, accept when ANY gt meets the IoU" crop nor its expand onto
a mean-filled canvas at a random offset, so those two are written here.

MONAI's box convention: box axis ``i`` pairs with spatial axis ``i`` of the image. Our boxes are
xyxy (x = column) on ``[C, H, W]`` images, so every size handed to MONAI below is ``(W, H)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dsod_core.boxes.ops import box_iou
from dsod_core.errors import ConfigError, DataError
from dsod_core.params import Params, param

Item = dict[str, Any]

__all__ = [
    "AugmentationParams",
    "Compose",
    "GaussianNoise",
    "HorizontalFlip",
    "MinIoURandomCrop",
    "PhotometricDistort",
    "RandomIntensityScale",
    "Resize",
    "Transform",
    "ZoomOut",
    "TRAIN_CFG_DEFAULTS",
    "build_eval_transform",
    "build_train_transform",
]


# --------------------------------------------------------------------------------------------
# item helpers
# --------------------------------------------------------------------------------------------
def _item_name(item: Item) -> str | None:
    for key in ("sample_id", "index"):
        if key in item:
            return str(item[key])
    return None


def _unpack(item: Item) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``image, boxes, labels, difficult`` with checked shapes/dtypes (no copies)."""
    try:
        image = np.asarray(item["image"])
        boxes = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(item["labels"], dtype=np.int64).reshape(-1)
    except KeyError as err:
        raise DataError(f"item lacks key {err}", sample=_item_name(item)) from None
    except ValueError as err:
        raise DataError(f"boxes must be [N, 4]: {err}", sample=_item_name(item)) from None
    difficult = item.get("difficult")
    if difficult is None:
        difficult = np.zeros(len(labels), dtype=bool)
    difficult = np.asarray(difficult, dtype=bool).reshape(-1)
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"image must be [C, H, W], got {image.shape}", sample=_item_name(item))
    if image.dtype != np.float32:
        image = image.astype(np.float32)
    if not (len(boxes) == len(labels) == len(difficult)):
        raise DataError(
            f"boxes/labels/difficult disagree: {len(boxes)}/{len(labels)}/{len(difficult)}",
            sample=_item_name(item),
        )
    return image, boxes, labels, difficult


def _pack(
    item: Item,
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray,
) -> Item:
    out = dict(item)
    out["image"] = image
    out["boxes"] = np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)
    out["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
    out["difficult"] = np.ascontiguousarray(difficult, dtype=bool)
    return out


def _positive(boxes: np.ndarray) -> np.ndarray:
    """Mask of boxes with strictly positive width and height (finite)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)


def _check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"{name}: probability must be in [0, 1], got {p}")
    return p


def _check_range(name: str, rng: Sequence[float], positive: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in rng)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected [lo, hi], got {rng!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi or (positive and lo <= 0):
        raise ConfigError(f"{name}: invalid range [{lo}, {hi}]")
    return lo, hi


class Transform:
    """Base class: ``__call__(item, rng) -> item``."""

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, threading the same generator through them."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        for t in self.transforms:
            item = t(item, rng)
        return item

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------
class ZoomOut(Transform):
    """SSD "expand": place the image on a larger canvas filled with ``fill``.

    With probability ``p`` a ratio ``r ~ U[1, max_scale]`` is drawn, the canvas is
    ``floor(H r) x floor(W r)`` and the image goes at an integer offset drawn uniformly (Caffe
    SSD ``ExpandImage``). ``fill=0`` is the per-channel mean of normalised data. Boxes are
    shifted by the offset; the pixels are copied exactly.
    """

    def __init__(self, max_scale: float = 4.0, p: float = 0.5, fill: float = 0.0):
        if not float(max_scale) >= 1.0:
            raise ConfigError(f"ZoomOut: max_scale must be >= 1, got {max_scale}")
        if not np.isfinite(fill):
            raise ConfigError(f"ZoomOut: fill must be finite, got {fill}")
        self.max_scale = float(max_scale)
        self.p = _check_prob("ZoomOut.p", p)
        self.fill = float(fill)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        if self.max_scale == 1.0 or rng.random() >= self.p:
            return _pack(item, image, boxes, labels, difficult)
        c, h, w = image.shape
        ratio = rng.uniform(1.0, self.max_scale)
        new_h, new_w = int(h * ratio), int(w * ratio)
        top = int(np.floor(rng.uniform(0.0, new_h - h)))
        left = int(np.floor(rng.uniform(0.0, new_w - w)))
        canvas = np.full((c, new_h, new_w), self.fill, dtype=np.float32)
        canvas[:, top : top + h, left : left + w] = image
        shifted = boxes + np.array([left, top, left, top], dtype=np.float32)
        return _pack(item, canvas, shifted, labels, difficult)


class MinIoURandomCrop(Transform):
    """SSD's batch-sampler crop, as the authors' Caffe data layer runs it.

    **Every** sampler in ``min_ious`` is run, and one crop is picked uniformly among the
    samplers that produced one (Caffe's ``GenerateBatchSamples`` then a uniform choice):

    * ``None``: the whole image (always produces one);
    * a float ``t``: up to ``max_trials`` random crops; the first whose IoU with **any**
      ground truth is ``>= t`` is the sampler's crop (an image without boxes never meets it);
    * ``"any"``: SSD's unconstrained sampler (``max_jaccard_overlap: 1``): the first random crop,
      whenever the image holds at least one box.

    When no sampler produced a crop the image is returned unchanged. A random crop has
    ``scale ~ U[scale]`` and ``aspect ~ U[aspect]`` (clamped to ``[scale^2, 1/scale^2]`` as
    Caffe's ``SampleBBox`` does) relative to the image, i.e. ``w = scale*sqrt(aspect)*W``,
    ``h = scale/sqrt(aspect)*H``, at a uniform position, snapped to whole pixels so the image
    crop is an exact slice. Boxes whose centre lies strictly inside the crop are kept and
    clipped to it (Caffe's ``emit_type: CENTER``); ones that become degenerate are dropped. A
    crop may keep no box: the image then trains as a negative-only image, as in Caffe.
    """

    def __init__(
        self,
        min_ious: Sequence[float | str | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, "any"),
        scale: Sequence[float] = (0.3, 1.0),
        aspect: Sequence[float] = (0.5, 2.0),
        max_trials: int = 50,
    ):
        samplers: list[float | str | None] = []
        for m in min_ious:
            if m is None or m == "any":
                samplers.append(m)
            elif isinstance(m, int | float) and not isinstance(m, bool) and 0.0 <= m <= 1.0:
                samplers.append(float(m))
            else:
                raise ConfigError(f"MinIoURandomCrop: sampler must be None, 'any' or 0..1: {m!r}")
        if not samplers:
            raise ConfigError("MinIoURandomCrop: min_ious is empty")
        self.min_ious = tuple(samplers)
        self.scale = _check_range("MinIoURandomCrop.scale", scale, positive=True)
        if self.scale[1] > 1.0:
            raise ConfigError(f"MinIoURandomCrop: scale must be <= 1, got {self.scale}")
        self.aspect = _check_range("MinIoURandomCrop.aspect", aspect, positive=True)
        if int(max_trials) < 1:
            raise ConfigError(f"MinIoURandomCrop: max_trials must be >= 1, got {max_trials}")
        self.max_trials = int(max_trials)

    def _random_crops(
        self, rng: np.random.Generator, h: int, w: int, samplers: int = 1
    ) -> np.ndarray:
        """``samplers x max_trials`` candidate crops ``[S*T, 4]`` xyxy in whole pixels (Caffe
        ``SampleBBox``).

        All trials of all samplers are drawn at once and each sampler takes its first acceptable
        one, which is the same distribution as Caffe's sequential loops, with one vectorised
        IoU call instead of one per trial.
        """
        t = self.max_trials * samplers
        s = rng.uniform(*self.scale, size=t)
        a = np.clip(rng.uniform(*self.aspect, size=t), s * s, 1.0 / (s * s))
        cw = np.minimum(s * np.sqrt(a), 1.0)
        ch = np.minimum(s / np.sqrt(a), 1.0)
        x = rng.uniform(0.0, 1.0, size=t) * (1.0 - cw)
        y = rng.uniform(0.0, 1.0, size=t) * (1.0 - ch)
        # Whole pixels so the image crop is an exact slice and the boxes use the same rectangle.
        x1 = np.floor(x * w)
        y1 = np.floor(y * h)
        x2 = np.maximum(x1 + 1, np.minimum(w, np.floor((x + cw) * w)))
        y2 = np.maximum(y1 + 1, np.minimum(h, np.floor((y + ch) * h)))
        return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        _, h, w = image.shape
        whole = np.array([0, 0, w, h], dtype=np.float32)
        objects = boxes[labels > 0]  # crowd regions (label < 1) are not objects to meet
        random = [m for m in self.min_ious if m is not None]
        produced: list[np.ndarray] = []
        # Both constraints need an object (Caffe's SatisfySampleConstraint): without one only
        # the whole-image sampler produces a crop.
        if random and len(objects):
            t = self.max_trials
            crops = self._random_crops(rng, h, w, samplers=len(random)).reshape(len(random), t, 4)
            iou = np.asarray(box_iou(objects, crops.reshape(-1, 4))).max(axis=0)
            iou = iou.reshape(len(random), t)  # best IoU with ANY ground truth, per trial
            for k, m in enumerate(random):
                ok = np.ones(t, dtype=bool) if m == "any" else iou[k] >= m
                if ok.any():
                    produced.append(crops[k, int(np.argmax(ok))])
        candidates = [whole] * sum(m is None for m in self.min_ious) + produced
        if not candidates:
            return _pack(item, image, boxes, labels, difficult)
        crop = candidates[int(rng.integers(len(candidates)))]
        if np.array_equal(crop, whole):
            return _pack(item, image, boxes, labels, difficult)
        x1, y1, x2, y2 = (int(v) for v in crop)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
        # MONAI's box utilities, imported here: importing MONAI costs every stage process
        # ~2 s, and only the crop sampler needs it.
        from monai.data.box_utils import centers_in_boxes, spatial_crop_boxes

        keep = np.asarray(centers_in_boxes(centres, np.tile(crop, (len(boxes), 1)), eps=0.0))
        keep = keep.astype(bool).reshape(-1)
        cropped = np.ascontiguousarray(image[:, y1:y2, x1:x2])
        # remove_empty=False: MONAI's emptiness test drops boxes under one pixel, which are
        # real objects in continuous coordinates; degenerate ones are dropped just below.
        clipped, _ = spatial_crop_boxes(boxes[keep], (x1, y1), (x2, y2), remove_empty=False)
        clipped = np.asarray(clipped, dtype=np.float32).reshape(-1, 4)
        good = _positive(clipped)
        return _pack(item, cropped, clipped[good], labels[keep][good], difficult[keep][good])


class HorizontalFlip(Transform):
    """Mirror left-right with probability ``p``: ``x -> W - x`` (continuous coordinates)."""

    def __init__(self, p: float = 0.5):
        self.p = _check_prob("HorizontalFlip.p", p)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        if rng.random() >= self.p:
            return _pack(item, image, boxes, labels, difficult)
        w = image.shape[2]
        flipped = np.ascontiguousarray(image[:, :, ::-1])
        new_boxes = boxes.copy()
        new_boxes[:, 0] = w - boxes[:, 2]
        new_boxes[:, 2] = w - boxes[:, 0]
        return _pack(item, flipped, new_boxes, labels, difficult)


class Resize(Transform):
    """Resize every channel bilinearly to ``size`` (int: square; ``(h, w)``) and scale boxes.

    ``F.interpolate`` with ``align_corners=False`` maps continuous coordinate ``x`` to
    ``x * w_out / w_in`` exactly, which is how boxes are scaled. No antialiasing by default,
    matching OpenCV's ``INTER_LINEAR`` used by Caffe SSD.
    """

    def __init__(self, size: int | Sequence[int], antialias: bool = False):
        if isinstance(size, int | np.integer):
            size = (int(size), int(size))
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ConfigError(f"Resize: size must be an int or (h, w), got {size!r}") from None
        if h < 1 or w < 1:
            raise ConfigError(f"Resize: size must be positive, got {(h, w)}")
        self.size = (h, w)
        self.antialias = bool(antialias)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        _, h, w = image.shape
        out_h, out_w = self.size
        if (h, w) == (out_h, out_w):
            return _pack(item, image, boxes, labels, difficult)
        with torch.no_grad():
            resized = F.interpolate(
                torch.from_numpy(np.ascontiguousarray(image))[None],
                size=(out_h, out_w),
                mode="bilinear",
                align_corners=False,
                antialias=self.antialias,
            )[0].numpy()
        factors = np.array([out_w / w, out_h / h, out_w / w, out_h / h], dtype=np.float64)
        scaled = (boxes.astype(np.float64) * factors).astype(np.float32)
        # Clamp guards float rounding at the border; drop anything squashed to zero area.
        scaled[:, 0::2] = np.clip(scaled[:, 0::2], 0.0, out_w)
        scaled[:, 1::2] = np.clip(scaled[:, 1::2], 0.0, out_h)
        ok = _positive(scaled)
        return _pack(item, resized, scaled[ok], labels[ok], difficult[ok])


# --------------------------------------------------------------------------------------------
# intensity
# --------------------------------------------------------------------------------------------
class RandomIntensityScale(Transform):
    """``x * a + b`` in normalised units, for any modality (brightness/contrast analogue).

    With probability ``p``: ``a ~ U[scale]`` (or 1 when ``scale`` is None) and
    ``b ~ U[shift]`` (or 0), drawn once per image or, with ``per_channel``, once per channel.
    Multiplying normalised (mean-0) data scales contrast about the dataset mean; adding shifts
    brightness by ``b`` standard deviations.
    """

    def __init__(
        self,
        scale: Sequence[float] | None = (0.75, 1.25),
        shift: Sequence[float] | None = (-0.25, 0.25),
        per_channel: bool = False,
        p: float = 0.5,
    ):
        self.scale = None if scale is None else _check_range("intensity_scale", scale)
        self.shift = None if shift is None else _check_range("intensity_shift", shift)
        self.per_channel = bool(per_channel)
        self.p = _check_prob("RandomIntensityScale.p", p)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        if (self.scale is None and self.shift is None) or rng.random() >= self.p:
            return _pack(item, image, boxes, labels, difficult)
        n = image.shape[0] if self.per_channel else 1
        a = rng.uniform(*self.scale, size=n) if self.scale else np.ones(n)
        b = rng.uniform(*self.shift, size=n) if self.shift else np.zeros(n)
        out = image * a.astype(np.float32)[:, None, None] + b.astype(np.float32)[:, None, None]
        return _pack(item, out.astype(np.float32), boxes, labels, difficult)


class GaussianNoise(Transform):
    """Add i.i.d. ``N(0, std^2)`` noise (normalised units) with probability ``p``."""

    def __init__(self, std: float, p: float = 0.5):
        if not (np.isfinite(std) and std >= 0):
            raise ConfigError(f"GaussianNoise: std must be >= 0, got {std}")
        self.std = float(std)
        self.p = _check_prob("GaussianNoise.p", p)

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        if self.std == 0.0 or rng.random() >= self.p:
            return _pack(item, image, boxes, labels, difficult)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(self.std)
        return _pack(item, image + noise, boxes, labels, difficult)


class PhotometricDistort(Transform):
    """SSD's photometric distortion, on the RGB channels of a normalised image only.

    Hue and saturation are only defined on raw colour values, so the transform is given the
    dataset statistics: the three ``rgb_channels`` are un-normalised (``x*std + mean``),
    divided by ``value_range`` (255 for 8-bit, 1 for [0, 1] data) to lie in [0, 1], distorted
    exactly as Caffe SSD's ``DistortImage`` does, clipped to [0, 1] (Caffe works on saturating
    uint8) and normalised back. Other channels (e.g. NIR of an RGBN image) are untouched.

    Caffe order: brightness; then with probability 1/2 contrast first, else last; saturation
    and hue in HSV; each step with its own probability ``p``. ``brightness`` is the maximal
    additive delta as a fraction of ``value_range`` (32/255), ``hue`` the maximal rotation in
    degrees (SSD's 18; Caffe SSD rotates 8-bit OpenCV hue, whose unit is 2 degrees, so pass 36
    to match that build exactly).

    For modalities without colour, use :class:`RandomIntensityScale` (brightness/contrast).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        value_range: float,
        rgb_channels: Sequence[int] = (0, 1, 2),
        brightness: float = 32.0 / 255.0,
        contrast: Sequence[float] = (0.5, 1.5),
        saturation: Sequence[float] = (0.5, 1.5),
        hue: float = 18.0,
        p: float = 0.5,
    ):
        self.rgb_channels = tuple(int(c) for c in rgb_channels)
        if len(self.rgb_channels) != 3 or len(set(self.rgb_channels)) != 3:
            raise ConfigError(f"PhotometricDistort: need 3 distinct RGB channels: {rgb_channels}")
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        if self.mean.shape != (3,) or self.std.shape != (3,):
            raise ConfigError("PhotometricDistort: mean and std need one value per RGB channel")
        if not (np.isfinite(self.mean).all() and (self.std > 0).all()):
            raise ConfigError(f"PhotometricDistort: bad statistics {mean} / {std}")
        if not (np.isfinite(value_range) and value_range > 0):
            raise ConfigError(f"PhotometricDistort: value_range must be > 0, got {value_range}")
        self.value_range = float(value_range)
        self.brightness = float(brightness)
        self.contrast = _check_range("PhotometricDistort.contrast", contrast, positive=True)
        self.saturation = _check_range("PhotometricDistort.saturation", saturation, positive=True)
        self.hue = float(hue)
        self.p = _check_prob("PhotometricDistort.p", p)

    def _distort(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rgb``: float ``[3, H, W]`` in [0, 1]; returns the distorted copy in [0, 1]."""
        # matplotlib's vectorised HSV conversion (installed; no OpenCV here).
        from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

        def brightness(x: np.ndarray) -> np.ndarray:
            if rng.random() < self.p:
                x = np.clip(x + rng.uniform(-self.brightness, self.brightness), 0.0, 1.0)
            return x

        def contrast(x: np.ndarray) -> np.ndarray:
            if rng.random() < self.p:
                x = np.clip(x * rng.uniform(*self.contrast), 0.0, 1.0)
            return x

        def saturation_hue(x: np.ndarray) -> np.ndarray:
            do_sat = rng.random() < self.p
            sat = rng.uniform(*self.saturation) if do_sat else 1.0
            do_hue = rng.random() < self.p
            hue = rng.uniform(-self.hue, self.hue) / 360.0 if do_hue else 0.0
            if not (do_sat or do_hue):
                return x
            hsv = rgb_to_hsv(np.moveaxis(x, 0, -1))
            hsv[..., 0] = np.mod(hsv[..., 0] + hue, 1.0)
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
            return np.moveaxis(hsv_to_rgb(hsv), -1, 0)

        x = brightness(rgb)
        if rng.random() > 0.5:
            x = saturation_hue(contrast(x))
        else:
            x = contrast(saturation_hue(x))
        return x

    def __call__(self, item: Item, rng: np.random.Generator) -> Item:
        image, boxes, labels, difficult = _unpack(item)
        if max(self.rgb_channels) >= image.shape[0]:
            raise DataError(
                f"PhotometricDistort: RGB channels {self.rgb_channels} but image has "
                f"{image.shape[0]} channels",
                sample=_item_name(item),
            )
        idx = list(self.rgb_channels)
        m = self.mean[:, None, None]
        s = self.std[:, None, None]
        raw = np.clip((image[idx] * s + m) / self.value_range, 0.0, 1.0)
        distorted = self._distort(raw.astype(np.float64), rng)
        out = image.copy()
        out[idx] = ((distorted * self.value_range - m) / s).astype(np.float32)
        return _pack(item, out, boxes, labels, difficult)


# --------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentationParams(Params):
    """The ``augmentation`` mapping of the training params (every key optional), parsed by
    :func:`build_train_transform`; ``train.augmentation`` in ``params.yaml``."""

    section: ClassVar[str] = "augmentation"

    zoom_out: bool | float = param(
        0.5, "SSD zoom-out: its probability (true: 0.5, false: off)", min=0, max=1
    )
    max_zoom: float = param(4.0, "largest canvas side / image side of the zoom-out", min=1)
    crop: bool = param(True, "SSD's min-IoU random crop (the Caffe batch samplers)")
    flip: bool = param(True, "horizontal flip with probability 0.5")
    intensity_scale: tuple[float, float] | None = param(
        None, "[lo, hi] of the factor a of x*a + b (normalised units); null: none"
    )
    intensity_shift: tuple[float, float] | None = param(
        None, "[lo, hi] of the shift b of x*a + b, in standard deviations; null: none"
    )
    noise_std: float = param(0.0, "std of Gaussian noise (normalised units) at p 0.5", min=0)
    photometric: bool = param(False, "SSD colour distortion of the RGB channels (RGB only)")

    def check(self) -> None:
        for name in ("intensity_scale", "intensity_shift"):
            pair = getattr(self, name)
            if pair is not None and pair[0] > pair[1]:
                self.fail(name, f"must be [lo, hi] with lo <= hi, got {list(pair)}")


TRAIN_CFG_DEFAULTS: dict[str, Any] = AugmentationParams().to_dict()
"""Every augmentation key with its default (``AugmentationParams``)."""

_RGB_NAMES = ({"r", "red"}, {"g", "green"}, {"b", "blue"})


def _rgb_indices(channel_names: Sequence[str] | None) -> list[int] | None:
    if channel_names is None:
        return None
    lowered = [str(n).strip().lower() for n in channel_names]
    idx = []
    for names in _RGB_NAMES:
        hits = [i for i, n in enumerate(lowered) if n in names]
        if len(hits) != 1:
            return None
        idx.append(hits[0])
    return idx


def build_train_transform(
    size: int | Sequence[int],
    cfg: Mapping[str, Any] | AugmentationParams | None = None,
    *,
    channel_names: Sequence[str] | None = None,
    channel_mean: Sequence[float] | None = None,
    channel_std: Sequence[float] | None = None,
    value_range: float | None = None,
) -> Compose:
    """The SSD/DSOD training pipeline for images of any channel count.

    Order: intensity (photometric, scale/shift) -> zoom-out -> min-IoU crop -> resize to
    ``size`` -> flip -> Gaussian noise. ``cfg`` holds :class:`AugmentationParams` keys (all
    optional; defaults :data:`TRAIN_CFG_DEFAULTS`), validated by it; ``intensity_scale``/
    ``intensity_shift`` are applied together with p=0.5. ``photometric: true`` needs
    ``channel_names`` with exactly one red, green and blue channel (``r``/``red`` ...), the raw
    per-channel ``channel_mean``/``channel_std`` of all channels and the raw ``value_range``
    (255 for 8-bit images); otherwise :class:`ConfigError`.
    """
    if isinstance(cfg, AugmentationParams):
        c = cfg
    else:
        c = AugmentationParams.parse(cfg)
    steps: list[Transform] = []
    if c.photometric:
        steps.append(_photometric(channel_names, channel_mean, channel_std, value_range))
    if c.intensity_scale is not None or c.intensity_shift is not None:
        steps.append(RandomIntensityScale(c.intensity_scale, c.intensity_shift))
    zoom_p = (0.5 if c.zoom_out else 0.0) if isinstance(c.zoom_out, bool) else c.zoom_out
    if zoom_p > 0:
        steps.append(ZoomOut(max_scale=c.max_zoom, p=zoom_p, fill=0.0))
    if c.crop:
        steps.append(MinIoURandomCrop())
    steps.append(Resize(size))
    if c.flip:
        steps.append(HorizontalFlip(0.5))
    if c.noise_std:
        steps.append(GaussianNoise(c.noise_std, p=0.5))
    return Compose(steps)


def _photometric(
    channel_names: Sequence[str] | None,
    channel_mean: Sequence[float] | None,
    channel_std: Sequence[float] | None,
    value_range: float | None,
) -> PhotometricDistort:
    rgb = _rgb_indices(channel_names)
    if rgb is None:
        raise ConfigError(
            "augmentation.photometric needs red, green and blue channels; channel names are "
            f"{None if channel_names is None else list(channel_names)}"
        )
    if channel_mean is None or channel_std is None or value_range is None:
        raise ConfigError(
            "augmentation.photometric needs channel_mean, channel_std and value_range"
        )
    mean = np.asarray(channel_mean, dtype=np.float64).reshape(-1)
    std = np.asarray(channel_std, dtype=np.float64).reshape(-1)
    if len(mean) != len(channel_names) or len(std) != len(channel_names):
        raise ConfigError("channel_mean/channel_std need one value per channel")
    return PhotometricDistort(mean[rgb], std[rgb], value_range, rgb_channels=rgb)


def build_eval_transform(size: int | Sequence[int]) -> Compose:
    """Evaluation pipeline: resize only (boxes scaled with the image)."""
    return Compose([Resize(size)])
