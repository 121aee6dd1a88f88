"""The multispectral modality's formats: format name -> the module that reads it.

Raster formats, each with ``discover(adapter)`` and ``units(adapter)`` (the adapter dispatches
through this table by the ``stack`` param: ``none`` -> ``geotiff``, else ``bandstack``):

* ``geotiff``: raster files GDAL opens, GeoTIFF first (:mod:`.geotiff`);
* ``bandstack``: one file per band, grouped into scenes (:mod:`.bandstack`).

Label formats, each with ``read_labels(path, class_property, image_key, shared)`` (the
adapter reads a raster's label file through this table by the ``label_format`` param):

* ``geojson``: map geometries in a CRS (:mod:`.geojson`);
* ``xview``: xView's pixel boxes in one GeoJSON for all images (:mod:`.xview`);
* ``dota``: DOTA v1 oriented boxes, one text file per image (:mod:`.dota`);
* ``coco`` (:mod:`.coco`, one COCO JSON for all rasters/scenes) and ``yolo`` (:mod:`.yolo`,
  normalised boxes, one txt per raster) are read by the adapter itself, since they need the
  params' quirk policies and the raster's size; they are listed in :data:`LABEL_FORMATS` but
  not in :data:`FORMATS`, so a COCO JSON or YOLO txt given to ``dsod detect`` is not claimed
  by this modality (it is the rgb modality's as much as this one's).

Every label format but ``geojson`` is in pixels: a raster without a CRS (PNG, JPEG, plain
TIFF) is read with them, and its outputs are in pixels.

Every module has ``claims(path)``. :func:`claims` answers for the whole modality (``dsod
detect`` uses it to name the modality of an input); :func:`claims_raster` for the rasters
alone (what a folder input's rasters are).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from modalities.multispectral import bandstack, dota, geojson, geotiff, xview

FORMATS: dict[str, ModuleType] = {
    "geotiff": geotiff,
    "bandstack": bandstack,
    "geojson": geojson,
    "xview": xview,
    "dota": dota,
}
#: The label formats of :data:`FORMATS`, read with ``read_labels`` (``coco`` and ``yolo`` are
#: read by the adapter's label glue: ``coco.read_coco``, ``yolo.read_yolo``).
PER_FILE_LABEL_FORMATS = ("geojson", "xview", "dota")
#: The formats with a ``discover``: how the rasters are stored.
RASTER_FORMATS = ("geotiff", "bandstack")
#: The formats with a ``read_labels``: the choices of the ``label_format`` param.
LABEL_FORMATS = ("geojson", "xview", "dota", "coco", "yolo")


def raster_format(params) -> str:
    """The raster format of a :class:`MultispectralParams`: ``geotiff`` without a band stack
    (``stack: none``), else ``bandstack``."""
    return "geotiff" if params.stack == "none" else "bandstack"


def claims_raster(path: Path) -> bool:
    """Whether a raster format claims ``path`` (a raster file, a band file or a scene)."""
    return any(FORMATS[name].claims(Path(path)) for name in RASTER_FORMATS)


def claims(path: Path) -> bool:
    """Whether one of the multispectral formats claims ``path`` (a file or a folder)."""
    return any(module.claims(Path(path)) for module in FORMATS.values())
