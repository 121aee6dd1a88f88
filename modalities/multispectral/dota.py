"""DOTA v1 labels in: one text file per image, oriented quadrilaterals in pixels.

Layout (DOTA v1.0/v1.5 ``labelTxt``): optional header lines ``imagesource:<source>`` and
``gsd:<metres or None>``, then one object per line::

    x1 y1 x2 y2 x3 y3 x4 y4 category difficult

(the four corners clockwise, ``category`` one token such as ``large-vehicle``, ``difficult``
0 or 1; a line without the difficult field counts as 0, as the DOTA devkit reads it). Each
quadrilateral becomes its enclosing axis-aligned box (min/max of the corners).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head

_HEADERS = ("imagesource:", "gsd:")


def _is_object_line(text: str) -> bool:
    toks = text.split()
    if len(toks) not in (9, 10):
        return False
    try:
        pts = [float(v) for v in toks[:8]]
    except ValueError:
        return False
    return all(np.isfinite(pts)) and (len(toks) == 9 or toks[9] in ("0", "1"))


def claims(path: Path) -> bool:
    """A ``.txt`` file whose first line after the optional ``imagesource:``/``gsd:`` headers
    is a DOTA object line (8 numbers, a category, an optional 0/1), or that holds only those
    headers (an image without objects). Never raises."""
    if not has_suffix(path, (".txt",)):
        return False
    lines = head(path).decode("utf-8-sig", "replace").splitlines()
    headers = 0
    for line in lines[:-1] if len(lines) > 1 else lines:  # the last one may be cut short
        text = line.strip()
        if not text:
            continue
        if text.lower().startswith(_HEADERS):
            headers += 1
            continue
        return _is_object_line(text)
    return headers > 0


def read_labels(
    path: Path, class_property: str, image_key: str | None, shared: bool
) -> tuple[None, list[tuple[str, None, str, np.ndarray, bool]]]:
    """The label entries of one DOTA file (:data:`modalities.multispectral.labels.Entry`:
    ``line <n>``, no image, category, enclosing pixel box, difficult); no CRS."""
    rows = read_dota(path)
    return None, [(f"line {n}", None, cls, box, diff) for n, cls, box, diff in rows]


def read_dota(path: Path) -> list[tuple[int, str, np.ndarray, bool]]:
    """``(line number, category, box xyxy px, difficult)`` per object of a DOTA file; a
    malformed line raises a one-line :class:`DataError` naming the file and the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read DOTA labels ({exc})", path=path) from exc
    out = []
    seen_object = False
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if not seen_object and text.lower().startswith(_HEADERS):
            continue
        toks = text.split()
        bad = f"line {n}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 category difficult', got {text[:80]!r}"
        if len(toks) not in (9, 10):
            raise DataError(bad, path=path)
        try:
            pts = np.array([float(v) for v in toks[:8]]).reshape(4, 2)
            difficult = int(toks[9]) if len(toks) == 10 else 0
        except ValueError:
            raise DataError(bad, path=path) from None
        if not np.isfinite(pts).all() or difficult not in (0, 1):
            raise DataError(bad, path=path)
        seen_object = True
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
        out.append((n, toks[8], box, bool(difficult)))
    return out
