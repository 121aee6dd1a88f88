"""Opening one thermal frame: the header check, the full decode, and the dispatch by bit depth.

:func:`declared_size` reads the header only (Pillow opens lazily), so ``max_pixels`` is
checked in ``discover()`` before any pixel is decoded; :func:`decode` checks it again (a file
may change between discovery and reading), decodes every pixel (``load()``: a truncated file
raises here, a unit is never half-read) and hands the image to :mod:`.agc` (8-bit modes) or
:mod:`.radiometric` (16-bit, 32-bit and float modes). Every error is a :class:`DataError`
naming the file; Pillow's own warnings are turned into errors or kept out of the output.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsod_core.errors import DataError
from modalities.thermal import agc, radiometric

#: What Pillow raises on a truncated, corrupt or foreign file.
_PIL_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError)


def _check_size(im: Image.Image, shown: Path, max_pixels: float) -> tuple[int, int]:
    w, h = im.size
    if w * h > max_pixels:
        raise DataError(
            f"declares {w} x {h} px = {w * h:,} pixels, over the limit max_pixels="
            f"{max_pixels:,.0f} (raise the thermal adapter param 'max_pixels' to read it)",
            path=shown,
        )
    return w, h


def declared_size(path: Path, shown: Path, max_pixels: float) -> tuple[int, int]:
    """``(width, height)`` from the header, refused over ``max_pixels``; nothing decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _check_size(im, shown, max_pixels)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("image file not found", path=shown) from None
    except (*_PIL_ERRORS, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image header: {exc}", path=shown) from None


def decode(
    path: Path, shown: Path, max_pixels: float, grey_tolerance: int
) -> tuple[np.ndarray, int]:
    """The frame's values and bit depth: ``uint8 [H, W]`` grey levels and 8 for an 8-bit
    frame (:func:`.agc.grey_levels`), float64 ``[H, W]`` raw values and 16 (32 for ``I`` and
    ``F``) for a radiometric one (:func:`.radiometric.counts`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_size(im, shown, max_pixels)
                im.load()  # every pixel now: a truncated file raises here
                if im.mode in agc.EIGHT_BIT_MODES:
                    return agc.grey_levels(im, grey_tolerance), 8
                if im.mode in radiometric.COUNT_MODES:
                    bits = 16 if im.mode.startswith("I;16") else 32
                    return radiometric.counts(im), bits
                raise DataError(
                    f"Pillow mode {im.mode!r} is not a thermal frame (expected 8-bit grey, "
                    "or 16-bit/32-bit/float single-channel counts)",
                    path=shown,
                )
    except DataError as exc:
        raise DataError(exc.reason, path=shown, sample=exc.sample) from None
    except FileNotFoundError:
        raise DataError("image file not found", path=shown) from None
    except (*_PIL_ERRORS, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image: {exc}", path=shown) from None
