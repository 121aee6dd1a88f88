"""Default (prior) boxes of DSOD, in the order the Caffe ``PriorBox`` layer emits them.

Three layouts:

- ``dsod300``: the authors' exact configuration (docs/dsod.md section 3), valid only for a
  300x300 input (``ConfigError`` at any other size): absolute pixel min/max sizes, steps 8, 16,
  32, 64, 100, 300, centre offset 0.5, no clipping. The steps do not tile 300 px evenly, so not
  every centre lies inside the image: the last row and column of the 38x38 map sit on the border
  (300 px), those of the 10x10 map at 304 px, and the step 300 on the 2x2 sixth map puts three
  of its four centres outside (at 150 and 450 px). These quirks are reproduced on purpose.
- ``generic``: any input size and any number of maps. Steps are ``image_size / map_size`` (map
  k's centres at ``(i + 0.5) / f_k`` of the image, all inside it), and min/max sizes are the
  spec's fractions of 300 (VOC: 30/300 .. 315/300), linearly interpolated when the number of
  maps is not 6. Six maps get the dsod300 aspect ratios; other counts use [2] on the first and
  the last two maps and [2, 3] on the others.
- ``auto`` (the default): ``dsod300`` when ``image_size == 300`` and the maps are DSOD300's
  ``[38, 19, 10, 5, 3, 2]`` (which is what the network produces at 300 px, so the boxes are
  bit for bit the authors') or SSD300's ``[38, 19, 10, 5, 3, 1]`` (the same sizes and steps
  on a 1x1 last map: exactly Caffe SSD300's 8,732 boxes, for the VGG16 variants),
  ``generic`` otherwise. For the six maps of the network at any
  other size this means: the same aspect ratios, per-location order and box counts as at 300;
  min and max sizes the same fractions of the image side as at 300 (VOC min 0.1, 0.2, 0.37,
  0.54, 0.71, 0.88 and max 0.2 .. 1.05); steps ``image_size / map_size``, so every centre lies
  inside the image; the sixth-map quirk exists only at 300. The largest box side is therefore
  ``264 * sqrt(2) / 300 = 1.2445`` of the image (the aspect-2 box of the last map) and the
  largest box area ``264 * 315 / 300**2 = 0.924`` of the image's, at every input size.

Boxes are ``(cx, cy, w, h)`` normalised by the image size. Order: maps in the order given, then
rows (y), then columns (x), then the boxes of one location: square of min size, square of
sqrt(min * max), then for each aspect ratio r: r and 1/r. A head must flatten its predictions
``[B, A*4, H, W] -> permute(0, 2, 3, 1) -> [B, H*W*A, 4]`` to follow that order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dsod_core.errors import ConfigError

LAYOUTS = ("auto", "dsod300", "generic")

# The only input size the dsod300 layout is defined for, and the source maps it has there.
DSOD300_SIZE = 300
DSOD300_MAPS = (38, 19, 10, 5, 3, 2)
# SSD300's maps (VGG16 with the Caffe extra layers): the same layout gives its 8,732 boxes.
SSD300_MAPS = (38, 19, 10, 5, 3, 1)

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


def check_dsod300_input_size(layout: str, input_size: int) -> None:
    """``ConfigError`` when ``layout`` is ``"dsod300"`` and ``input_size`` is not 300.

    The dsod300 layout's sizes and steps are absolute pixels of a 300 px input: at 96 px its
    smallest box would be 31% of the image and its centres would fall far outside.
    """
    if layout == "dsod300" and input_size != DSOD300_SIZE:
        raise ConfigError(
            f"prior_layout 'dsod300' is defined for input_size {DSOD300_SIZE} only, got "
            f"input_size {input_size}; use prior_layout 'auto' (the dsod300 boxes at 300 px, "
            "the same layout scaled to the input size elsewhere) or 'generic'"
        )


def resolve_layout(layout: str, feature_map_sizes: list[int], image_size: int) -> str:
    """The concrete layout (``"dsod300"`` or ``"generic"``) that ``layout`` means for these maps
    and this input size: ``"auto"`` is ``"dsod300"`` at 300 px with DSOD300's or SSD300's
    maps, else ``"generic"``; the other layouts are themselves."""
    _check_layout(layout, len(feature_map_sizes))
    if layout != "auto":
        return layout
    maps = tuple(int(f) for f in feature_map_sizes)
    paper_maps = maps in (DSOD300_MAPS, SSD300_MAPS)
    return "dsod300" if image_size == DSOD300_SIZE and paper_maps else "generic"


def _aspect_ratios(layout: str, num_maps: int) -> list[tuple[float, ...]]:
    """Aspect ratios (without 1 and without flips) of each map."""
    _check_layout(layout, num_maps)
    if layout == "dsod300":
        return list(_ASPECT_RATIOS_300)
    # Same pattern as the spec for any count: first map and last two maps use [2], the middle
    # ones [2, 3]. For 6 maps this is exactly the dsod300 pattern, so "auto" (which is one of
    # the two) has the same counts whatever it resolves to.
    return [(2.0,) if (k == 0 or k >= num_maps - 2) else (2.0, 3.0) for k in range(num_maps)]


def boxes_per_location(layout: str = "auto", num_maps: int = 6) -> list[int]:
    """Number of default boxes at each location of each feature map.

    Two squares plus two boxes per aspect ratio (r and 1/r): ``[4, 6, 6, 6, 4, 4]`` for six
    maps in every layout. Raises ``ConfigError`` on an unknown layout or a map count that does
    not fit it.
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


@dataclass(frozen=True)
class PriorMap:
    """The default boxes of one square source map: ``size`` x ``size`` locations, centres at
    ``(i + 0.5) * step`` (fractions of the image), and the ``(w, h)`` shapes of one location
    from ``min_size``, ``max_size`` and the aspect ratios ``ratios`` (Caffe PriorBox order)."""

    size: int
    step: float
    min_size: float
    max_size: float
    ratios: tuple[float, ...]

    def shapes(self) -> list[tuple[float, float]]:
        """``(w, h)`` of the boxes of one location, in the order of :func:`default_boxes`."""
        smin, smax = self.min_size, self.max_size
        wh = [(smin, smin), (math.sqrt(smin * smax),) * 2]
        for r in self.ratios:
            wh.append((smin * math.sqrt(r), smin / math.sqrt(r)))
            wh.append((smin / math.sqrt(r), smin * math.sqrt(r)))
        return wh

    def boxes(self) -> Tensor:
        """``Tensor[size*size*A, 4]`` float64 (cx, cy, w, h) of this map."""
        return _map_boxes(self.size, self.step, self.shapes())


def prior_maps(
    feature_map_sizes: list[int],
    image_size: int,
    layout: str = "auto",
    dataset: str = "voc",
    min_sizes: Sequence[float] | None = None,
    max_sizes: Sequence[float] | None = None,
    ratios: Sequence[float] | None = None,
) -> list[PriorMap]:
    """The :class:`PriorMap` of each source map (see :func:`default_boxes` for the args).

    ``min_sizes`` / ``max_sizes`` (fractions of the image side, one per map) replace the
    layout's sizes when given (fitted default boxes, :mod:`dsod_core.boxes.coverage`);
    ``ratios`` (values >= 1) replace the aspect ratios 2 and 3 of every map, keeping the
    number of ratios of each map (so the box counts, and the head, stay the same).
    """
    num_maps = len(feature_map_sizes)
    layout = resolve_layout(layout, list(feature_map_sizes), image_size)
    layout_ratios = _aspect_ratios(layout, num_maps)
    if image_size <= 0 or any(int(f) <= 0 for f in feature_map_sizes):
        raise ConfigError(
            f"image size and feature map sizes must be positive, got image_size="
            f"{image_size}, feature_map_sizes={list(feature_map_sizes)}"
        )
    if dataset not in _MIN_SIZES_300:
        raise ConfigError(
            f"unknown prior dataset {dataset!r}; expected one of {sorted(_MIN_SIZES_300)}"
        )
    check_dsod300_input_size(layout, image_size)
    if layout == "dsod300":
        mins = [s / image_size for s in _MIN_SIZES_300[dataset]]
        maxs = [s / image_size for s in _MAX_SIZES_300[dataset]]
        steps = [s / image_size for s in _STEPS_300]
    else:
        mins, maxs = _sizes_fraction(dataset, num_maps)
        steps = [1.0 / int(f) for f in feature_map_sizes]
    mins, maxs = _fitted_sizes(mins, maxs, min_sizes, max_sizes)
    if ratios is not None:
        layout_ratios = [tuple(float(ratios[j]) for j in range(len(rs))) for rs in layout_ratios]
    shapes = zip(feature_map_sizes, steps, mins, maxs, layout_ratios, strict=True)
    return [PriorMap(int(f), float(st), float(a), float(b), rs) for f, st, a, b, rs in shapes]


def _fitted_sizes(
    mins: list[float],
    maxs: list[float],
    min_sizes: Sequence[float] | None,
    max_sizes: Sequence[float] | None,
) -> tuple[list[float], list[float]]:
    if min_sizes is None and max_sizes is None:
        return mins, maxs
    new_mins = list(min_sizes) if min_sizes is not None else mins
    new_maxs = list(max_sizes) if max_sizes is not None else maxs
    if len(new_mins) != len(mins) or len(new_maxs) != len(mins):
        raise ConfigError(
            f"prior min/max sizes need one value per source map ({len(mins)}), got "
            f"{len(new_mins)} and {len(new_maxs)}"
        )
    return [float(v) for v in new_mins], [float(v) for v in new_maxs]


def default_boxes(
    feature_map_sizes: list[int],
    image_size: int,
    layout: str = "auto",
    dataset: str = "voc",
    min_sizes: Sequence[float] | None = None,
    max_sizes: Sequence[float] | None = None,
    ratios: Sequence[float] | None = None,
) -> Tensor:
    """Default boxes for square feature maps of a square input.

    Args:
        feature_map_sizes: side of each (square) source map, e.g. ``[38, 19, 10, 5, 3, 2]``.
        image_size: side of the (square) network input in pixels.
        layout: ``"auto"`` (``"dsod300"`` at 300 px with DSOD300's maps, ``"generic"``
            otherwise), ``"dsod300"`` (the authors' exact boxes for a 300 px input; any other
            ``image_size`` raises ``ConfigError``) or ``"generic"`` (steps
            ``image_size / map``, sizes as fractions of the image). See the module docstring.
        dataset: ``"voc"`` or ``"coco"`` min/max sizes.
        min_sizes, max_sizes, ratios: fitted sizes and aspect ratios that replace the
            layout's (:func:`prior_maps`); None keeps the layout's, bit for bit.

    Returns:
        ``Tensor[P, 4]`` float32 ``(cx, cy, w, h)`` normalised by ``image_size``; not clipped.
        ``P = 8744`` for six maps ``[38, 19, 10, 5, 3, 2]`` (``dsod300`` and ``auto`` at 300).
    """
    maps = prior_maps(feature_map_sizes, image_size, layout, dataset, min_sizes, max_sizes, ratios)
    return boxes_of_maps(maps)


def boxes_of_maps(maps: Sequence[PriorMap]) -> Tensor:
    """``Tensor[P, 4]`` float32 (cx, cy, w, h) of ``maps``, in their order."""
    # Computed in float64 so the float32 result is the correctly rounded value.
    return torch.cat([m.boxes() for m in maps], dim=0).to(torch.float32)


def _map_boxes(f: int, step: float, wh: list[tuple[float, float]]) -> Tensor:
    """``Tensor[f*f*A, 4]`` float64 (cx, cy, w, h) of one ``f`` x ``f`` map: the A shapes
    ``wh`` per location, locations row by row."""
    wh_t = torch.tensor(wh, dtype=torch.float64)  # [A, 2]
    centres = (torch.arange(f, dtype=torch.float64) + _OFFSET) * step  # [f]
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # rows (y) outer, columns inner
    ctr = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [f*f, 2]
    a = wh_t.shape[0]
    boxes = torch.cat(
        [ctr[:, None, :].expand(-1, a, -1), wh_t[None, :, :].expand(f * f, -1, -1)], dim=2
    )  # [f*f, A, 4]
    return boxes.reshape(-1, 4)
