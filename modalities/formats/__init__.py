"""File formats shared by several modalities, and the small header probes format modules use.

* :mod:`modalities.formats.voc` — Pascal VOC XML (read with ``defusedxml``, every number
  validated) and image lists; :mod:`modalities.formats.coco` — MS COCO instances JSON and
  results files. The rgb and depth modalities both read their boxes through these two modules
  (``modalities.rgb.voc`` and ``modalities.rgb.coco`` re-export them), so one XML or JSON file
  is accepted or refused the same way, with the same message, whichever adapter reads it.
* The probes below answer "does this file look like format X" from its name and its first
  bytes only; the ``claims(path)`` function of every format module is built from them. They
  never raise: an unreadable file simply is not claimed.

A modality's formats are listed in its ``modalities/<name>/formats.py`` (``FORMATS``: format
name -> module); ``docs/adding_a_modality.md`` ("Adding a format to a modality") describes the
module shape.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

#: How many bytes :func:`head` reads by default: enough for any header probed here.
HEAD_BYTES = 4096
#: A JSON file up to this size is parsed whole by :func:`json_top_keys`; a larger one is only
#: searched for its keys in the first :data:`JSON_HEAD_BYTES`.
JSON_PARSE_LIMIT = 1 << 20
JSON_HEAD_BYTES = 1 << 16


def has_suffix(path: str | os.PathLike, suffixes: Iterable[str]) -> bool:
    """Whether the file name ends with one of ``suffixes`` (lower case, with the dot; several
    dots allowed, e.g. ``.nii.gz``), compared case-insensitively."""
    name = Path(path).name.lower()
    return any(name.endswith(s) and len(name) > len(s) for s in suffixes)


def head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a regular file; ``b""`` when it is not one or is unreadable."""
    try:
        if not Path(path).is_file():
            return b""
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def json_top_keys(path: str | os.PathLike) -> set[str] | None:
    """The top-level keys of a JSON object file, or None when it is not one.

    A small file (up to :data:`JSON_PARSE_LIMIT`) is parsed whole; for a larger one (a COCO
    train set is hundreds of MB) the keys are the ``"name":`` tokens found in its first
    :data:`JSON_HEAD_BYTES` (a cheap approximation: nested keys count too)."""
    try:
        p = Path(path)
        if not p.is_file():
            return None
        if p.stat().st_size <= JSON_PARSE_LIMIT:
            doc = json.loads(p.read_bytes())
            return set(doc) if isinstance(doc, dict) else None
    except (OSError, ValueError, RecursionError):
        return None
    text = head(path, JSON_HEAD_BYTES).decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if not text.startswith("{"):
        return None
    keys, pos = set(), 0
    while True:
        start = text.find('"', pos)
        end = text.find('"', start + 1) if start >= 0 else -1
        if end < 0:
            return keys
        if text[end + 1 : end + 16].lstrip().startswith(":"):
            keys.add(text[start + 1 : end])
        pos = end + 1


def image_mode(path: str | os.PathLike) -> tuple[str, dict[int, object]] | None:
    """Pillow's mode of an image and its TIFF tags (empty for other formats), from the header
    only (nothing decoded); None when Pillow cannot open the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                tags = dict(getattr(im, "tag_v2", {}) or {})
                return im.mode, tags
    except Exception:  # noqa: BLE001 - a probe: whatever Pillow raises, the file is not claimed
        return None
