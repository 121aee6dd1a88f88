"""The depth modality's ``voc`` layout: ``<annotation_dir>/<id>.xml`` VOC boxes, each paired by
name with ``<depth_dir>/<id>.{png,npy,tif,tiff}`` (the stem of the XML's ``<filename>``, else of
the XML), optional colour, intrinsics and split lists (:meth:`DepthAdapter._ref`).

The XML is read by the project's one VOC parser (:mod:`modalities.formats.voc`: ``defusedxml``,
every coordinate a finite number), so an XML the rgb adapter refuses is refused here with the
same message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.depth.annotations import keep_difficult
from modalities.formats.voc import is_voc_xml, parse_voc_xml, select_objects

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter

#: The folders a depth VOC tree holds (the params' defaults), for :func:`claims`.
_FOLDERS = ("Annotations", "depth")


def claims(path: Path) -> bool:
    """A VOC annotation XML (root ``<annotation>``), or a folder holding ``Annotations/`` and
    ``depth/`` (the layout's default folders). Never raises."""
    path = Path(path)
    if path.is_dir():
        return all((path / name).is_dir() for name in _FOLDERS)
    return is_voc_xml(path)


def discover(adapter: DepthAdapter) -> list[SampleRef]:
    """One ref per ``*.xml`` of ``annotation_dir`` (sorted): with split lists, the list that
    names its stem (an id in none is left out), else the stable hash of the stem. Per file
    (under ``adapter.log.guard``, ``unit="image"``): the XML parses, its depth map exists and
    declares at most ``max_pixels``; objects of classes outside ``class_names`` are left out
    with one warning per file, difficult ones kept (flagged) unless ``keep_difficult`` is
    false. Without ``class_names`` the classes are the sorted names found."""
    p = adapter.params
    ann_dir = adapter.root / p.annotation_dir
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise DataError("no VOC XML annotations (*.xml) found", path=ann_dir)
    lists = adapter._split_lists()
    keep = keep_difficult(p)
    refs, names = [], set()
    for xml in xmls:
        # With split lists, an id in no list is not part of the dataset.
        split = lists.get(xml.stem) if lists else adapter._hash_split(xml.stem)
        if split is None:
            continue
        with adapter.log.guard(xml, unit="image"):
            ann = parse_voc_xml(xml)
            stem = Path(ann["filename"]).stem if ann["filename"] else xml.stem
            known, left_out = select_objects(ann["objects"], p.class_names)
            objects, _ = select_objects(known, None, keep_difficult=keep)
            refs.append(adapter._ref(xml.stem, split, stem, xml, objects))
            names.update(o["name"] for o in known)
            adapter._note_left_out(left_out, xml, xml.stem)
    adapter._class_names = list(p.class_names or sorted(names))
    return refs
