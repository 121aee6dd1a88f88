"""The depth modality's formats: format name -> the module that reads it.

Layouts, each with ``discover(adapter)`` (the choices of the ``layout`` param;
:meth:`DepthAdapter.discover` dispatches through this table once ``auto`` is resolved):

* ``voc``: VOC XML per frame beside a depth folder (:mod:`.voc`);
* ``coco``: one COCO JSON for all frames (:mod:`.coco`);
* ``collection``: a folder of depth maps with VOC, COCO, YOLO or mask labels through the
  shared labelled-image layer (:mod:`.collection`, the ``labels`` param);
* ``nyu``: the NYU Depth v2 labelled ``.mat`` (:mod:`.nyu`);
* ``sunrgbd``: the SUN RGB-D release tree, one scene folder per frame (:mod:`.sunrgbd`).

Depth file formats, read through :data:`modalities.depth.frames.DEPTH_READERS`; here for
``claims``:

* ``png``: 16-bit PNG, 16-bit or float TIFF (:mod:`.png`);
* ``npy``: NumPy arrays (:mod:`.npy`).

:func:`claims` answers for the whole modality (``dsod detect`` uses it to name the modality of
an input).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from modalities.depth import coco, collection, npy, nyu, png, sunrgbd, voc

FORMATS: dict[str, ModuleType] = {
    "voc": voc,
    "coco": coco,
    "collection": collection,
    "nyu": nyu,
    "sunrgbd": sunrgbd,
    "png": png,
    "npy": npy,
}
#: The formats with a ``discover``: the choices of the ``layout`` param (besides ``auto``).
LAYOUTS = ("voc", "coco", "collection", "nyu", "sunrgbd")
#: The depth map file formats (``claims`` only).
FILE_FORMATS = ("png", "npy")


def claims(path: Path) -> bool:
    """Whether one of the depth formats claims ``path`` (a file or a folder)."""
    return any(module.claims(Path(path)) for module in FORMATS.values())
