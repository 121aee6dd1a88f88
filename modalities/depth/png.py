"""Depth and colour images read through Pillow: 16-bit depth PNG, float or 16-bit TIFF, and
the aligned colour PNG/JPEG of the ``rgbd`` encoding.

:func:`declared_size` reads the header only (Pillow opens lazily), so the adapter can check
``max_pixels`` in ``discover()`` before any pixel is decoded. The readers check the size again
before decoding (a file may change between discovery and reading), decode the whole image
(``load()``) and then, for PNG, verify the chunk stream up to ``IEND`` with its checksums, so a
truncated or corrupt file raises even where ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set: a
unit is never half-read. Every error is a :class:`DataError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsod_core.errors import DataError
from modalities.formats import has_suffix, image_mode

EXTENSIONS = (".png", ".tif", ".tiff")
RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Pillow modes holding integer depth (16-bit PNG opens as "I;16"; some writers give "I").
_INT_MODES = ("I;16", "I;16B", "I;16L", "I")
# What Pillow raises on a truncated, corrupt or foreign file.
_PIL_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError)


# TIFF tags that georeference a raster (GeoTIFF): such a file is a map raster, not a depth map.
_GEO_TAGS = (33550, 33922, 34264, 34735)


def claims(path: Path) -> bool:
    """A depth map Pillow reads: a PNG whose header declares 16-bit (integer) pixels, or a
    single-channel 16-bit or float TIFF without GeoTIFF tags (an 8-bit PNG is an rgb image,
    a georeferenced TIFF a multispectral raster). Header only; never raises."""
    if has_suffix(path, (".png",)):
        found = image_mode(path)
        return found is not None and found[0] in _INT_MODES
    if has_suffix(path, (".tif", ".tiff")):
        found = image_mode(path)
        if found is None:
            return False
        mode, tags = found
        return (mode in _INT_MODES or mode == "F") and not any(t in tags for t in _GEO_TAGS)
    return False


def _bomb(path: Path, exc: Exception, max_pixels: float) -> DataError:
    return DataError(
        f"declares more pixels than Pillow opens ({exc}); the adapter's own limit is "
        f"max_pixels={max_pixels:,.0f}",
        path=path,
    )


def declared_size(path: Path, max_pixels: float = 50e6) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding any pixel."""
    try:
        with Image.open(path) as img:
            return img.size
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels) from exc
    except _PIL_ERRORS as exc:
        raise DataError(f"cannot read image header: {exc}", path=path) from exc


def _check_size(path: Path, img: Image.Image, max_pixels: float) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise DataError(
            f"declared size {w}x{h} = {w * h} pixels exceeds max_pixels "
            f"({int(max_pixels)}); raise the depth adapter's max_pixels to allow it",
            path=path,
        )


def _verify_png(path: Path) -> None:
    """Walk a PNG's chunks to ``IEND`` checking every CRC (no decompression)."""
    with Image.open(path) as img:
        if img.format == "PNG":
            img.verify()


def _decode(path: Path, max_pixels: float) -> Image.Image:
    """Open, check the size, fully decode and verify (PNG); the caller closes the image."""
    img = Image.open(path)
    try:
        _check_size(path, img, max_pixels)
        img.load()
        if img.format == "PNG":
            _verify_png(path)
    except BaseException:
        img.close()
        raise
    return img


def read_depth(path: Path, max_pixels: float = 50e6) -> tuple[np.ndarray, str]:
    """Read a depth PNG/TIFF's raw values.

    Returns:
        float64 ``[H, W]`` raw values (0 = no reading) and their natural unit: ``"mm"`` for
        integer images (16-bit PNG/TIFF), ``"m"`` for 32-bit float TIFF.
    """
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"unsupported depth file type {suffix!r}", path=path)
    try:
        with _decode(path, max_pixels) as img:
            mode = img.mode
            if mode in _INT_MODES:
                arr, unit = np.asarray(img, dtype=np.float64), "mm"
            elif mode == "F" and suffix != ".png":
                arr, unit = np.asarray(img, dtype=np.float64), "m"
            else:
                raise DataError(
                    f"not a depth file: Pillow mode {mode!r} ({_describe_mode(mode)}); "
                    "expected a single-channel 16-bit integer (mm) or 32-bit float (m) image",
                    path=path,
                )
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels) from exc
    except _PIL_ERRORS as exc:
        # Pillow reports a truncated PNG as OSError("image file is truncated ...").
        raise DataError(f"cannot read depth image: {exc}", path=path) from exc
    if arr.ndim != 2:
        raise DataError(f"not a depth file: {arr.ndim}-D pixel array", path=path)
    return arr, unit


def _describe_mode(mode: str) -> str:
    return {
        "L": "8-bit greyscale",
        "P": "8-bit palette",
        "RGB": "8-bit colour",
        "RGBA": "8-bit colour with alpha",
        "LA": "8-bit greyscale with alpha",
        "1": "1-bit",
        "F": "32-bit float (float depth must be TIFF or .npy)",
    }.get(mode, "not single-channel 16-bit")


def read_rgb(path: Path, shape: tuple[int, int], max_pixels: float = 50e6) -> np.ndarray:
    """An aligned colour image as uint8 ``[H, W, 3]``; its size must equal the depth's."""
    try:
        with _decode(path, max_pixels) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc, max_pixels) from exc
    except _PIL_ERRORS as exc:
        raise DataError(f"cannot read colour image: {exc}", path=path) from exc
    if arr.shape[:2] != tuple(shape):
        raise DataError(
            f"colour image is {arr.shape[1]}x{arr.shape[0]} but its depth map is "
            f"{shape[1]}x{shape[0]}; the rgbd encoding needs them aligned",
            path=path,
        )
    return arr
