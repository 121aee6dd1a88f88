"""YOLO txt labels (the Ultralytics layout): one ``.txt`` per image, one object per line.

Layout: ``images/<split>/x.jpg`` <-> ``labels/<split>/x.txt`` (the label path is the image path
with its last ``images`` folder replaced by ``labels`` and the suffix by ``.txt``), or flat
``images/`` + ``labels/``. A line is ``class cx cy w h`` with the centre and size normalised
by the image width/height (in ``[0, 1]``), or a segment ``class x1 y1 x2 y2 x3 y3 ...`` (at
least 3 points), read as the bounding box of its points. A missing or empty txt is an image
without objects (a background image).

Class names come from the dataset's ``data.yaml`` (``names``: a list, or a mapping index ->
name) or a ``classes.txt`` (one name a line, as labelImg writes it), or the caller's list
(:func:`read_yolo_names`).

Errors: a malformed line raises :class:`DataError` ``"<file>:<line>: <reason>"`` (wrong
number of values, not a number, a class index that is not a non-negative integer, a value
outside ``[0, 1]`` beyond :data:`TOLERANCE`, a box of zero or negative size).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from dsod_core.errors import DataError

#: How far outside ``[0, 1]`` a normalised value may lie before it is refused (exporters
#: write ``1.0000001``); it is clipped to ``[0, 1]``.
TOLERANCE = 1e-3


def label_path_for(image_rel: str | os.PathLike, label_root: Path) -> Path:
    """The txt of an image at ``image_rel`` (relative to the image folder): the same relative
    path under ``label_root`` with the suffix ``.txt``."""
    return label_root / Path(image_rel).with_suffix(".txt")


def default_label_dir(image_dir: str) -> str:
    """The Ultralytics mirror of an image folder: its last ``images`` component replaced by
    ``labels`` (``images`` -> ``labels``, ``data/images/train`` -> ``data/labels/train``);
    ``labels`` when it has none."""
    parts = list(Path(image_dir).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return str(Path(*parts))
    return "labels"


def read_yolo_names(
    path: str | os.PathLike, *, shown: str | os.PathLike | None = None
) -> list[str]:
    """Class names (index order) from a ``data.yaml`` (``names`` list or ``{index: name}``
    mapping with indices ``0..K-1``) or a ``classes.txt`` (one name a line). Raises
    :class:`DataError` naming ``shown``."""
    shown = path if shown is None else shown
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("class names file not found", path=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"class names file unreadable: {exc}", path=shown) from None
    if p.suffix.lower() not in (".yaml", ".yml"):
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DataError("class names file is empty", path=shown)
        return names
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataError(f"malformed YAML: {' '.join(str(exc).split())}", path=shown) from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: (not isinstance(k, int), k))
        if keys != list(range(len(names))):
            raise DataError(f"'names' keys must be 0..{len(names) - 1}, got {keys}", path=shown)
        names = [names[k] for k in keys]
    if not (isinstance(names, list) and names and all(isinstance(n, str | int) for n in names)):
        raise DataError("no 'names' list or mapping of class names", path=shown)
    return [str(n) for n in names]


def _value(token: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{token!r} is not a number")
    return value


def _normalised(values: list[float]) -> list[float]:
    for v in values:
        if v < -TOLERANCE or v > 1 + TOLERANCE:
            raise DataError(
                f"value {v:g} is outside [0, 1]; YOLO coordinates are normalised by the image size"
            )
    return [min(max(v, 0.0), 1.0) for v in values]


def parse_yolo_line(line: str) -> tuple[int, list[float]] | None:
    """One line -> ``(class index, [x1, y1, x2, y2] normalised)``; None for a blank line.
    Raises :class:`DataError` with the reason only (the caller names file and line)."""
    tokens = line.split()
    if not tokens:
        return None
    n = len(tokens) - 1
    if n != 4 and (n < 6 or n % 2):
        raise DataError(
            f"expected 'class cx cy w h' or a segment 'class x1 y1 x2 y2 x3 y3 ...', "
            f"got {len(tokens)} values"
        )
    try:
        cls = _value(tokens[0])
    except DataError:
        cls = -1.0
    if cls < 0 or not cls.is_integer():
        raise DataError(f"class {tokens[0]!r} is not an integer >= 0")
    values = _normalised([_value(t) for t in tokens[1:]])
    if n == 4:
        cx, cy, w, h = values
        if w <= 0 or h <= 0:
            raise DataError(f"box of size {w:g} x {h:g}")
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        box = [min(max(v, 0.0), 1.0) for v in box]
    else:
        xs, ys = values[0::2], values[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
        if box[2] <= box[0] or box[3] <= box[1]:
            raise DataError("segment of zero width or height")
    return int(cls), box


def parse_yolo_txt(
    path: str | os.PathLike, *, shown: str | os.PathLike | None = None
) -> list[tuple[int, list[float]]]:
    """Every object of one label file: ``(class index, [x1, y1, x2, y2])`` normalised to
    ``[0, 1]`` (multiply by width/height for pixels). A missing file is an empty list (a
    background image); a malformed line raises :class:`DataError` ``"<shown>:<line>: ..."``."""
    shown = path if shown is None else shown
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"label file unreadable: {exc}", path=shown) from None
    objects = []
    for lineno, line in enumerate(text.splitlines(), 1):
        try:
            parsed = parse_yolo_line(line)
        except DataError as exc:
            raise DataError(exc.reason, path=f"{shown}:{lineno}") from None
        if parsed is not None:
            objects.append(parsed)
    return objects


def to_pixels(box: list[float], width: int, height: int) -> list[float]:
    """A normalised ``[x1, y1, x2, y2]`` in continuous pixels of a ``width x height`` image."""
    return [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def names_of(objects: list[tuple[int, list[float]]], names: list[str], shown: Any) -> list[str]:
    """The class name of every object; an index with no name raises :class:`DataError`."""
    out = []
    for cls, _ in objects:
        if cls >= len(names):
            raise DataError(
                f"class index {cls} has no name ({len(names)} class names: {names})", path=shown
            )
        out.append(names[cls])
    return out
