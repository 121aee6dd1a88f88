"""The depth modality's ``voc`` layout: ``<annotation_dir>/<id>.xml`` VOC boxes, each paired by
name with ``<depth_dir>/<id>.{png,npy,tif,tiff}`` (the stem of the XML's ``<filename>``, with
or without its extension, else of the XML), optional colour, intrinsics and split lists
(:meth:`DepthAdapter._ref`, :meth:`DepthAdapter._splits`).

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
from modalities.depth.png import RGB_EXTENSIONS
from modalities.depth.split_lists import path_groups
from modalities.formats.splits import unit_aliases
from modalities.formats.voc import IMAGE_SUFFIXES, is_voc_xml, parse_voc_xml, select_objects

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter


def _depth_extensions() -> tuple[str, ...]:
    from modalities.depth.adapter import DEPTH_EXTENSIONS  # the adapter imports this module

    return DEPTH_EXTENSIONS


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
    """One ref per ``*.xml`` of ``annotation_dir`` (sorted), split by the split lists
    (:meth:`DepthAdapter._splits`; a list names a frame by the XML's stem or its depth file's
    name), else by the stable hash of its group (``group_by`` on the XML's path under root,
    ``Annotations/seq03_0001.xml``; null: the stem). Per file (under ``adapter.log.guard``,
    ``unit="image"``): the XML parses, its depth map (:func:`depth_stem`) exists and declares
    at most ``max_pixels``; objects of classes outside ``class_names`` are left out with one
    warning per file, difficult ones kept (flagged) unless ``keep_difficult`` is false;
    objects without a ``<bndbox>`` are no objects (counted, one warning); the ``<size>`` is
    kept to be checked against the depth map when it is read (a disagreement is a warning).
    Depth maps no XML names are left out (counted, one warning). Without ``class_names`` the
    classes are the sorted names found."""
    p = adapter.params
    ann_dir = adapter.root / p.annotation_dir
    xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise DataError("no VOC XML annotations (*.xml) found", path=ann_dir)
    exts = (*_depth_extensions(), *RGB_EXTENSIONS)
    groups = path_groups(
        adapter, {x.stem: (f"{p.annotation_dir}/{x.name}", x) for x in xmls}, unit="image"
    )
    split_of = adapter._splits(
        {
            x.stem: [a for e in exts for a in unit_aliases(x.stem + e, p.depth_dir)]
            for x in xmls
            if x.stem in groups
        },
        groups,
    )
    keep = keep_difficult(p)
    refs, names, no_box, used = [], set(), 0, set()
    for xml in xmls:
        split = split_of.get(xml.stem)
        if split is None:
            continue
        with adapter.log.guard(xml, unit="image"):
            ann = parse_voc_xml(xml)
            no_box += len(ann["no_box"])
            stem = depth_stem(adapter, ann["filename"], xml)
            used.add(stem)
            known, left_out = select_objects(ann["objects"], p.class_names)
            objects, _ = select_objects(known, None, keep_difficult=keep)
            ref = adapter._ref(xml.stem, split, stem, xml, objects)
            ref.meta["declared_size"] = ann["size"]
            ref.meta["group"] = groups[xml.stem]
            refs.append(ref)
            names.update(o["name"] for o in known)
            adapter._note_left_out(left_out, xml, xml.stem)
    _summarise(adapter, ann_dir, no_box, used)
    adapter._class_names = list(p.class_names or sorted(names))
    return refs


def depth_stem(adapter: DepthAdapter, filename: str | None, xml: Path) -> str:
    """The stem of the depth map an XML annotates: its ``<filename>`` (any folder part
    dropped; the extension dropped when it is an image or depth one, so ``frame_0001``,
    ``frame_0001.png`` and ``frame_0001.jpg`` all name ``depth/frame_0001.*``), else the XML's
    own stem; the first of those with a depth file, else the first (whose absence the caller
    reports)."""
    candidates = []
    if filename:
        name = filename.replace("\\", "/").rsplit("/", 1)[-1]
        suffix = Path(name).suffix.lower()
        known = suffix in (*IMAGE_SUFFIXES, *_depth_extensions())
        candidates.append(Path(name).stem if known else name)
    candidates.append(xml.stem)
    depth_dir = adapter.resolve_inside_root(adapter.params.depth_dir, xml)
    for stem in candidates:
        if stem and any((depth_dir / f"{stem}{e}").is_file() for e in _depth_extensions()):
            return stem
    return candidates[0]


def _summarise(adapter: DepthAdapter, ann_dir: Path, no_box: int, used: set[str]) -> None:
    """One warning line (and a count) per quirk met while listing."""
    log = adapter.log
    if no_box:
        log.counts["no_box_objects"] = no_box
        log.warn(
            f"{no_box} VOC object(s) without a <bndbox> ignored (no box: not objects)", ann_dir
        )
    depth_dir = adapter.root / adapter.params.depth_dir
    if not depth_dir.is_dir():
        return
    unused = sorted(
        {f.stem for f in depth_dir.iterdir() if f.suffix.lower() in _depth_extensions()} - used
    )
    if unused:
        log.counts["no_annotation_file"] = len(unused)
        log.warn(
            f"{len(unused)} depth map(s) without a VOC XML left out (first: {unused[:5]}; "
            "layout: collection with labels: voc reads them as background frames)",
            depth_dir,
        )
