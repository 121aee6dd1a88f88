"""Example modality from docs/adding_a_modality.md: float32 elevation tiles (``.npy``, metres)
with YOLO boxes. Installed by another package, it is registered through the entry point
``heightmap = "heightmap.adapter:HeightmapAdapter"`` in the group ``dsod.modalities``."""

from heightmap.adapter import HeightmapAdapter
from heightmap.params import HeightmapParams

__all__ = ["HeightmapAdapter", "HeightmapParams"]
