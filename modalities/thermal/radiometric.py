"""Radiometric thermal frames: 14/16-bit raw counts in PNG or TIFF, read with Pillow.

Radiometric cameras (and tools that export their raw data) store one integer per pixel, the
sensor's counts: a 16-bit greyscale PNG (Pillow mode ``I;16``), a 16-bit TIFF (``I;16``,
``I;16B``), a 32-bit integer TIFF (``I``) or a float TIFF (``F``, already linearised). Many
cameras give temperature linearly, ``kelvin = counts x gain + offset`` (FLIR's "TLinear"
outputs: 0.01 K per count at high resolution, 0.1 K at low, offset 0), which
:func:`to_temperature` applies. Counts without a calibration are made an intensity either by
a fixed scale (:func:`scale_counts`) or by a per-frame percentile window
(:func:`agc_window`), the same kind of mapping a camera's automatic gain control makes for
its 8-bit output.

:func:`claims` answers from the header only: a PNG with 16-bit integer pixels, or a
single-channel integer or float TIFF without GeoTIFF tags. Both are claimed by the depth
modality too (a depth map and a radiometric frame are the same kind of file), so ``dsod
detect`` names no modality for them and the model's own modality reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from modalities.formats import has_suffix, image_mode
from modalities.thermal.agc import GEO_TAGS

SUFFIXES = (".png", ".tif", ".tiff")
#: Pillow modes of radiometric frames: 16-bit (either byte order), 32-bit integer, float.
COUNT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
KELVIN_AT_0C = 273.15


def claims(path: Path) -> bool:
    """A 16-bit integer PNG, or a single-channel integer/float TIFF without GeoTIFF tags.
    Header only; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    found = image_mode(path)
    if found is None:
        return False
    mode, tags = found
    if has_suffix(path, (".png",)):
        return mode in COUNT_MODES and mode != "F"
    return mode in COUNT_MODES and not any(t in tags for t in GEO_TAGS)


def counts(im: Image.Image) -> np.ndarray:
    """The raw values of a decoded frame in one of :data:`COUNT_MODES`, float64 ``[H, W]``
    (big-endian 16-bit data is read in its own byte order)."""
    return np.asarray(im, dtype=np.float64)


def to_temperature(values: np.ndarray, gain: float, offset: float, unit: str) -> np.ndarray:
    """``values x gain + offset`` kelvin, in ``unit`` (``"kelvin"`` or ``"celsius"``)."""
    kelvin = np.asarray(values, dtype=np.float64) * gain + offset
    return kelvin - KELVIN_AT_0C if unit == "celsius" else kelvin


def scale_counts(values: np.ndarray, counts_max: float) -> np.ndarray:
    """``values / counts_max`` clipped to ``[0, 1]`` (65535 for 16-bit, 16383 for 14-bit)."""
    return np.clip(np.asarray(values, dtype=np.float64) / counts_max, 0.0, 1.0)


def agc_window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The frame's ``low``..``high`` percentiles mapped to ``[0, 1]``, clipped outside (a flat
    frame, whose window is empty, gives zeros)."""
    arr = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(arr, [low, high])
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
