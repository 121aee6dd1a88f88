"""Box annotations of depth frames: the objects kept from a parsed file and the per-frame
targets built from them.

VOC XML and COCO JSON are parsed by the project's one parser of each format
(:mod:`modalities.formats.voc`, :mod:`modalities.formats.coco`; the depth formats that use
them are :mod:`.voc` and :mod:`.coco`), so a file is refused by the depth adapter exactly as by
the rgb adapter. Boxes are continuous xyxy pixels throughout. Every function raises
:class:`DataError` naming the file on anything unusable.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.errors import DataError
from modalities.formats.voc import parse_voc_xml


def parse_voc(path: Path) -> dict[str, Any]:
    """Parse a VOC XML annotation with the shared parser
    (:func:`modalities.formats.voc.parse_voc_xml`): ``{"filename", "size", "objects":
    [{"name", "box", "difficult", "truncated", "occluded"}]}``, boxes continuous xyxy pixels
    (VOC's 1-based inclusive ``xmin..xmax`` becomes ``xmin-1 .. xmax``)."""
    return parse_voc_xml(path)


def keep_difficult(params: Any) -> bool:
    """The shared ``keep_difficult`` param of the depth params (True when they have none:
    difficult objects are kept, flagged difficult, and ignored by the evaluation)."""
    return bool(getattr(params, "keep_difficult", True))


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
