"""Default (prior) boxes of DSOD, in the order the Caffe ``PriorBox`` layer emits them.

Two layouts:

- ``dsod300``: the authors' exact configuration (docs/dsod.md section 3): absolute pixel min/max
  sizes for a 300x300 input, steps 8, 16, 32, 64, 100, 300, centre offset 0.5, no clipping. The
  step 300 on the 2x2 sixth map puts three of its four centres outside the image (centres at
  150 px and 450 px); this quirk is reproduced on purpose.
- ``generic``: any input size and any number of maps. Steps are ``image_size / map_size`` so every
  centre lies inside the image, and min/max sizes are the spec's fractions of 300 (VOC:
  0.1 .. 1.05), linearly interpolated when the number of maps is not 6.

Boxes are ``(cx, cy, w, h)`` normalised by the image size. Order: maps in the order given, then
rows (y), then columns (x), then the boxes of one location: square of min size, square of
sqrt(min * max), then for each aspect ratio r: r and 1/r. A head must flatten its predictions
``[B, A*4, H, W] -> permute(0, 2, 3, 1) -> [B, H*W*A, 4]`` to follow that order.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dsod_core.errors import ConfigError

LAYOUTS = ("dsod300", "generic")

# Pixel sizes at a 300x300 input (docs/dsod.md section 3, the authors' generator scripts).
_MIN_SIZES_300 = {
    "voc": (30.0, 60.0, 111.0, 162.0, 213.0, 264.0),
    "coco": (21.0, 45.0, 99.0, 153.0, 207.0, 261.0),
}
_MAX_SIZES_300 = {
    "voc": (60.0, 111.0, 162.0, 213.0, 264.0, 315.0),
    "coco": (45.0, 99.0, 153.0, 207.0, 261.0, 315.0),
}
_STEPS_300 = (8.0, 16.0, 32.0, 64.0, 100.0, 300.0)
_ASPECT_RATIOS_300: tuple[tuple[float, ...], ...] = (
    (2.0,),
    (2.0, 3.0),
    (2.0, 3.0),
    (2.0, 3.0),
    (2.0,),
    (2.0,),
)
_OFFSET = 0.5


def _check_layout(layout: str, num_maps: int) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown prior layout {layout!r}; expected one of {list(LAYOUTS)}")
    if num_maps < 1:
        raise ConfigError(f"prior layout {layout!r} needs at least one feature map, got {num_maps}")
    if layout == "dsod300" and num_maps != 6:
        raise ConfigError(f"prior layout 'dsod300' has exactly 6 feature maps, got {num_maps}")


def _aspect_ratios(layout: str, num_maps: int) -> list[tuple[float, ...]]:
    """Aspect ratios (without 1 and without flips) of each map."""
    _check_layout(layout, num_maps)
    if layout == "dsod300":
        return list(_ASPECT_RATIOS_300)
    # Same pattern as the spec for any count: first map and last two maps use [2], the middle
    # ones [2, 3]. For 6 maps this is exactly the dsod300 pattern.
    return [(2.0,) if (k == 0 or k >= num_maps - 2) else (2.0, 3.0) for k in range(num_maps)]


def boxes_per_location(layout: str = "dsod300", num_maps: int = 6) -> list[int]:
    """Number of default boxes at each location of each feature map.

    Two squares plus two boxes per aspect ratio (r and 1/r): ``[4, 6, 6, 6, 4, 4]`` for
    ``dsod300``. Raises ``ConfigError`` on an unknown layout or a map count that does not fit it.
    """
    return [2 + 2 * len(r) for r in _aspect_ratios(layout, num_maps)]


def _sizes_fraction(dataset: str, num_maps: int) -> tuple[list[float], list[float]]:
    """Min and max sizes as fractions of the image side, for ``num_maps`` maps.

    The spec's 7 break points (6 min sizes + the last max size, divided by 300) are treated as a
    piecewise-linear curve over [0, 6] and sampled at ``num_maps + 1`` equally spaced positions;
    map k gets ``(s_k, s_{k+1})``. With 6 maps this returns the spec's values exactly.
    """
    if dataset not in _MIN_SIZES_300:
        raise ConfigError(
            f"unknown prior dataset {dataset!r}; expected one of {sorted(_MIN_SIZES_300)}"
        )
    knots = [s / 300.0 for s in _MIN_SIZES_300[dataset]] + [_MAX_SIZES_300[dataset][-1] / 300.0]
    samples = []
    for k in range(num_maps + 1):
        pos = 6.0 * k / num_maps
        lo = min(int(math.floor(pos)), 5)
        t = pos - lo
        samples.append(knots[lo] * (1.0 - t) + knots[lo + 1] * t)
    return samples[:-1], samples[1:]


def default_boxes(
    feature_map_sizes: list[int],
    image_size: int,
    layout: str = "dsod300",
    dataset: str = "voc",
) -> Tensor:
    """Default boxes for square feature maps of a square input.

    Args:
        feature_map_sizes: side of each (square) source map, e.g. ``[38, 19, 10, 5, 3, 2]``.
        image_size: side of the (square) network input in pixels.
        layout: ``"dsod300"`` (the authors' exact boxes, absolute pixel sizes and steps of a 300
            input, normalised by ``image_size``) or ``"generic"`` (steps ``image_size / map``,
            sizes as fractions of the image).
        dataset: ``"voc"`` or ``"coco"`` min/max sizes.

    Returns:
        ``Tensor[P, 4]`` float32 ``(cx, cy, w, h)`` normalised by ``image_size``; not clipped.
        ``P = 8744`` for ``dsod300`` at 300 with maps ``[38, 19, 10, 5, 3, 2]``.
    """
    num_maps = len(feature_map_sizes)
    ratios = _aspect_ratios(layout, num_maps)
    if image_size <= 0 or any(int(f) <= 0 for f in feature_map_sizes):
        raise ConfigError(
            f"image size and feature map sizes must be positive, got image_size="
            f"{image_size}, feature_map_sizes={list(feature_map_sizes)}"
        )
    if dataset not in _MIN_SIZES_300:
        raise ConfigError(
            f"unknown prior dataset {dataset!r}; expected one of {sorted(_MIN_SIZES_300)}"
        )
    if layout == "dsod300":
        mins = [s / image_size for s in _MIN_SIZES_300[dataset]]
        maxs = [s / image_size for s in _MAX_SIZES_300[dataset]]
        steps = [s / image_size for s in _STEPS_300]
    else:
        mins, maxs = _sizes_fraction(dataset, num_maps)
        steps = [1.0 / int(f) for f in feature_map_sizes]

    per_map = []
    for f, step, smin, smax, rs in zip(feature_map_sizes, steps, mins, maxs, ratios, strict=True):
        f = int(f)
        # Shapes of the boxes of one location, in Caffe PriorBox order.
        wh = [(smin, smin), (math.sqrt(smin * smax),) * 2]
        for r in rs:
            wh.append((smin * math.sqrt(r), smin / math.sqrt(r)))
            wh.append((smin / math.sqrt(r), smin * math.sqrt(r)))
        wh_t = torch.tensor(wh, dtype=torch.float64)  # [A, 2]
        centres = (torch.arange(f, dtype=torch.float64) + _OFFSET) * step  # [f]
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # rows (y) outer, columns inner
        ctr = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [f*f, 2]
        a = wh_t.shape[0]
        boxes = torch.cat(
            [ctr[:, None, :].expand(-1, a, -1), wh_t[None, :, :].expand(f * f, -1, -1)], dim=2
        )  # [f*f, A, 4]
        per_map.append(boxes.reshape(-1, 4))
    # Computed in float64 so the float32 result is the correctly rounded value.
    return torch.cat(per_map, dim=0).to(torch.float32)
