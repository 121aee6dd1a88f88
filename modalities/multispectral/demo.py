"""Synthetic multispectral demo: 8-band UTM GeoTIFF scenes with WGS84 GeoJSON roof footprints.

Each scene is a small raster (2 x 2 chips). Land cover (vegetation, bare soil, water) is a
smooth random field with texture, crossed by asphalt roads (0-2 per scene) and dotted with
trees (round vegetation crowns). Roofs are rectangles or L-shapes of varied size, aspect and
orientation, written as their footprint polygons (edges anti-aliased: border pixels mix roof
and ground), some gabled (two halves lit differently), each casting a shadow away from the
scene's sun.

Every roof draws its own spectrum around its class mean (brightness and per-band variation,
vegetation vigour, paint), so the classes overlap somewhat:

* ``green_roof`` (vegetated) and ``painted_roof`` (green paint) have the SAME visible
  reflectance on average and differ in red-edge, NIR and SWIR (a vegetated roof's vigour
  varies, and some paints reflect NIR), so a model limited to blue/green/red cannot tell them
  apart; trees look like green roofs in every band but their shape;
* ``bare_roof`` (concrete, bitumen) spans bright to dark, down to the soil and asphalt.

A smooth additive haze (path radiance, strongest in coastal/blue, negligible in SWIR) varies
within and between scenes; sensor noise is added last. Reflectance is stored as uint16 x 10000
with a 1e-4 scale, 0 is no-data, and a no-data triangle cuts each raster's north-west corner (a
swath edge). The scenes go to the splits by the adapter's own hash of their file names
(``split_by: raster``); scenes are added until the train and validation ones hold about 85 %
of ``num_images`` chips and at least ``num_images / 24`` scenes are test scenes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_geom
from scipy.ndimage import zoom

from dsod_core.io import atomic_path, write_json
from modalities.base import assign_split

BANDS = ["coastal", "blue", "green", "red", "red_edge", "nir", "swir1", "swir2"]
CLASSES = ["green_roof", "painted_roof", "bare_roof"]
# Reflectance (0..1) per band, in BANDS order: class and land-cover means.
SPECTRA = {
    "vegetation": [0.04, 0.04, 0.08, 0.04, 0.20, 0.40, 0.20, 0.10],
    "soil": [0.10, 0.12, 0.16, 0.20, 0.24, 0.28, 0.34, 0.30],
    "water": [0.06, 0.06, 0.05, 0.03, 0.02, 0.012, 0.006, 0.004],
    "asphalt": [0.07, 0.07, 0.08, 0.09, 0.10, 0.11, 0.13, 0.12],
    "green_roof": [0.05, 0.06, 0.12, 0.07, 0.32, 0.52, 0.22, 0.11],
    "painted_roof": [0.05, 0.06, 0.12, 0.07, 0.08, 0.07, 0.05, 0.04],
    "bare_roof": [0.20, 0.22, 0.24, 0.25, 0.26, 0.27, 0.31, 0.28],
}
# Relative path radiance per band (Rayleigh-like: strongest at short wavelengths).
HAZE_WEIGHT = np.array([1.3, 1.0, 0.75, 0.55, 0.42, 0.32, 0.08, 0.03], dtype=np.float32)
EPSG = 32633  # UTM zone 33N
PIXEL_M = 10.0
CHIPS_PER_SIDE = 2  # a scene is CHIPS_PER_SIDE x CHIPS_PER_SIDE chips
SPLIT_FRACTIONS = (0.15, 0.15)  # val, test: the adapter's defaults, stated in the params
_TRAIN_VAL_SHARE = 0.85  # of num_images: the train + validation chips aimed for
_TEST_SCENES_PER_IMAGE = 1 / 24  # at least this many test scenes per num_images
_SUPERSAMPLE = 3  # sub-pixels per side for the footprint coverage
_NOISE = (0.003, 0.01)  # sensor noise: absolute + relative reflectance sigma
_VIGOUR = (0.9, 1.1)  # green roofs: share of the full vegetation red-edge/NIR/SWIR excess
_PAINT_IR = (0.8, 1.3)  # painted roofs: red-edge/NIR/SWIR factor
_BARE_BRIGHTNESS = (0.7, 1.2)
_ROOF_SIDE = (0.16, 0.36)  # long side, fraction of the chip
_TREES = (1, 6)  # per scene, integers low (inclusive) .. high (exclusive)
_ROOFS_PER_CHIP = (3, 6)  # integers low (inclusive) .. high (exclusive)
_BAND_JITTER = 0.03  # per-roof, per-band relative sigma
_HAZE_MAX = 0.06  # largest path radiance of a scene (blue reflectance units)
_BRIGHTNESS = (0.9, 1.1)  # every roof: material and illumination


def _smooth_field(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth noise ``[size, size]`` with features about ``cell`` px (bilinear upsampling of a
    coarse grid: far cheaper than a wide Gaussian filter)."""
    n = max(2, math.ceil(size / cell) + 1)
    coarse = rng.normal(size=(n, n)).astype(np.float32)
    field = zoom(coarse, size / n, order=1)[:size, :size]
    return np.pad(field, ((0, size - field.shape[0]), (0, size - field.shape[1])), mode="edge")


def _spec(name: str) -> np.ndarray:
    return np.asarray(SPECTRA[name], dtype=np.float32)


def _land_cover(rng: np.random.Generator, size: int) -> np.ndarray:
    """Reflectance ``[8, size, size]`` of textured vegetation / soil / water patches, roads."""
    f = _smooth_field(rng, size, 48)
    water, soil = np.quantile(f, [rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.65)])
    kinds = np.where(f < water, 0, np.where(f < soil, 1, 2))
    spectra = np.stack([_spec("water"), _spec("soil"), _spec("vegetation")])
    refl = spectra[kinds].transpose(2, 0, 1)
    texture = 1.0 + 0.15 * _smooth_field(rng, size, 6)
    noise = rng.standard_normal(size=refl.shape, dtype=np.float32)
    refl = refl * texture[None] * (1.0 + 0.03 * noise)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):  # straight roads, 1-3 px wide
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(0.2, 0.8) * size
        dist = np.abs(
            (cols - size / 2) * np.sin(angle)
            - (rows - size / 2) * np.cos(angle)
            - offset
            + size / 2
        )
        cover = np.clip(rng.uniform(0.8, 1.8) - dist, 0.0, 1.0)
        road = _spec("asphalt")[:, None, None] * rng.uniform(0.8, 1.3)
        refl = refl * (1 - cover) + road * cover
    return refl


def _nodata_mask(size: int, chip: int) -> np.ndarray:
    """True where the swath has no data: a triangle in the north-west corner."""
    rows, cols = np.mgrid[0:size, 0:size]
    return rows + cols < int(0.6 * chip)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class _Shape:
    """A footprint: axis-aligned rectangles in its own frame (union), rotated and placed.

    ``outline`` are the polygon's vertices in raster pixels (x, y), counter-clockwise in the
    local frame."""

    def __init__(self, rng: np.random.Generator, chip: int):
        long_side = rng.uniform(*_ROOF_SIDE) * chip
        short = long_side / rng.uniform(1.0, 2.2)
        self.angle = rng.uniform(0, np.pi)
        if rng.uniform() < 0.3 and long_side > 0.18 * chip:  # an L: two wings
            t = rng.uniform(0.4, 0.6) * short
            self.rects = [(0.0, 0.0, long_side, t), (0.0, 0.0, t, short * rng.uniform(1.3, 1.8))]
            h = self.rects[1][3]
            local = [(0, 0), (long_side, 0), (long_side, t), (t, t), (t, h), (0, h)]
            self.gable = False
        else:
            self.rects = [(0.0, 0.0, long_side, short)]
            local = [(0, 0), (long_side, 0), (long_side, short), (0, short)]
            self.gable = rng.uniform() < 0.5
        pts = np.array(local, dtype=np.float64)
        self.centroid = pts.mean(0)
        self.local = pts - self.centroid
        self.rot = _rotation(self.angle)
        self.half = np.abs(self.local @ self.rot.T).max(0)  # half-extents of the bbox (x, y)
        self.pos = np.zeros(2)

    @property
    def outline(self) -> np.ndarray:
        return self.local @ self.rot.T + self.pos

    @property
    def box(self) -> list[float]:
        o = self.outline
        return [
            float(o[:, 0].min()),
            float(o[:, 1].min()),
            float(o[:, 0].max()),
            float(o[:, 1].max()),
        ]

    def coverage(self, x0: int, y0: int, w: int, h: int, shift=(0.0, 0.0)):
        """Coverage fractions ``[h, w]`` of the pixels ``[y0:y0+h, x0:x0+w]`` (supersampled),
        and which gable half (+1 / -1) each sub-pixel centre falls in, averaged."""
        s = _SUPERSAMPLE
        sub = (np.arange(s) + 0.5) / s
        xs = (x0 + np.arange(w)[:, None] + sub[None]).reshape(-1)
        ys = (y0 + np.arange(h)[:, None] + sub[None]).reshape(-1)
        gx, gy = np.meshgrid(xs - self.pos[0] - shift[0], ys - self.pos[1] - shift[1])
        local = np.stack([gx, gy], -1) @ self.rot + self.centroid  # back to the local frame
        inside = np.zeros(gx.shape, dtype=bool)
        for rx, ry, rw, rh in self.rects:
            inside |= (
                (local[..., 0] >= rx)
                & (local[..., 0] < rx + rw)
                & (local[..., 1] >= ry)
                & (local[..., 1] < ry + rh)
            )
        side = np.where(local[..., 1] < self.centroid[1], 1.0, -1.0) * inside
        cover = inside.reshape(h, s, w, s).mean((1, 3))
        half = side.reshape(h, s, w, s).mean((1, 3))
        return cover.astype(np.float32), half.astype(np.float32)


def _roof_spectrum(rng: np.random.Generator, cls: str) -> np.ndarray:
    """One roof's own reflectance: its class mean, varied."""
    spec = _spec(cls).copy()
    if cls == "green_roof":  # vegetation vigour scales the red-edge/NIR/SWIR excess
        base = _spec("painted_roof")
        vigour = rng.uniform(*_VIGOUR)
        spec[4:] = base[4:] + vigour * (spec[4:] - base[4:])
    elif cls == "painted_roof":  # some paints reflect in the infrared
        spec[4:] *= rng.uniform(*_PAINT_IR)
    else:  # concrete to weathered bitumen
        spec *= rng.uniform(*_BARE_BRIGHTNESS)
    spec *= rng.uniform(*_BRIGHTNESS)  # brightness (material, illumination)
    spec *= 1.0 + _BAND_JITTER * rng.standard_normal(8).astype(np.float32)
    return np.clip(spec, 0.003, 0.95).astype(np.float32)


def _place_roofs(
    rng: np.random.Generator, x0: int, y0: int, chip: int, nodata: np.ndarray
) -> list[tuple[str, _Shape]]:
    """3-5 roofs inside one chip cell (fewer where they do not fit), their bounding boxes
    apart."""
    roofs: list[tuple[str, _Shape]] = []
    want = int(rng.integers(*_ROOFS_PER_CHIP))
    for _ in range(80):
        if len(roofs) == want:
            break
        shape = _Shape(rng, chip)
        lo, hi = np.array([x0, y0]) + shape.half + 2, np.array([x0, y0]) + chip - shape.half - 3
        if (hi <= lo).any():
            continue
        shape.pos = rng.uniform(lo, hi)
        b = [int(math.floor(v)) for v in shape.box]
        if nodata[max(b[1] - 1, 0) : b[3] + 3, max(b[0] - 1, 0) : b[2] + 3].any():
            continue
        box = shape.box
        if any(
            not (
                box[2] + 2 <= o[0] or o[2] + 2 <= box[0] or box[3] + 2 <= o[1] or o[3] + 2 <= box[1]
            )
            for o in (s.box for _, s in roofs)
        ):
            continue
        roofs.append((CLASSES[int(rng.integers(len(CLASSES)))], shape))
    return roofs


def _trees(rng: np.random.Generator, refl: np.ndarray, taken: np.ndarray) -> None:
    """Round vegetation crowns (2-7 px across) where no roof is, in place."""
    size = refl.shape[-1]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(*_TREES))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(1.0, 3.5)
        cover = np.clip(r + 0.5 - np.hypot(cols - cx, rows - cy), 0.0, 1.0) * ~taken
        crown = _spec("vegetation") * rng.uniform(0.8, 1.5) * rng.uniform(0.9, 1.1, 8)
        refl[:] = refl * (1 - cover) + crown.astype(np.float32)[:, None, None] * cover


def _scene(
    rng: np.random.Generator, size: int, chip: int, nodata: np.ndarray
) -> tuple[np.ndarray, list[tuple[str, _Shape]]]:
    """Reflectance ``[8, size, size]`` of one scene and its roofs."""
    g = size // chip
    refl = _land_cover(rng, size)
    roofs = []
    for cy in range(g):
        for cx in range(g):
            roofs += _place_roofs(rng, cx * chip, cy * chip, chip, nodata)
    # The sun: shadows fall away from it, longer for taller buildings.
    sun = rng.uniform(0, 2 * np.pi)
    away = np.array([math.cos(sun), math.sin(sun)])
    roof_cover = np.zeros((size, size), dtype=np.float32)
    shadow = np.zeros((size, size), dtype=np.float32)
    layers = []
    for cls, shape in roofs:
        b = shape.box
        pad = 5
        x0, y0 = max(int(b[0]) - pad, 0), max(int(b[1]) - pad, 0)
        x1, y1 = min(int(b[2]) + pad + 1, size), min(int(b[3]) + pad + 1, size)
        cover, half = shape.coverage(x0, y0, x1 - x0, y1 - y0)
        length = rng.uniform(1.0, 3.5)
        cast, _ = shape.coverage(x0, y0, x1 - x0, y1 - y0, shift=tuple(away * length))
        win = (slice(y0, y1), slice(x0, x1))
        shadow[win] = np.maximum(shadow[win], cast)
        roof_cover[win] = np.maximum(roof_cover[win], cover)
        layers.append((cls, shape, win, cover, half))
    _trees(rng, refl, roof_cover > 0)
    # Shadow on the ground: direct light gone, skylight (bluer) left.
    dark = rng.uniform(0.3, 0.45)
    keep = dark + (1 - dark) * (1 - shadow * (1 - roof_cover))
    keep_band = keep[None] + 0.12 * (1 - keep[None]) * (HAZE_WEIGHT[:, None, None] / 1.3)
    refl *= keep_band
    for cls, shape, win, cover, half in layers:
        spec = _roof_spectrum(rng, cls)[:, None, None]
        lit = 1.0 + (rng.uniform(0.05, 0.18) * half if shape.gable else 0.0)
        tile = spec * lit * (1 + 0.03 * rng.standard_normal(size=(8, *cover.shape)))
        refl[(slice(None), *win)] = refl[(slice(None), *win)] * (1 - cover) + tile * cover
    # Haze: path radiance added on top, smooth in space, its strength drawn per scene.
    haze = rng.uniform(0.0, _HAZE_MAX) * np.clip(0.6 + 0.4 * _smooth_field(rng, size, 40), 0.1, 1.5)
    refl = refl * (1 - 0.5 * haze[None]) + HAZE_WEIGHT[:, None, None] * haze[None]
    sigma = _NOISE[0] + _NOISE[1] * refl
    refl = refl + sigma * rng.standard_normal(size=refl.shape, dtype=np.float32)
    return refl, roofs


def _write_scene_tif(path: Path, dn: np.ndarray, transform: Any, block: int) -> None:
    """Write ``dn`` (``[8, size, size]`` uint16, 0 = no-data) as a tiled, deflate-compressed
    UTM GeoTIFF with band names and the 1e-4 reflectance scale."""
    size = dn.shape[-1]
    with (
        atomic_path(path, suffix=".tif") as tmp,
        rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            width=size,
            height=size,
            count=8,
            dtype="uint16",
            crs=f"EPSG:{EPSG}",
            transform=transform,
            nodata=0,
            tiled=True,
            blockxsize=block,
            blockysize=block,
            compress="deflate",
            predictor=2,
            zlevel=1,
        ) as dst,
    ):
        dst.write(dn)
        dst.descriptions = tuple(BANDS)
        dst.scales = (1e-4,) * 8
        dst.offsets = (0.0,) * 8


def _write_scene_labels(path: Path, roofs: list[tuple[str, _Shape]], transform: Any) -> None:
    """Write the roofs' footprints as a WGS84 GeoJSON FeatureCollection (one Polygon feature
    with property ``class`` per roof)."""
    polys = []
    for _, shape in roofs:
        ring = [list(transform @ (float(x), float(y))) for x, y in shape.outline[::-1]]
        # Pixel rows grow southwards: reversing the local order makes the ring
        # counter-clockwise on the map (RFC 7946 exterior rings).
        polys.append({"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    wgs = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", polys) if polys else []
    features = [
        {"type": "Feature", "properties": {"class": cls}, "geometry": geom}
        for (cls, _), geom in zip(roofs, wgs)
    ]
    write_json(
        path,
        {"type": "FeatureCollection", "features": features},
        indent=None,
        allow_nan=False,
    )


def write_demo(
    out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
) -> dict[str, Any]:
    """Write scenes (``<out_dir>/scene_XXX.tif`` + ``.geojson``) of 2 x 2 chips of
    ``image_size`` px until the train and validation scenes hold ~85 % of ``num_images``
    chips and ``num_images / 24`` scenes are test scenes; every chip cell holds 3-5 roofs.
    Returns the adapter params reading it: all 8 bands, chips aligned to the cells (overlap
    0), split by scene (raster)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chip = int(image_size)
    g = CHIPS_PER_SIDE
    size = g * chip
    val_fraction, test_fraction = SPLIT_FRACTIONS
    # Tiles smaller than the raster (multiples of 16, as TIFF requires) so reads are windowed.
    block = 128 if size >= 256 else max(16, 16 * (size // 32))
    nodata = _nodata_mask(size, chip)
    counts = {"train": 0, "val": 0, "test": 0}
    min_test = max(1, math.ceil(num_images * _TEST_SCENES_PER_IMAGE))
    r = 0
    while (
        (counts["train"] + counts["val"]) * g * g < _TRAIN_VAL_SHARE * num_images
        or counts["test"] < min_test
        or not (counts["train"] and counts["val"])
    ):
        name = f"scene_{r:03d}"
        counts[assign_split(f"{name}.tif", val_fraction, test_fraction, seed)] += 1
        refl, roofs = _scene(rng, size, chip, nodata)
        dn = np.clip(np.round(refl * 10000), 1, 65535).astype(np.uint16)
        dn[:, nodata] = 0
        # Scenes on a grid over the zone (3 km apart) so their label coordinates differ.
        transform = from_origin(
            420000.0 + 3000.0 * (r % 20), 5040000.0 - 3000.0 * (r // 20), PIXEL_M, PIXEL_M
        )
        _write_scene_tif(out / f"{name}.tif", dn, transform, block)
        _write_scene_labels(out / f"{name}.geojson", roofs, transform)
        r += 1
    return {
        "bands": None,
        "class_names": list(CLASSES),
        "chip_size": chip,
        "overlap": 0,
        "split_by": "raster",
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "empty_chip_rate": 1.0,
        "seed": seed,
    }
