"""Synthetic multispectral demo: 8-band UTM GeoTIFFs with WGS84 GeoJSON roof labels.

Land cover (vegetation, bare soil, water) is a smooth random field with texture. Roofs are
uniform rectangles with a shadow on their south-east side. ``green_roof`` (vegetated) and
``painted_roof`` (green paint) have the SAME visible reflectance and differ only in red-edge,
NIR and SWIR, so a model limited to blue/green/red cannot tell them apart; ``bare_roof``
(concrete) differs everywhere. Reflectance is stored as uint16 x 10000 with a 1e-4 scale, 0 is
no-data, and a no-data triangle cuts each raster's north-west corner (a swath edge).
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

BANDS = ["coastal", "blue", "green", "red", "red_edge", "nir", "swir1", "swir2"]
CLASSES = ["green_roof", "painted_roof", "bare_roof"]
# Reflectance (0..1) per band, in BANDS order.
SPECTRA = {
    "vegetation": [0.04, 0.04, 0.08, 0.04, 0.20, 0.40, 0.20, 0.10],
    "soil": [0.10, 0.12, 0.16, 0.20, 0.24, 0.28, 0.34, 0.30],
    "water": [0.06, 0.06, 0.05, 0.03, 0.02, 0.012, 0.006, 0.004],
    "green_roof": [0.05, 0.06, 0.12, 0.07, 0.32, 0.52, 0.22, 0.11],
    "painted_roof": [0.05, 0.06, 0.12, 0.07, 0.08, 0.07, 0.05, 0.04],
    "bare_roof": [0.20, 0.22, 0.24, 0.25, 0.26, 0.27, 0.31, 0.28],
}
EPSG = 32633  # UTM zone 33N
PIXEL_M = 10.0


def _smooth_field(rng: np.random.Generator, size: int, cell: int) -> np.ndarray:
    """Smooth noise ``[size, size]`` with features about ``cell`` px (bilinear upsampling of a
    coarse grid: far cheaper than a wide Gaussian filter)."""
    n = max(2, math.ceil(size / cell) + 1)
    coarse = rng.normal(size=(n, n)).astype(np.float32)
    field = zoom(coarse, size / n, order=1)[:size, :size]
    return np.pad(field, ((0, size - field.shape[0]), (0, size - field.shape[1])), mode="edge")


def _land_cover(rng: np.random.Generator, size: int) -> np.ndarray:
    """Reflectance ``[8, size, size]`` of textured vegetation / soil / water patches."""
    f = _smooth_field(rng, size, 48)
    water, soil = np.quantile(f, [0.15, 0.5])
    kinds = np.where(f < water, 0, np.where(f < soil, 1, 2))
    spectra = np.array([SPECTRA["water"], SPECTRA["soil"], SPECTRA["vegetation"]])
    refl = spectra.astype(np.float32)[kinds].transpose(2, 0, 1)
    texture = 1.0 + 0.12 * _smooth_field(rng, size, 6)
    noise = rng.standard_normal(size=refl.shape, dtype=np.float32)
    return refl * texture[None] * (1.0 + 0.02 * noise)


def _nodata_mask(size: int, chip: int) -> np.ndarray:
    """True where the swath has no data: a triangle in the north-west corner."""
    rows, cols = np.mgrid[0:size, 0:size]
    return rows + cols < int(0.6 * chip)


def _place_roofs(
    rng: np.random.Generator, x0: int, y0: int, chip: int, nodata: np.ndarray
) -> list[tuple[str, list[int]]]:
    """1-3 non-overlapping roofs (20-40 % of the chip side) inside one chip cell."""
    roofs: list[tuple[str, list[int]]] = []
    want = int(rng.integers(1, 4))
    for _ in range(60):
        if len(roofs) == want:
            break
        w, h = (int(v) for v in rng.integers(int(0.2 * chip), int(0.4 * chip) + 1, 2))
        bx = x0 + int(rng.integers(2, chip - w - 3))
        by = y0 + int(rng.integers(2, chip - h - 3))
        box = [bx, by, bx + w, by + h]
        if nodata[by - 1 : by + h + 3, bx - 1 : bx + w + 3].any():
            continue
        if any(
            not (
                box[2] + 3 <= b[0] or b[2] + 3 <= box[0] or box[3] + 3 <= b[1] or b[3] + 3 <= box[1]
            )
            for _, b in roofs
        ):
            continue
        roofs.append((CLASSES[int(rng.integers(len(CLASSES)))], box))
    return roofs


def write_demo(
    out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
) -> dict[str, Any]:
    """Write ~``num_images`` chips' worth of rasters (``<out_dir>/scene_XX.tif`` + ``.geojson``).

    Each raster is ``g x g`` chips of ``image_size`` px (``g`` grows with ``num_images`` so a
    handful of rasters are written); every chip cell holds 1-3 roofs. Returns the adapter
    params reading it: all 8 bands, chips aligned to the cells (overlap 0), split by chip.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chip = int(image_size)
    g = int(np.clip(round(math.sqrt(max(num_images, 1) / 6)), 1, 8))
    n_rasters = max(1, math.ceil(num_images / (g * g)))
    size = g * chip
    # Tiles smaller than the raster (multiples of 16, as TIFF requires) so reads are windowed.
    block = 128 if size >= 256 else max(16, 16 * (size // 32))
    for r in range(n_rasters):
        refl = _land_cover(rng, size)
        nodata = _nodata_mask(size, chip)
        roofs = []
        for cy in range(g):
            for cx in range(g):
                roofs += _place_roofs(rng, cx * chip, cy * chip, chip, nodata)
        for cls, (x1, y1, x2, y2) in roofs:
            # Shadow first (south-east, 2 px), then the roof over it.
            refl[:, y1 + 2 : y2 + 2, x1 + 2 : x2 + 2] *= 0.45
            spec = np.asarray(SPECTRA[cls])[:, None, None]
            refl[:, y1:y2, x1:x2] = spec * (1 + 0.02 * rng.normal(size=(8, y2 - y1, x2 - x1)))
        dn = np.clip(np.round(refl * 10000), 1, 65535).astype(np.uint16)
        dn[:, nodata] = 0
        # Scenes spread over the zone so their label coordinates differ.
        transform = from_origin(420000.0 + 7000.0 * r, 5040000.0 - 3000.0 * r, PIXEL_M, PIXEL_M)
        path = out / f"scene_{r:02d}.tif"
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
        features = []
        polys = [
            {
                "type": "Polygon",
                "coordinates": [
                    [
                        list(transform @ (x, y))
                        for x, y in ((x1, y2), (x2, y2), (x2, y1), (x1, y1), (x1, y2))
                    ]
                ],
            }
            for _, (x1, y1, x2, y2) in roofs
        ]
        wgs = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", polys) if polys else []
        for (cls, _), geom in zip(roofs, wgs):
            features.append({"type": "Feature", "properties": {"class": cls}, "geometry": geom})
        write_json(
            out / f"scene_{r:02d}.geojson",
            {"type": "FeatureCollection", "features": features},
            indent=None,
            allow_nan=False,
        )
    return {
        "bands": None,
        "class_names": list(CLASSES),
        "chip_size": chip,
        "overlap": 0,
        "split_by": "chip",
        "empty_chip_rate": 1.0,
        "seed": seed,
    }
