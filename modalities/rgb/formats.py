"""The rgb modality's formats: format name -> the module that reads it.

``FORMATS["voc"]``, ``FORMATS["coco"]`` and ``FORMATS["collection"]`` (YOLO, plain VOC
folders, COCO, masks through :mod:`modalities.formats.collection`) are the layouts of the
``format`` param: each
module's ``discover(adapter)`` lists the units, and :meth:`RGBAdapter.discover` dispatches
through this table. ``FORMATS["image"]`` (the 8-bit images both layouts hold) only answers
``claims``. :func:`claims` answers for the whole modality (``dsod detect`` uses it to name the
modality of an input).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from modalities.rgb import coco, collection, images, voc

FORMATS: dict[str, ModuleType] = {
    "voc": voc,
    "coco": coco,
    "collection": collection,
    "image": images,
}
#: The formats with a ``discover``: the choices of the ``format`` param.
LAYOUTS = ("voc", "coco", "collection")


def claims(path: Path) -> bool:
    """Whether one of the rgb formats claims ``path`` (a file or a folder)."""
    return any(module.claims(Path(path)) for module in FORMATS.values())
