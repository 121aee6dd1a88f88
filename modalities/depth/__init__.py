"""Depth modality: RGB-D sensor depth maps -> depth / disparity / normals / HHA / RGB-D images.

See ``docs/modalities/depth.md``.
"""

from modalities.depth.adapter import DepthAdapter
from modalities.depth.encodings import ENCODING_CHANNELS, Intrinsics

__all__ = ["DepthAdapter", "ENCODING_CHANNELS", "Intrinsics"]
