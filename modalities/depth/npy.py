"""Depth maps stored as NumPy ``.npy`` arrays: 2-D (or ``[1, H, W]``) float metres or integer
millimetres; NaN, inf and 0 mean no reading.

:func:`declared_size` reads the array header only (a memory map, no data), so the adapter
checks ``max_pixels`` in ``discover()``; :func:`read_depth` loads the whole array (a file
shorter than its header declares raises). Pickled object arrays are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsod_core.errors import DataError
from modalities.formats import has_suffix, head

EXTENSIONS = (".npy",)


def claims(path: Path) -> bool:
    """A ``.npy`` file starting with NumPy's magic string. Never raises."""
    return has_suffix(path, EXTENSIONS) and head(path, 6) == b"\x93NUMPY"


def _shape_2d(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2 or not (
        np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)
    ):
        raise DataError(
            f"not a depth file: expected a 2-D numeric array, got {dtype} {tuple(shape)}",
            path=path,
        )
    return int(shape[0]), int(shape[1])


def declared_size(path: Path, max_pixels: float = 50e6) -> tuple[int, int]:
    """``(width, height)`` from the ``.npy`` header, without reading the data."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npy header: {exc}", path=path) from exc
    h, w = _shape_2d(path, arr.shape, arr.dtype)
    del arr
    return w, h


def read_depth(path: Path, max_pixels: float = 50e6) -> tuple[np.ndarray, str]:
    """Raw values as float64 ``[H, W]`` and their natural unit (``"m"`` for float arrays,
    ``"mm"`` for integer ones)."""
    w, h = declared_size(path)
    if w * h > max_pixels:
        raise DataError(
            f"declared size {w}x{h} = {w * h} pixels exceeds max_pixels "
            f"({int(max_pixels)}); raise the depth adapter's max_pixels to allow it",
            path=path,
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npy depth: {exc}", path=path) from exc
    _shape_2d(path, arr.shape, arr.dtype)
    if arr.ndim == 3:
        arr = arr[0]
    unit = "m" if np.issubdtype(arr.dtype, np.floating) else "mm"
    return arr.astype(np.float64), unit
