"""Pascal VOC annotation files: reading and writing ``Annotations/<id>.xml`` and
``ImageSets/Main/<list>.txt``; the one VOC parser of the project.

Nothing here knows about adapters: :func:`parse_voc_xml` turns one XML file into plain data,
:func:`select_objects` keeps the objects an adapter's params ask for (``class_names``,
``keep_difficult``), :func:`voc_xml` writes one file, :func:`read_image_set` reads one image
list and :func:`is_voc_xml` tells a VOC annotation from another XML file by its root element.
Every modality whose boxes come as VOC XML (rgb, depth, the thermal example) reads them here,
so a file is accepted or refused the same way, with the same message, by all of them
(``modalities.rgb.voc`` re-exports this module).

Coordinates: VOC ``<bndbox>`` values are 1-based *inclusive* pixel indices (pixel columns
``xmin..xmax`` are covered). In the project's continuous, 0-based coordinates with exclusive
``x2``/``y2`` edges that is ``[xmin - 1, xmax)``, so a parsed box is
``(xmin - 1, ymin - 1, xmax, ymax)``; :func:`voc_xml` writes the inverse (the smallest
inclusive pixel range covering a continuous box).

XML is parsed with ``defusedxml``, which refuses entity-expansion and external-entity tricks
in untrusted files. Every coordinate must be a finite number: ``nan`` or ``inf`` (which
Python's ``float`` would accept) is refused naming the file.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head

try:
    from defusedxml import ElementTree as SafeET
    from defusedxml.common import DefusedXmlException
except ImportError:  # pragma: no cover - defusedxml is a declared dependency
    # The stdlib parser (expat >= 2.4.1 as bundled with Python 3.11) already limits billion-
    # laughs amplification and never fetches external entities.
    import xml.etree.ElementTree as SafeET  # noqa: N813

    class DefusedXmlException(ValueError):  # type: ignore[no-redef]
        """Placeholder so the except clause below stays valid without defusedxml."""


VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes in the devkit's standard order (labels 1..20)."""


def _flag(obj: Element, tag: str) -> bool:
    """A VOC 0/1 flag (``difficult``, ``truncated``, ``occluded``); absent or empty is 0."""
    return (obj.findtext(tag) or "0").strip() not in ("0", "")


def _number(parent: Element, tag: str, shown: str | os.PathLike) -> float:
    text = parent.findtext(tag)
    try:
        value = float((text or "").strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"<{parent.tag}><{tag}> is {text!r}, not a number", path=shown)
    return value


def parse_voc_xml(
    path: str | os.PathLike, *, shown: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Parse one VOC annotation file into plain data.

    Args:
        path: the XML file.
        shown: the path error messages name (e.g. relative to the dataset root as the user
            wrote it); ``path`` itself by default.

    Returns:
        ``{"filename": str | None, "size": [width, height] | None, "objects": [...],
        "no_box": [...]}`` where
        ``size`` is ``None`` when ``<size>`` is absent or declares 0 (some tools write 0 for
        "unknown"), ``no_box`` lists the names of the objects without a ``<bndbox>`` (tools
        such as labelImg and CVAT write them for point or tag annotations: they are not
        objects, and not an error; the caller counts them) and each object of ``objects`` is
        ``{"name": str, "box": [x1, y1, x2, y2], "difficult": bool, "truncated": bool,
        "occluded": bool}`` with ``box`` in continuous 0-based pixels (``[xmin - 1,
        ymin - 1, xmax, ymax]``). Only an object's own ``<bndbox>`` is read (person-layout
        ``<part>`` boxes are not objects).

    Raises:
        DataError: naming ``shown``: file missing or unreadable, malformed XML, a root other
            than ``<annotation>``, an object without ``<name>``, a coordinate
            that is not a number, an inverted box (``xmax < xmin``; ``xmin == xmax`` is one
            pixel and valid).
    """
    shown = path if shown is None else shown
    try:
        root = SafeET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError("annotation file not found", path=shown) from None
    except (ParseError, DefusedXmlException, OSError) as exc:
        raise DataError(f"malformed VOC XML: {exc}", path=shown) from None
    if root.tag != "annotation":
        raise DataError(f"root element is <{root.tag}>, expected <annotation>", path=shown)

    filename = (root.findtext("filename") or "").strip() or None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        w, h = (_number(size_el, tag, shown) for tag in ("width", "height"))
        if w > 0 and h > 0:
            size = [int(w), int(h)]

    objects, no_box = [], []
    for obj in root.iter("object"):
        parsed = _object(obj, shown)
        if parsed["box"] is None:
            no_box.append(parsed["name"])
        else:
            objects.append(parsed)
    return {"filename": filename, "size": size, "objects": objects, "no_box": no_box}


def _object(obj: Element, shown: str | os.PathLike) -> dict[str, Any]:
    """One ``<object>``: its name, its own ``<bndbox>`` (continuous pixels) and flags."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DataError("an <object> has no <name>", path=shown)
    bnd = obj.find("bndbox")  # direct child only
    if bnd is None:  # labelImg/CVAT write such objects (points, tags): no box, not an error
        return {"name": name, "box": None}
    xmin, ymin, xmax, ymax = (_number(bnd, t, shown) for t in ("xmin", "ymin", "xmax", "ymax"))
    if xmax < xmin or ymax < ymin:
        raise DataError(
            f"inverted box of {name!r}: xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}",
            path=shown,
        )
    return {
        "name": name,
        "box": [xmin - 1.0, ymin - 1.0, xmax, ymax],
        "difficult": _flag(obj, "difficult"),
        "truncated": _flag(obj, "truncated"),
        "occluded": _flag(obj, "occluded"),
    }


def select_objects(
    objects: Sequence[dict[str, Any]],
    class_names: Sequence[str] | None,
    *,
    keep_difficult: bool = True,
) -> tuple[list[dict[str, Any]], Counter]:
    """The objects of a parsed file that an adapter keeps, and the names it does not know.

    Objects whose ``name`` is not in ``class_names`` (none when it is None) are left out and
    counted by name (difficult or not, in file order); of the others, those flagged
    ``difficult`` are left out unless ``keep_difficult`` (the shared adapter param: kept ones
    stay flagged, ignored by the evaluation). Whether an unknown name is an error or a warning
    is the caller's (``unknown_class``)."""
    known = None if class_names is None else set(class_names)
    kept, unknown = [], Counter()
    for obj in objects:
        if known is not None and obj["name"] not in known:
            unknown[obj["name"]] += 1
        elif keep_difficult or not obj.get("difficult", False):
            kept.append(obj)
    return kept, unknown


def is_voc_xml(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a VOC annotation: an ``.xml`` file whose root element is
    ``<annotation>`` (only the start of the file is parsed). Never raises."""
    if not has_suffix(path, (".xml",)) or not head(path, 1):
        return False
    try:
        for _, element in SafeET.iterparse(str(path), events=("start",)):
            return element.tag == "annotation"
    except Exception:  # noqa: BLE001 - a probe: a file the parser refuses is not claimed
        return False
    return False


def voc_xml(
    filename: str,
    width: int,
    height: int,
    objects: list[dict[str, Any]],
    *,
    depth: int = 3,
    folder: str = "VOCdemo",
) -> str:
    """The text of a VOC annotation file.

    ``objects`` hold ``name`` and ``box`` (continuous xyxy pixels) and optionally
    ``difficult``, ``truncated``, ``occluded`` (default False). A box is written as the
    1-based inclusive pixel range that covers it, clipped to the image:
    ``xmin = floor(x1) + 1``, ``xmax = min(ceil(x2), width)``.
    """
    parts = [
        "<annotation>",
        f"  <folder>{escape(folder)}</folder>",
        f"  <filename>{escape(filename)}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>{depth}</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        xmin, ymin = math.floor(x1) + 1, math.floor(y1) + 1
        xmax, ymax = min(math.ceil(x2), width), min(math.ceil(y2), height)
        parts += [
            "  <object>",
            f"    <name>{escape(obj['name'])}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{int(bool(obj.get('truncated', False)))}</truncated>",
            f"    <occluded>{int(bool(obj.get('occluded', False)))}</occluded>",
            f"    <difficult>{int(bool(obj.get('difficult', False)))}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def read_image_set(path: str | os.PathLike, *, shown: str | os.PathLike | None = None) -> list[str]:
    """The image ids of an ``ImageSets/Main/<list>.txt`` file (one id per line), in order,
    duplicates removed. Raises :class:`DataError` naming ``shown`` when the list is missing or
    unreadable, or a line holds more than one token."""
    shown = path if shown is None else shown
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise DataError("image list not found", path=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"image list unreadable: {exc}", path=shown) from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 1:
            raise DataError(f"line {lineno}: expected one image id, got {line!r}", path=shown)
        ids.append(tokens[0])
    return list(dict.fromkeys(ids))


#: Image suffixes a VOC ``<filename>`` is resolved with when it names no existing file
#: (:func:`find_image`), compared case-insensitively.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def find_image(
    folder: str | os.PathLike,
    filename: str | None,
    stems: Sequence[str] = (),
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> Path | None:
    """The image a VOC ``<filename>`` means inside ``folder``, or None.

    Annotation tools write ``<filename>`` without its extension, with a different one (the
    file was converted after labelling) or with another case (``X.JPG``); the devkit loads
    ``<id>.jpg``. Tried in order: ``folder/filename`` itself, then every file of ``folder``
    whose stem is the stem of ``filename`` or one of ``stems`` (e.g. the XML's own stem) and
    whose suffix is one of ``suffixes`` (case-insensitive; the first suffix in that order
    wins when several exist)."""
    folder = Path(folder)
    if filename:
        direct = folder / filename
        if direct.is_file():
            return direct
    wanted = (
        [
            Path(filename).stem
            if filename and Path(filename).suffix.lower() in suffixes
            else filename
        ]
        if filename
        else []
    )
    wanted += [s for s in stems if s]
    if not folder.is_dir() or not wanted:
        return None
    rank = {s.lower(): i for i, s in enumerate(suffixes)}
    for stem in wanted:
        sub = Path(stem).parent
        base = Path(stem).name
        where = folder / sub
        if not where.is_dir():
            continue
        found = [
            p for p in where.iterdir()
            if p.stem == base and p.suffix.lower() in rank and p.is_file()
        ]  # fmt: skip
        if found:
            return min(found, key=lambda p: (rank[p.suffix.lower()], p.name))
    return None
