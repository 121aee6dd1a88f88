"""The NYU Depth v2 labelled file ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, i.e. HDF5, read
with h5py): depth, colour, class labels and instance masks of 1449 frames.

MATLAB writes arrays column-major, so h5py sees every array with its axes reversed::

    depths, rawDepths: [N, W, H] float32 metres      (MATLAB: H x W x N)
    images:            [N, 3, W, H] uint8             (MATLAB: H x W x 3 x N)
    labels:            [N, W, H] uint16, 0 = unlabelled, else 1-based index into names
    instances:         [N, W, H] uint8, instance number within its label, 0 = none
    names:             [1, C] object references; each to a uint16 [len, 1] char array
    scenes:            [1, N] object references, one per frame, to its scene's name
                       (``kitchen_0028a``), a uint16 char array like ``names``

This reader transposes one frame at a time back to ``[H, W]`` / ``[H, W, 3]``. Boxes are the
tight boxes of the (label, instance) masks.

Independence: the frames of one room are not independent samples. A frame's group
(``Sample.group``) is its room: its ``scenes`` entry with a trailing lower-case letter after
the 4-digit number removed (``kitchen_0028a`` and ``kitchen_0028b``, two recordings of one
room, are both ``kitchen_0028``; :func:`room`). Splits are drawn by room. ``group_by``
overrides the rule on the path ``<scene>/nyu_<iiii>`` (``folder``: the recording, a and b
apart). A file without ``scenes`` makes every frame its own group (counted in the report).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.depth.encodings import Intrinsics
from modalities.formats import has_suffix, head
from modalities.formats.groups import group_of

if TYPE_CHECKING:
    from modalities.depth.adapter import DepthAdapter

# The datasets this adapter reads (``images`` only for the rgbd encoding).
REQUIRED = ("depths", "instances", "labels", "names")
# The 19 furniture classes of Gupta et al. (ECCV 2014) NYUD2 detection, as spelled in the
# labelled file's ``names``.
DEFAULT_CLASSES = [
    "bathtub", "bed", "bookshelf", "box", "chair", "counter", "desk", "door", "dresser",
    "garbage bin", "lamp", "monitor", "night stand", "pillow", "sink", "sofa", "table",
    "television", "toilet",
]  # fmt: skip
# Colour camera intrinsics of the NYU Depth v2 toolbox (camera_params.m); the labelled depth
# maps are registered to the colour camera.
INTRINSICS = Intrinsics(518.8579, 519.4696, 325.5824, 253.7362)


# MATLAB v7.3 files are HDF5 files behind a 512-byte text header; h5py also writes them bare.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def claims(path: Path) -> bool:
    """A ``.mat`` file: MATLAB's text header (``MATLAB 7.3 MAT-file``, ``MATLAB 5.0``, ...;
    only v7.3, i.e. HDF5, is read) or an HDF5 file. Reads 520 bytes; never raises."""
    if not has_suffix(path, (".mat",)):
        return False
    start = head(path, 520)
    return start.startswith((b"MATLAB", _HDF5_MAGIC)) or start[512:520] == _HDF5_MAGIC


def discover(adapter: DepthAdapter) -> list[SampleRef]:
    """One ref per frame of the labelled file ``nyu_file`` (``nyu_<iiii>``, 0-based), split by
    the split lists (which name a frame by that id or by its 1-based index, as NYU's
    ``splits.mat`` does), else by the stable hash of its group (its room,
    :func:`frame_groups`); the file's datasets and frame size are checked from the header
    (``max_pixels``), no frame is read. Classes: ``class_names``, else
    :data:`DEFAULT_CLASSES`."""
    p = adapter.params
    path = adapter.resolve_inside_root(p.nyu_file, adapter.root)
    with open_labelled(path, adapter._nyu_need()) as f:
        file_names = class_names(f, path)
        n, w, h = frame_count_and_size(f, p.nyu_depth_key, path, with_rgb=p.encoding == "rgbd")
        scenes = scene_names(f, path, n)
    adapter.check_declared_size(path, w * h, p.max_pixels, f"{w} x {h} px frames", "max_pixels")
    adapter._class_names = list(p.class_names or DEFAULT_CLASSES)
    ids = [f"nyu_{i:04d}" for i in range(n)]
    groups = frame_groups(adapter, path, ids, scenes)
    # split lists name a frame by its id or its 1-based index (as NYU's splits.mat does)
    aliases = {u: [u, str(i + 1)] for i, u in enumerate(ids) if u in groups}
    split_of = adapter._splits(aliases, groups)
    return [
        SampleRef(
            u,
            split_of[u],
            {"nyu": path},
            {"index": i, "file_names": file_names, "group": groups[u]},
        )
        for i, u in enumerate(ids)
        if u in split_of
    ]


_RECORDING = re.compile(r"^(.*_\d{4})[a-z]$")


def room(scene: str) -> str:
    """The room of an NYU scene name: a trailing lower-case letter after the 4-digit number
    removed (``kitchen_0028a`` -> ``kitchen_0028``: the a and b recordings are one room);
    any other name unchanged."""
    m = _RECORDING.match(scene)
    return m.group(1) if m else scene


def frame_groups(
    adapter: DepthAdapter, path: Path, ids: list[str], scenes: list[str] | None
) -> dict[str, str]:
    """Frame id -> group: the room of its scene (:func:`room`), or ``group_by`` on
    ``<scene>/<id>`` (``<id>`` without ``scenes``); without either, the frame itself
    (counted: ``nyu_frames_without_scene`` in the prepare report). A frame whose path
    ``group_by`` does not match is refused through the log's guard (an error, or skipped
    and absent from the result)."""
    spec = adapter.params.group_by
    if spec is None:
        if scenes is None:  # frames of one room may then land in different splits
            adapter.log.counts["nyu_frames_without_scene"] = len(ids)
            return {u: u for u in ids}
        return {u: room(scene) for u, scene in zip(ids, scenes)}
    out = {}
    for k, u in enumerate(ids):
        relative = u if scenes is None else f"{scenes[k]}/{u}"
        with adapter.log.guard(path, unit="frame"):
            out[u] = group_of(relative, spec, path=str(path))
    return out


def scene_names(f, path: Path, n: int) -> list[str] | None:
    """The scene name of each of the ``n`` frames (``scenes``, a cell array of strings:
    ``[1, N]`` object references as h5py sees them); None when the file has no ``scenes``."""
    if "scenes" not in f:
        return None
    try:
        refs = f["scenes"][()].reshape(-1)
        names = ["".join(chr(c) for c in f[r][()].reshape(-1)) for r in refs]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot decode the 'scenes' cell array: {exc}", path=path) from exc
    if len(names) != n:
        raise DataError(f"'scenes' names {len(names)} frames but the file holds {n}", path=path)
    bad = [i for i, s in enumerate(names) if not s.strip()]
    if bad:
        raise DataError(f"'scenes' is empty for frame(s) {bad[:5]}", path=path)
    return names


def open_labelled(path: Path, need: tuple[str, ...]):
    """Open the ``.mat`` with h5py and check it holds the datasets ``need``; return the open
    file (the caller closes it, e.g. ``with open_labelled(...) as f``)."""
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


def class_names(f, path: Path) -> list[str]:
    """The file's class names (``names``), 1-based label ``l`` -> ``names[l - 1]``."""
    try:
        refs = f["names"][()].reshape(-1)
        return ["".join(chr(c) for c in f[r][()].reshape(-1)) for r in refs]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot decode the 'names' cell array: {exc}", path=path) from exc


def frame_count_and_size(
    f, depth_key: str, path: Path, with_rgb: bool = False
) -> tuple[int, int, int]:
    """``(N, width, height)`` of the depth dataset, from its header (no pixel read); the
    shapes of ``labels``, ``instances`` (and ``images`` when ``with_rgb``) must agree."""
    shape = f[depth_key].shape
    if len(shape) != 3:
        raise DataError(
            f"dataset {depth_key!r} has shape {shape}; expected [N, W, H] (MATLAB H x W x N)",
            path=path,
        )
    n, w, h = (int(s) for s in shape)
    # Every per-pixel dataset read with the depth must match it frame by frame; a mismatch
    # would pair labels with the wrong pixels (or fail half-way through the frames).
    for key in ("labels", "instances"):
        if key in f and tuple(f[key].shape) != tuple(shape):
            raise DataError(
                f"dataset {key!r} has shape {tuple(f[key].shape)} but {depth_key!r} has "
                f"{tuple(shape)}; expected the same [N, W, H]",
                path=path,
            )
    if with_rgb and tuple(f["images"].shape) != (n, 3, w, h):
        raise DataError(
            f"dataset 'images' has shape {tuple(f['images'].shape)}; expected {(n, 3, w, h)} "
            "([N, 3, W, H], MATLAB H x W x 3 x N)",
            path=path,
        )
    return n, w, h


def read_frame(f, index: int, depth_key: str, with_rgb: bool) -> dict[str, np.ndarray]:
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


def targets(
    frame: dict[str, np.ndarray], file_names: list[str], class_names: list[str]
) -> tuple[np.ndarray, np.ndarray, Counter]:
    """Boxes ``[N, 4]`` float32 and labels 1..K of the instances whose class (``file_names``
    of the file) is in ``class_names``, and a count of the objects left out, by class name
    (``label <l>`` for a label beyond the file's ``names``)."""
    index = {c: i + 1 for i, c in enumerate(class_names)}
    boxes, labels, left_out = [], [], Counter()
    for label, box in boxes_from_instances(frame["labels"], frame["instances"]):
        name = file_names[label - 1] if 0 < label <= len(file_names) else f"label {label}"
        if name in index:
            boxes.append(box)
            labels.append(index[name])
        else:
            left_out[name] += 1
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), left_out
