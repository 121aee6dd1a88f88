"""The thermal modality's formats: format name -> the module that reads it.

``FORMATS["agc"]`` (8-bit AGC frames: grey PNG/JPEG/TIFF, grey RGB or palette images) and
``FORMATS["radiometric"]`` (14/16-bit counts in PNG or TIFF) are the two image formats; both
are decoded through :func:`modalities.thermal.frames.decode`. Labels (VOC, COCO, YOLO, masks)
are read by the shared labelled-image layer, :mod:`modalities.formats.collection`, chosen by
the ``labels`` param. :func:`claims` answers for the whole modality (``dsod detect`` uses it
to name the modality of an input).

Which modality claims a file (header only, never pixels): a colour image (RGB/RGBA mode) is
the rgb modality's, even when its pixels happen to be grey; a single-channel 8-bit image is
claimed by rgb AND thermal, and a 16-bit single-channel PNG/TIFF by depth AND thermal (a TIFF
also by multispectral): nothing in such a file says which it is, so ``dsod detect`` names no
modality and the model's modality reads it (deterministic: the check refuses only an input
that exactly one other modality claims).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from modalities.thermal import agc, radiometric

FORMATS: dict[str, ModuleType] = {"agc": agc, "radiometric": radiometric}
#: Every image suffix the thermal formats read (``discover`` and ``dsod detect`` list these).
IMAGE_SUFFIXES = tuple(dict.fromkeys(agc.SUFFIXES + radiometric.SUFFIXES))


def claims(path: Path) -> bool:
    """Whether one of the thermal formats claims ``path`` (a file; folders are not claimed)."""
    return any(module.claims(Path(path)) for module in FORMATS.values())
