"""Pinhole camera intrinsics files: JSON (``{"fx", "fy", "cx", "cy"}`` or ``{"K": 3x3}``) and
text (the 3x3 K row by row, as SUN RGB-D's ``intrinsics.txt``, or ``fx fy cx cy``).

A file is found per image (``<intrinsics_dir>/<id>.{json,txt}``) or once for the dataset
(``intrinsics.{json,txt}`` at the root); the params ``fx, fy, cx, cy`` override both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.depth.encodings import Intrinsics

EXTENSIONS = (".json", ".txt")


def read_intrinsics(path: Path) -> Intrinsics:
    """Read pinhole intrinsics (pixels, OpenCV pixel-centre convention) from ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read intrinsics: {exc}", path=path) from exc
    try:
        if path.suffix.lower() == ".json":
            obj = json.loads(text)
            if isinstance(obj, dict) and "K" in obj:
                kmat = np.asarray(obj["K"], dtype=np.float64).reshape(3, 3)
                vals = [kmat[0, 0], kmat[1, 1], kmat[0, 2], kmat[1, 2]]
            else:
                vals = [float(obj[key]) for key in ("fx", "fy", "cx", "cy")]
        else:
            nums = np.array(text.split(), dtype=np.float64)
            if nums.size == 9:
                kmat = nums.reshape(3, 3)
                vals = [kmat[0, 0], kmat[1, 1], kmat[0, 2], kmat[1, 2]]
            elif nums.size == 4:
                vals = nums.tolist()
            else:
                raise ValueError(f"expected 9 (3x3 K) or 4 (fx fy cx cy) numbers, got {nums.size}")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"bad intrinsics: {exc}", path=path) from exc
    if not all(np.isfinite(vals)) or vals[0] <= 0 or vals[1] <= 0:
        raise DataError(f"bad intrinsics {vals}: need finite values and fx, fy > 0", path=path)
    return Intrinsics(*(float(v) for v in vals))
