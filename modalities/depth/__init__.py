"""Depth modality: RGB-D sensor depth maps -> depth / disparity / normals / HHA / RGB-D images.

Modules: :mod:`.adapter` (``DepthAdapter``), :mod:`.params` (``DepthParams``), :mod:`.demo`
(synthetic scenes), :mod:`.encodings` (metres -> channels), and one per file format read:
:mod:`.png` (16-bit/float depth and colour images via Pillow), :mod:`.npy`, :mod:`.nyu` (NYU
Depth v2 labelled .mat), :mod:`.sunrgbd` (SUN RGB-D release tree), :mod:`.annotations` (VOC
XML, COCO JSON), :mod:`.intrinsics`; :mod:`.frames` (a frame's files, paired by name),
:mod:`.split_lists` (split lists or the hash), :mod:`.world` (detections in the camera frame).
See ``docs/modalities/depth.md``.
"""

from modalities.depth.adapter import DepthAdapter
from modalities.depth.encodings import ENCODING_CHANNELS, Intrinsics
from modalities.depth.params import DepthParams

__all__ = ["DepthAdapter", "DepthParams", "ENCODING_CHANNELS", "Intrinsics"]
