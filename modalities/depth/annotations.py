"""Box annotations of depth frames: VOC XML (one file per frame) and COCO JSON (one file per
dataset), parsed into plain object lists, and the per-frame targets built from them.

Boxes are continuous xyxy pixels throughout. Every parser raises :class:`DataError` naming the
file on anything unusable.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.errors import DataError


def parse_voc(path: Path) -> dict[str, Any]:
    """Parse a VOC XML annotation.

    Returns ``{"filename": str | None, "objects": [{"name", "box", "difficult"}]}``; boxes are
    continuous xyxy pixels: VOC's 1-based inclusive ``xmin..xmax`` becomes ``xmin-1 .. xmax``.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"cannot parse VOC XML: {exc}", path=path) from exc
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            raise DataError("an <object> lacks <name> or <bndbox>", path=path)
        try:
            xmin, ymin, xmax, ymax = (
                float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except (TypeError, ValueError) as exc:
            raise DataError(f"object {name!r} has a bad <bndbox>: {exc}", path=path) from exc
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        objects.append(
            {"name": name, "box": [xmin - 1.0, ymin - 1.0, xmax, ymax], "difficult": difficult}
        )
    filename = root.findtext("filename")
    return {"filename": filename.strip() if filename else None, "objects": objects}


def parse_coco(path: Path) -> dict[str, Any]:
    """Parse a COCO detection JSON: ``{"categories": [(id, name)], "images": [{"id",
    "file_name", "objects": [{"category_id", "box", "difficult"}]}]}`` (boxes xyxy pixels;
    ``iscrowd`` objects are kept as difficult)."""
    try:
        obj = json.loads(path.read_text())
        cats = sorted((int(c["id"]), str(c["name"])) for c in obj["categories"])
        images = {
            int(im["id"]): {"id": int(im["id"]), "file_name": str(im["file_name"]), "objects": []}
            for im in obj["images"]
        }
        for ann in obj.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            images[int(ann["image_id"])]["objects"].append(
                {
                    "category_id": int(ann["category_id"]),
                    "box": [x, y, x + w, y + h],
                    "difficult": False,
                    "crowd": bool(ann.get("iscrowd", 0)),  # ignored in training and eval
                }
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot parse COCO JSON: {exc!r}", path=path) from exc
    return {"categories": cats, "images": list(images.values())}


def keep_known(
    objects: list[dict[str, Any]], class_names: list[str] | None
) -> tuple[list[dict[str, Any]], Counter]:
    """The objects whose ``name`` is in ``class_names`` (all when it is None) and a count of
    the names left out."""
    if class_names is None:
        return list(objects), Counter()
    known = set(class_names)
    kept = [o for o in objects if o["name"] in known]
    return kept, Counter(o["name"] for o in objects if o["name"] not in known)


def left_out_note(counts: Counter) -> str:
    """``left out 3 object(s) of classes not in class_names: 'lamp' x2, 'wall' x1``."""
    names = ", ".join(f"{n!r} x{c}" for n, c in sorted(counts.items()))
    return f"left out {sum(counts.values())} object(s) of classes not in class_names: {names}"


def targets(
    objects: list[dict[str, Any]],
    class_names: list[str],
    w: int,
    h: int,
    path: Path,
    sample: str,
) -> tuple[np.ndarray, np.ndarray, list[bool], list[bool]]:
    """Boxes ``[N, 4]`` float32 clipped to the ``w`` x ``h`` frame, labels 1..K, difficult and
    crowd flags (COCO ``iscrowd``); an object whose box is empty inside the frame raises naming
    ``path``."""
    index = {c: i + 1 for i, c in enumerate(class_names)}
    boxes, labels, difficult, crowd = [], [], [], []
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"object {o['name']!r} box {o['box']} is empty inside the {w}x{h} depth map",
                path=path,
                sample=sample,
            )
        boxes.append([x1, y1, x2, y2])
        labels.append(index[o["name"]])
        difficult.append(bool(o["difficult"]))
        crowd.append(bool(o.get("crowd", False)))
    boxes_arr = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes_arr, np.asarray(labels, np.int64), difficult, crowd
