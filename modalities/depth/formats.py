"""Readers of the native depth formats: 16-bit PNG, float TIFF, ``.npy``, VOC XML, COCO JSON,
intrinsics files and the NYU Depth v2 labelled ``.mat`` (HDF5).

Every reader raises :class:`DataError` naming the file on anything unusable.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from dsod_core.errors import DataError
from modalities.depth.encodings import Intrinsics

DEPTH_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")
RGB_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Pillow modes holding integer depth (16-bit PNG opens as "I;16"; some writers give "I").
_INT_MODES = ("I;16", "I;16B", "I;16L", "I")

# The datasets of ``nyu_depth_v2_labeled.mat`` this adapter reads (``images`` only for rgbd).
NYU_REQUIRED = ("depths", "instances", "labels", "names")


def read_depth_raw(path: Path, max_pixels: float = 50e6) -> tuple[np.ndarray, str]:
    """Read a depth file's raw values.

    The declared image size is checked against ``max_pixels`` before any pixel is decoded
    (decompression-bomb guard).

    Returns:
        float64 ``[H, W]`` raw values (NaN/0 = no reading) and its natural unit: ``"mm"`` for
        integer images (16-bit PNG/TIFF), ``"m"`` for float data (``.npy``, 32-bit TIFF).
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read .npy depth: {exc}", path=path) from exc
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or not (
            np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
        ):
            raise DataError(
                f"not a depth file: expected a 2-D numeric array, got {arr.dtype} {arr.shape}",
                path=path,
            )
        unit = "m" if np.issubdtype(arr.dtype, np.floating) else "mm"
        return arr.astype(np.float64), unit
    if suffix not in (".png", ".tif", ".tiff"):
        raise DataError(f"unsupported depth file type {suffix!r}", path=path)
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DataError(
                    f"declared size {w}x{h} = {w * h} pixels exceeds max_pixels "
                    f"({int(max_pixels)}); raise the depth adapter's max_pixels to allow it",
                    path=path,
                )
            img.load()
            mode = img.mode
            if mode in _INT_MODES:
                arr, unit = np.asarray(img, dtype=np.float64), "mm"
            elif mode == "F" and suffix != ".png":
                arr, unit = np.asarray(img, dtype=np.float64), "m"
            else:
                raise DataError(
                    f"not a depth file: Pillow mode {mode!r} ({_describe_mode(mode)}); "
                    "expected a single-channel 16-bit integer (mm) or 32-bit float (m) image",
                    path=path,
                )
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"image exceeds Pillow's pixel limit ({exc})", path=path) from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        # Pillow reports a truncated PNG as OSError("image file is truncated ...").
        raise DataError(f"cannot read depth image: {exc}", path=path) from exc
    if arr.ndim != 2:
        raise DataError(f"not a depth file: {arr.ndim}-D pixel array", path=path)
    return arr, unit


def _describe_mode(mode: str) -> str:
    return {
        "L": "8-bit greyscale",
        "P": "8-bit palette",
        "RGB": "8-bit colour",
        "RGBA": "8-bit colour with alpha",
        "LA": "8-bit greyscale with alpha",
        "1": "1-bit",
        "F": "32-bit float (float depth must be TIFF or .npy)",
    }.get(mode, "not single-channel 16-bit")


def read_rgb(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An aligned colour image as uint8 ``[H, W, 3]``; its size must equal the depth's."""
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read colour image: {exc}", path=path) from exc
    if arr.shape[:2] != tuple(shape):
        raise DataError(
            f"colour image is {arr.shape[1]}x{arr.shape[0]} but its depth map is "
            f"{shape[1]}x{shape[0]}; the rgbd encoding needs them aligned",
            path=path,
        )
    return arr


def read_intrinsics(path: Path) -> Intrinsics:
    """Read pinhole intrinsics from a JSON file (``{"fx", "fy", "cx", "cy"}`` or ``{"K": 3x3}``)
    or a text file (9 numbers: the 3x3 K row by row, as SUN RGB-D's ``intrinsics.txt``; or 4
    numbers ``fx fy cx cy``)."""
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
                    "difficult": bool(ann.get("iscrowd", 0)),
                }
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot parse COCO JSON: {exc!r}", path=path) from exc
    return {"categories": cats, "images": list(images.values())}


# --- NYU Depth v2 ----------------------------------------------------------------------------
# ``nyu_depth_v2_labeled.mat`` is a MATLAB v7.3 file, i.e. HDF5. MATLAB writes arrays
# column-major, so h5py sees every array with its axes reversed:
#   depths, rawDepths: [N, W, H] float32 metres      (MATLAB: H x W x N)
#   images:            [N, 3, W, H] uint8             (MATLAB: H x W x 3 x N)
#   labels:            [N, W, H] uint16, 0 = unlabelled, else 1-based index into names
#   instances:         [N, W, H] uint8, instance number within its label, 0 = none
#   names:             [1, C] object references; each to a uint16 [len, 1] char array
# This reader transposes one image at a time back to [H, W] / [H, W, 3].


def nyu_open(path: Path, need: tuple[str, ...]):
    """Open the NYU ``.mat`` with h5py and check it holds ``need``; return the open file."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(
            f"cannot open as MATLAB v7.3/HDF5 (NYU Depth v2 labelled .mat): {exc}", path=path
        ) from exc
    missing = [k for k in need if k not in f]
    if missing:
        found = sorted(f.keys())
        f.close()
        raise DataError(
            f"not an NYU Depth v2 labelled file: missing dataset(s) {missing} (found {found})",
            path=path,
        )
    return f


def nyu_class_names(f, path: Path) -> list[str]:
    """The file's class names (``names``), 1-based label ``l`` -> ``names[l - 1]``."""
    try:
        refs = f["names"][()].reshape(-1)
        return ["".join(chr(c) for c in f[r][()].reshape(-1)) for r in refs]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot decode the 'names' cell array: {exc}", path=path) from exc


def nyu_read_image(f, index: int, depth_key: str, with_rgb: bool) -> dict[str, np.ndarray]:
    """One labelled frame, transposed to image order: depth ``[H, W]`` (m), labels and
    instances ``[H, W]``, rgb ``[H, W, 3]`` uint8 when asked."""
    out = {
        "depth": np.asarray(f[depth_key][index], dtype=np.float64).T,
        "labels": np.asarray(f["labels"][index]).T.astype(np.int64),
        "instances": np.asarray(f["instances"][index]).T.astype(np.int64),
    }
    if with_rgb:
        out["rgb"] = np.ascontiguousarray(np.asarray(f["images"][index]).transpose(2, 1, 0))
    return out


def boxes_from_instances(labels: np.ndarray, instances: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Tight boxes of every (label, instance) mask with label > 0 and instance > 0.

    Returns ``[(label, box)]`` sorted by (label, instance); box = float ``[x1, y1, x2, y2]``
    with ``x1 = min col``, ``x2 = max col + 1`` (continuous pixel coordinates).
    """
    sel = (labels > 0) & (instances > 0)
    if not sel.any():
        return []
    rows, cols = np.nonzero(sel)
    keys = labels[rows, cols] * 65536 + instances[rows, cols]
    uniq, inv = np.unique(keys, return_inverse=True)
    n = len(uniq)
    x1 = np.full(n, np.iinfo(np.int64).max)
    y1 = np.full(n, np.iinfo(np.int64).max)
    x2 = np.full(n, -1)
    y2 = np.full(n, -1)
    np.minimum.at(x1, inv, cols)
    np.minimum.at(y1, inv, rows)
    np.maximum.at(x2, inv, cols)
    np.maximum.at(y2, inv, rows)
    return [
        (int(uniq[i] // 65536), np.array([x1[i], y1[i], x2[i] + 1, y2[i] + 1], dtype=np.float64))
        for i in range(n)
    ]
