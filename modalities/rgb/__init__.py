"""RGB photographs with Pascal VOC (XML) or MS COCO (instances JSON) annotations.

``adapter`` holds :class:`RGBAdapter`, ``params`` its :class:`RGBParams`, ``voc`` and ``coco``
the two annotation formats (usable by other modalities), ``demo`` the synthetic VOC set.
"""

from modalities.rgb.adapter import BOX_TOLERANCE_PX, RGBAdapter
from modalities.rgb.coco import from_coco_results, load_coco_json, to_coco_results
from modalities.rgb.params import RGBParams
from modalities.rgb.voc import VOC_CLASSES, parse_voc_xml, read_image_set, voc_xml

__all__ = [
    "BOX_TOLERANCE_PX",
    "VOC_CLASSES",
    "RGBAdapter",
    "RGBParams",
    "from_coco_results",
    "load_coco_json",
    "parse_voc_xml",
    "read_image_set",
    "to_coco_results",
    "voc_xml",
]
