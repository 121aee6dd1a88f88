"""One chip of a raster as the adapter reads it: the window's pixels scaled by the raster's
statistics (clip, no-data fill, optional rescale to [0, 1], derived indices), padded as
no-data beyond a small raster's edge, and the :class:`Sample` of a discovered chip (boxes,
labels, the chip's pixel -> map affine, meta)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from rasterio.transform import Affine
from rasterio.windows import Window

from dsod_core.data.sample import Sample
from modalities.multispectral import geotiff
from modalities.multispectral.geotiff import RasterInfo


def read_chip(
    ds: Any,
    info: RasterInfo,
    window: Window,
    stats: tuple[np.ndarray, ...],
    derived: Any,
    rescale: bool,
    gdal: AbstractContextManager[Any],
) -> tuple[np.ndarray, np.ndarray]:
    """One chip, read by window (inside ``gdal``, the adapter's GDAL-warning capture):
    (image float32 ``[C, S, S]``, valid bool ``[S, S]``).

    The part of the window beyond the raster (only for rasters smaller than a chip) is
    padded as no-data."""
    col, row, w, h = (int(v) for v in (window.col_off, window.row_off, window.width, window.height))
    rw, rh = min(w, info.width - col), min(h, info.height - row)
    with gdal:
        raw, masks = geotiff.read_window(ds, info, Window(col, row, rw, rh))
    data, valid_in = geotiff.to_physical(info, raw, masks)
    lo, hi, fill = stats
    chans = geotiff.channels(info, data, derived)
    chans = np.clip(chans, lo[:, None, None], hi[:, None, None])
    chans = np.where(valid_in[None], chans, fill[:, None, None])
    if rescale:
        nb = len(info.selected)
        span = np.maximum(hi[:nb] - lo[:nb], 1e-12)
        chans[:nb] = (chans[:nb] - lo[:nb, None, None]) / span[:, None, None]
        fill = fill.copy()
        fill[:nb] = (fill[:nb] - lo[:nb]) / span
    image = np.empty((len(fill), h, w), dtype=np.float32)
    image[:] = fill[:, None, None]
    image[:, :rh, :rw] = chans
    valid = np.zeros((h, w), dtype=bool)
    valid[:rh, :rw] = valid_in
    return image, valid


def chip_sample(
    info: RasterInfo,
    chip: dict[str, Any],
    image: np.ndarray,
    valid: np.ndarray,
    units: str,
) -> Sample:
    """The :class:`Sample` of one discovered chip (``ref.meta["chips"]`` entry) of ``info``:
    its pixels (``image``, ``valid``), boxes, labels and difficult flags, the affine of its
    pixels to map coordinates, and the raster's meta."""
    col, row, w, h = chip["window"]
    t = info.transform @ Affine.translation(col, row)
    affine = np.array(
        [
            [t.a, t.b, 0.0, t.c],
            [t.d, t.e, 0.0, t.f],
            [0.0, 0.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    return Sample(
        image=image,
        boxes=np.asarray(chip["boxes"], dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(chip["labels"], dtype=np.int64),
        difficult=np.asarray(chip.get("difficult", [False] * len(chip["labels"])), dtype=bool),
        sample_id=chip["id"],
        source=str(info.path),
        split=chip["split"],
        affine=affine,
        valid=valid,
        meta={
            "raster": info.rel,
            "window": [col, row, w, h],
            "crs": info.crs_name,  # None: a pixel-only raster
            "raster_transform": list(info.transform)[:6],
            "raster_size": [info.width, info.height],
            "units": units,
        },
    )
