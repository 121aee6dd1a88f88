"""Thermal infrared frames: 8-bit AGC images and 14/16-bit radiometric counts, with VOC,
COCO, YOLO or mask labels (see ``docs/modalities/thermal.md``).

Modules: ``adapter`` (the adapter), ``params`` (its params), ``frames`` (opening one frame),
``agc`` (8-bit frames), ``radiometric`` (16-bit counts, temperature), ``formats`` (the format
table and ``claims``), ``demo`` (the synthetic set), ``detect`` (``dsod detect``).
"""

from modalities.thermal.adapter import ThermalAdapter
from modalities.thermal.params import ThermalParams

__all__ = ["ThermalAdapter", "ThermalParams"]
