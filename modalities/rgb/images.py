"""The 8-bit images the rgb adapter decodes (JPEG, PNG): :func:`claims` only.

Images are read by the adapter itself (:meth:`RGBAdapter._decode`, Pillow); this module tells
an input that is an rgb image from one of another modality: a JPEG (by its start-of-image
marker), or a PNG whose header declares 8-bit colour, palette or greyscale pixels (a 16-bit
PNG is a depth map, :mod:`modalities.depth.png`).
"""

from __future__ import annotations

from pathlib import Path

from modalities.formats import has_suffix, head, image_mode

JPEG_SUFFIXES = (".jpg", ".jpeg")
PNG_SUFFIXES = (".png",)
#: Pillow modes of 8-bit PNGs the adapter converts to RGB.
EIGHT_BIT_MODES = ("RGB", "RGBA", "P", "PA", "L", "LA", "1")


def claims(path: Path) -> bool:
    """A JPEG file (``.jpg``/``.jpeg`` starting with ``FF D8 FF``) or an 8-bit PNG."""
    if has_suffix(path, JPEG_SUFFIXES):
        return head(path, 3) == b"\xff\xd8\xff"
    if has_suffix(path, PNG_SUFFIXES):
        found = image_mode(path)
        return found is not None and found[0] in EIGHT_BIT_MODES
    return False
