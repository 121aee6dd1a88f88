"""Multispectral GeoTIFF modality: band selection, tiling into chips, GeoJSON labels and
predictions in map coordinates (see ``docs/modalities/multispectral.md``).

Modules: ``adapter`` (the adapter), ``params`` (its params), ``geotiff`` (rasters in),
``bandstack`` (one file per band: Sentinel-2, Landsat, a pattern), ``geojson`` (labels in,
predictions out), ``xview`` and ``dota`` (pixel-box labels in), ``tiling`` (chips and merging
their predictions), ``demo`` (the synthetic dataset).
"""

from modalities.multispectral.adapter import MultispectralAdapter
from modalities.multispectral.params import DEFAULT_ROLES, DERIVED, MultispectralParams
from modalities.multispectral.tiling import (
    boxes_in_chip,
    chip_starts,
    chip_windows,
)

__all__ = [
    "DEFAULT_ROLES",
    "DERIVED",
    "MultispectralAdapter",
    "MultispectralParams",
    "boxes_in_chip",
    "chip_starts",
    "chip_windows",
]
