"""Segmentation masks as detection labels: one mask image per image, one box per connected
component.

Infrared small-target sets (SIRST and its kin) and many segmentation sets ship a mask per
image instead of boxes: ``masks/<stem><suffix>.png`` beside ``images/<stem>.png``
(``mask_suffix``: SIRST writes ``Misc_1_pixels0.png`` for ``Misc_1.png``). Every connected
component of non-zero pixels (8-connectivity, :func:`scipy.ndimage.label`) becomes one box,
the smallest continuous box covering its pixels (``[col_min, row_min, col_max + 1,
row_max + 1]``); a component of fewer than ``min_pixels`` pixels is dropped (counted).

The class of a component: one class for every non-zero pixel (``single_class``), or the mask
value as the class index (value ``k`` -> class ``k``, 1-based; components are found per value,
so two touching objects of different classes stay two boxes).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from dsod_core.errors import DataError


def read_mask(path: str | os.PathLike, *, shown: str | os.PathLike | None = None) -> np.ndarray:
    """A mask image as an integer ``[H, W]`` array (a colour mask: its first channel; a
    0/255 mask stays 0/255). Raises :class:`DataError` naming ``shown``."""
    from PIL import Image

    shown = path if shown is None else shown
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError("mask file not found", path=shown) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode mask: {exc}", path=shown) from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise DataError(f"mask of {arr.dtype} pixels; expected integer values", path=shown)
    return arr


def mask_boxes(
    mask: np.ndarray, *, single_class: bool, min_pixels: int = 1
) -> tuple[list[list[float]], list[int], int]:
    """Boxes of the connected components of ``mask``.

    Returns ``(boxes, classes, dropped)``: continuous xyxy pixel boxes, the class index of
    each (1 with ``single_class``, else the mask value) and how many components had fewer
    than ``min_pixels`` pixels (dropped)."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity
    values = [1] if single_class else [int(v) for v in np.unique(mask) if v > 0]
    boxes, classes, dropped = [], [], 0
    for value in values:
        binary = mask > 0 if single_class else mask == value
        labelled, count = ndimage.label(binary, structure=structure)
        if not count:
            continue
        sizes = np.bincount(labelled.ravel(), minlength=count + 1)
        for k, sl in enumerate(ndimage.find_objects(labelled), 1):
            if sl is None:
                continue
            if sizes[k] < min_pixels:
                dropped += 1
                continue
            rows, cols = sl
            boxes.append([float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)])
            classes.append(value)
    return boxes, classes, dropped


def mask_path_for(
    image_rel: str | os.PathLike, mask_root: Path, suffix: str, index: dict[str, Path]
) -> Path | None:
    """The mask of an image at ``image_rel`` (relative to the image folder): the file of
    ``index`` (relative path without suffix -> mask file) named ``<rel stem><suffix>``."""
    rel = Path(image_rel)
    key = (rel.parent / f"{rel.stem}{suffix}").as_posix()
    return index.get(key)
