"""Example modality from docs/adding_a_modality.md: 16-bit radiometric thermal images with
Pascal VOC boxes. Installed by another package, it is registered through the entry point
``thermal = "thermal.adapter:ThermalAdapter"`` in the group ``dsod.modalities``."""

from thermal.adapter import ThermalAdapter
from thermal.params import ThermalParams

__all__ = ["ThermalAdapter", "ThermalParams"]
