"""Multispectral GeoTIFF modality: band selection, tiling into chips, GeoJSON labels and
predictions in map coordinates (see ``docs/modalities/multispectral.md``)."""

from modalities.multispectral.adapter import DERIVED, MultispectralAdapter, class_wise_nms
from modalities.multispectral.tiling import boxes_in_chip, chip_starts, chip_windows

__all__ = [
    "DERIVED",
    "MultispectralAdapter",
    "boxes_in_chip",
    "chip_starts",
    "chip_windows",
    "class_wise_nms",
]
