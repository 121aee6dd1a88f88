"""8-bit AGC thermal frames: what most thermal datasets ship (PNG, JPEG, 8-bit TIFF).

A camera's automatic gain control maps each frame's raw counts to 0..255 grey levels; the
frames are then stored as greyscale, or as an RGB or palette image whose pixels are all grey
(R == G == B, or palette entries that are grey), as many tools write them. :func:`grey_levels`
turns any of these Pillow modes (``L``, ``LA``, ``1``, ``P``, ``PA``, ``RGB``, ``RGBA``) into
one ``uint8 [H, W]`` channel; alpha is ignored. A frame in true colour (a false-colour
"ironbow" rendering, a photograph) is refused with a one-line :class:`DataError` naming the
file and the first colour pixel: its colours are a palette applied to temperatures, not
temperatures, and reading them back as one channel would be guesswork.

:func:`claims` answers from the header only: a PNG, JPEG or non-georeferenced TIFF whose mode
is single-channel 8-bit, or a palette image whose palette is all grey. An RGB-mode file is
not claimed (telling a grey one from a photograph needs its pixels): it stays the rgb
modality's. A single-channel 8-bit image is claimed by rgb too (a grey photograph and an AGC
frame look the same), so ``dsod detect`` names no modality for it and the model's own
modality reads it (``docs/modalities/thermal.md``, "Which modality claims a file").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dsod_core.errors import DataError
from modalities.formats import has_suffix, image_mode

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Pillow modes of 8-bit frames :func:`grey_levels` reads.
EIGHT_BIT_MODES = ("L", "LA", "1", "P", "PA", "RGB", "RGBA")
#: Single-channel 8-bit modes :func:`claims` takes from the header alone.
_GREY_MODES = ("L", "LA", "1")
#: TIFF tags that georeference a raster (a map raster is the multispectral modality's).
GEO_TAGS = (33550, 33922, 34264, 34735)


def claims(path: Path) -> bool:
    """A PNG/JPEG/TIFF whose header declares single-channel 8-bit pixels or a grey palette
    (a TIFF only without GeoTIFF tags). Header only; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    found = image_mode(path)
    if found is None:
        return False
    mode, tags = found
    if any(t in tags for t in GEO_TAGS):
        return False
    if mode in _GREY_MODES:
        return True
    return mode in ("P", "PA") and _grey_palette_header(path)


def grey_colour_image(path: Path, max_pixels: float = 50e6) -> bool:
    """Whether ``path`` is an 8-bit RGB/RGBA/palette image whose pixels are all grey (a
    thermal frame saved in a colour container). Decodes the pixels; never raises."""
    if not has_suffix(path, SUFFIXES):
        return False
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.mode not in EIGHT_BIT_MODES or w * h > max_pixels:
                return False
            im.load()
            grey_levels(im)
    except Exception:  # noqa: BLE001 - a probe: colour or unreadable is simply not grey
        return False
    return True


def _grey_palette_header(path: Path) -> bool:
    """Whether every entry of a palette image's palette (read with the header) is grey."""
    try:
        with Image.open(path) as im:
            raw = im.palette.palette if im.palette is not None else b""
            mode = im.palette.mode if im.palette is not None else ""
    except Exception:  # noqa: BLE001 - a probe: an unreadable file is not claimed
        return False
    if mode != "RGB" or not raw:
        return False
    pal = np.frombuffer(raw, dtype=np.uint8)[: len(raw) // 3 * 3].reshape(-1, 3)
    return bool((pal == pal[:, :1]).all())


def _colour_error(what: str, median: float, where: str, rgb, tolerance: int) -> DataError:
    return DataError(
        f"{what}: thermal images must be grey; the median channel spread is {median:g} "
        f"levels (grey_tolerance {tolerance}), e.g. {where} is RGB "
        f"{tuple(int(v) for v in rgb)} (a false-colour rendering? export the grey or "
        "radiometric frames, or raise the thermal adapter param 'grey_tolerance')",
        path=None,
    )


def _check_grey(what: str, spread: np.ndarray, colours: np.ndarray, tolerance: int) -> None:
    """Refuse a frame whose median per-pixel channel spread (max - min over R, G, B) exceeds
    ``tolerance``. The median, not the maximum: real AGC frames saved as RGB carry channel
    noise on some pixels (public infrared small-target sets: median spread up to 37 levels,
    single pixels up to 47), while a false-colour rendering (ironbow, inferno, jet) has a
    median spread of 100 levels or more."""
    median = float(np.median(spread))
    if median > tolerance:
        flat = int(np.argmax(spread.reshape(-1) > tolerance))
        y, x = np.unravel_index(flat, spread.shape)
        raise _colour_error(what, median, f"pixel (x={x}, y={y})", colours[y, x], tolerance)


def grey_levels(im: Image.Image, tolerance: int = 48) -> np.ndarray:
    """The grey levels (``uint8 [H, W]``) of a decoded 8-bit frame in any of
    :data:`EIGHT_BIT_MODES`: a colour-mode frame (RGB, RGBA, palette) becomes the rounded mean
    of its channels; one whose median channel spread exceeds ``tolerance`` levels is a colour
    image and raises :class:`DataError` (path set by the caller)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode in ("L", "LA"):
        return np.asarray(im.getchannel(0), dtype=np.uint8)
    if mode in ("P", "PA"):
        index = np.asarray(im.getchannel(0) if mode == "PA" else im, dtype=np.uint8)
        pal = np.asarray(im.getpalette("RGB") or [], dtype=np.int16).reshape(-1, 3)
        if pal.shape[0] < 256:  # indices past a short palette read as black, as Pillow does
            pal = np.vstack([pal, np.zeros((256 - pal.shape[0], 3), np.int16)])
        spread = (pal.max(axis=1) - pal.min(axis=1))[index]
        _check_grey("colour palette", spread, pal[index], tolerance)
        return np.round(pal[:, :3].mean(axis=1)).astype(np.uint8)[index]
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(im.convert("RGB") if mode == "RGBA" else im, dtype=np.int16)
        _check_grey("colour image", rgb.max(axis=2) - rgb.min(axis=2), rgb, tolerance)
        return np.round(rgb.mean(axis=2)).astype(np.uint8)
    raise DataError(f"Pillow mode {mode!r} is not an 8-bit frame mode", path=None)
