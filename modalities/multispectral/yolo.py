"""YOLO txt labels for rasters: one ``.txt`` per raster (``label_pattern``, default
``{stem}.txt`` beside it; ``../labels/{stem}.txt`` for the Ultralytics ``images/`` +
``labels/`` layout), ``class cx cy w h`` normalised by the raster's size (a band stack's: its
reference grid). Lines are read by the project's one YOLO reader
(:mod:`modalities.formats.yolo`); class indices are named by ``yolo_names`` (a ``data.yaml``
or ``classes.txt``) or ``class_names``. A missing txt is a raster without objects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modalities.formats import yolo as yolo_format

SUFFIXES = (".txt",)


def claims(path: Path) -> bool:
    """A ``.txt`` whose first line parses as a YOLO line (``class cx cy w h`` or a segment,
    normalised). Never raises (DOTA files, whose numbers are pixels, are not claimed)."""
    from modalities.formats import has_suffix, head

    if not has_suffix(path, SUFFIXES):
        return False
    lines = head(path).decode("utf-8-sig", "replace").splitlines()
    first = next((line for line in lines[:1] if line.strip()), None)
    try:
        return first is not None and yolo_format.parse_yolo_line(first) is not None
    except Exception:  # noqa: BLE001 - a probe never raises
        return False


def read_yolo(
    path: Path, names: list[str], width: int, height: int
) -> list[tuple[str, None, str, np.ndarray, bool]]:
    """The label entries of one YOLO file (``line <n>``, no image, class name, box in pixels
    of a ``width`` x ``height`` raster, difficult False); a missing file gives none."""
    objects = yolo_format.parse_yolo_txt(path, shown=path)
    classes = yolo_format.names_of(objects, names, path)
    return [
        (
            f"object {n}",
            None,
            cls,
            np.asarray(yolo_format.to_pixels(box, width, height), dtype=np.float64),
            False,
        )
        for n, (cls, (_, box)) in enumerate(zip(classes, objects), 1)
    ]
