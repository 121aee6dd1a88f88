"""SUN RGB-D's release folder tree (``SUNRGBD/kv1/NYUdata/NYU0001/``, ``kv2/kinect2data/...``,
``realsense/...``, ``xtion/...``): one frame per scene folder.

A scene folder holds::

    depth/<name>.png              uint16, the toolbox's 3-bit circular shift of millimetres
    image/<name>.jpg              the registered colour image (same size as the depth)
    intrinsics.txt                3x3 K, row by row (fx 0 cx / 0 fy cy / 0 0 1)
    annotation2Dfinal/index.json  2D polygons (the SUN3D / LabelMe-style annotation JSON)
    extrinsics/, fullres/, ...    not read

Depth: the toolbox's ``read3dPoints.m`` decodes ``bitor(bitshift(d, -3), bitshift(d, 16 - 3))``
on uint16, i.e. a rotation right by 3 bits: ``mm = (v >> 3) | (v << 13)`` in 16-bit arithmetic
(:func:`unshift`); 0 stays 0 (no reading).

``index.json`` (as the SUN3D annotator writes it)::

    {"name": ..., "fileList": [...], "img_width": W, "img_height": H,
     "frames": [{"polygon": [{"x": [...], "y": [...], "object": 3}, ...]}],
     "objects": [{"name": "chair"}, null, {}, ...]}

``object`` is a 0-based index into ``objects``; deleted objects are left as ``null`` or ``{}``.
Only ``frames[0]`` is the frame's own image. A polygon's box is the axis-aligned box enclosing
its vertices (continuous pixel coordinates), clipped to the image.

Independence: frames of one recording are not independent samples. A scene folder's group
(``Sample.group``; splits are drawn by group) is its recording (:func:`recording`):

* ``.../sun3ddata/<place>/<sequence>/<frame>`` (SUN3D videos): the place
  ``.../sun3ddata/<place>`` (its scans ``<place>/d507_1``, ``d507_2`` show one room);
* ``.../kinect2data/<nnnnnn>_<date>_<time>_<serial>_rgbf<frame>-resize``: the capture
  session ``.../kinect2data/<date>_<time>_<serial>``;
* any other folder (``kv1/NYUdata/NYU0001``, ``kv1/b3dodata/...``, ``realsense/...``): the
  frame itself. The NYU frames' rooms are not in the tree (``scene.txt`` holds the scene
  *category*, such as ``bedroom``, not the room), so they cannot be grouped from it.

``group_by`` replaces the rule, applied to the scene folder's path under the root
(``folder``: its parent folder).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsod_core.errors import DataError
from modalities.base import SampleRef
from modalities.depth import annotations, intrinsics, nyu, png
from modalities.formats import has_suffix
from modalities.formats.groups import group_of

if TYPE_CHECKING:
    from modalities.base import ModalityAdapter
    from modalities.depth.adapter import DepthAdapter

DEPTH_FOLDER = "depth"
IMAGE_FOLDER = "image"
INTRINSICS_FILE = "intrinsics.txt"
UNNAMED = "(unnamed)"


def claims(path: Path) -> bool:
    """A SUN RGB-D scene folder (``depth/`` beside ``intrinsics.txt``) or a scene's 2D
    annotation ``annotation2Dfinal/index.json``. Never raises."""
    path = Path(path)
    try:
        if path.is_dir():
            return (path / DEPTH_FOLDER).is_dir() and (path / INTRINSICS_FILE).is_file()
        return (
            has_suffix(path, (".json",))
            and path.parent.name == "annotation2Dfinal"
            and (path.parent.parent / INTRINSICS_FILE).is_file()
        )
    except OSError:
        return False


def discover(adapter: DepthAdapter) -> list[SampleRef]:
    """One ref per scene folder under the root (:func:`find_scenes`, found once per adapter),
    as :func:`discover_scenes` makes them; sets the adapter's class names."""
    scenes, unannotated = adapter._sunrgbd_scenes()
    refs, adapter._class_names = discover_scenes(adapter, scenes, unannotated, adapter._splits)
    return refs


def unshift(raw: np.ndarray, path: Path) -> np.ndarray:
    """Undo the 3-bit circular left shift of SUN RGB-D depth PNGs: uint16 ``v`` ->
    ``(v >> 3) | (v << 13)`` (16-bit), as float64 millimetres."""
    if raw.size and (raw.min() < 0 or raw.max() > 0xFFFF or not np.all(raw == np.round(raw))):
        raise DataError(
            "not a SUN RGB-D depth PNG: values are not 16-bit unsigned integers", path=path
        )
    v = raw.astype(np.uint16)
    return ((v >> 3) | (v << 13)).astype(np.float64)


def read_depth(path: Path, max_pixels: float = 50e6) -> tuple[np.ndarray, str]:
    """A SUN RGB-D depth PNG as float64 millimetres ``[H, W]`` (0 = no reading) and ``"mm"``."""
    raw, unit = png.read_depth(path, max_pixels)
    if unit != "mm" or path.suffix.lower() != ".png":
        raise DataError("not a SUN RGB-D depth file: expected a 16-bit integer PNG", path=path)
    return unshift(raw, path), "mm"


def find_scenes(root: Path, annotation: str) -> tuple[list[Path], list[Path]]:
    """Scene folders under ``root`` (sorted): those holding ``depth/``, ``intrinsics.txt`` and
    ``annotation``; and the folders with ``depth/`` and ``intrinsics.txt`` but no annotation.

    The walk follows symbolic links (a dataset split across disks) but visits each real folder
    once, and does not descend into a scene folder.
    """
    scenes, unannotated, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        here = Path(dirpath)
        if DEPTH_FOLDER in dirnames and INTRINSICS_FILE in filenames:
            if (here / annotation).is_file():
                scenes.append(here)
            else:
                unannotated.append(here)
            dirnames[:] = []
            continue
        dirnames.sort()
    return sorted(scenes), sorted(unannotated)


def scene_file(folder: Path, exts: tuple[str, ...], what: str, required: bool) -> Path | None:
    """The one file of ``folder`` with an extension in ``exts``; None (when not ``required``)
    if there is none; a :class:`DataError` if there are several, or none when required."""
    found = (
        sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if folder.is_dir()
        else []
    )
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:4])
        raise DataError(
            f"expected one {what} in the scene, found {len(found)}: {names}", path=folder
        )
    if not found:
        if required:
            raise DataError(f"no {what} ({'/'.join(exts)}) in the scene", path=folder)
        return None
    return found[0]


def _number_list(v: Any) -> list[float] | None:
    if not isinstance(v, list) or not v:
        return None
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            return None
        out.append(float(x))
    return out


def parse_index(path: Path) -> list[dict[str, Any]]:
    """Parse ``annotation2Dfinal/index.json`` into ``[{"name": str | None, "box": [x1, y1, x2,
    y2]}]``, one per polygon of ``frames[0]``, unclipped; ``name`` is None for a polygon whose
    object entry is ``null``, ``{}`` or has an empty name. Raises :class:`DataError` naming
    the file on anything else unusable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot parse SUN RGB-D annotation JSON: {exc}", path=path) from exc
    if not isinstance(obj, dict):
        raise DataError("SUN RGB-D annotation JSON is not an object", path=path)
    frames, objects = obj.get("frames"), obj.get("objects", [])
    if not isinstance(frames, list):
        raise DataError("SUN RGB-D annotation JSON has no 'frames' list", path=path)
    if not isinstance(objects, list):
        raise DataError("SUN RGB-D annotation JSON: 'objects' is not a list", path=path)
    frame = frames[0] if frames else None
    if frame is None:
        return []
    if not isinstance(frame, dict):
        raise DataError("SUN RGB-D annotation JSON: frames[0] is not an object", path=path)
    polygons = frame.get("polygon", [])
    if not isinstance(polygons, list):
        raise DataError("SUN RGB-D annotation JSON: frames[0].polygon is not a list", path=path)
    out = []
    for i, poly in enumerate(polygons):
        where = f"frames[0].polygon[{i}]"
        if not isinstance(poly, dict):
            raise DataError(f"{where} is not an object", path=path)
        xs, ys = _number_list(poly.get("x")), _number_list(poly.get("y"))
        if xs is None or ys is None or len(xs) != len(ys):
            raise DataError(
                f"{where} needs equal-length non-empty lists of finite numbers 'x' and 'y'",
                path=path,
            )
        k = poly.get("object")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(objects):
            raise DataError(
                f"{where} names object {k!r}, not an index into 'objects' ({len(objects)} entries)",
                path=path,
            )
        entry = objects[k]
        name = entry.get("name") if isinstance(entry, dict) else None
        name = name.strip() if isinstance(name, str) and name.strip() else None
        out.append({"name": name, "box": [min(xs), min(ys), max(xs), max(ys)]})
    return out


def normalise(name: str) -> str:
    """SUN RGB-D's free-text object names compared case- and spacing-insensitively:
    lower case, ``_`` as a space, runs of white space as one space."""
    return " ".join(name.replace("_", " ").lower().split())


def select(
    polygons: list[dict[str, Any]],
    class_names: list[str],
    name_map: Mapping[str, str],
    w: int,
    h: int,
) -> tuple[list[dict[str, Any]], Counter, int]:
    """The polygons whose (normalised, then mapped) name is a class of ``class_names``, as
    objects ``{"name": <class name>, "box": clipped box, "difficult": False}``; a count of the
    names left out (``(unnamed)`` for nameless objects); and how many kept polygons were
    dropped because their box is empty inside the ``w`` x ``h`` image."""
    classes = {normalise(c): c for c in class_names}
    mapping = {normalise(k): normalise(v) for k, v in name_map.items()}
    kept, left_out, empty = [], Counter(), 0
    for poly in polygons:
        key = normalise(poly["name"]) if poly["name"] else None
        key = mapping.get(key, key) if key else None
        if key not in classes:
            left_out[key or UNNAMED] += 1
            continue
        x1, y1, x2, y2 = poly["box"]
        x1, y1 = max(x1, 0.0), max(y1, 0.0)
        x2, y2 = min(x2, float(w)), min(y2, float(h))
        if x2 <= x1 or y2 <= y1:
            empty += 1
            continue
        kept.append({"name": classes[key], "box": [x1, y1, x2, y2], "difficult": False})
    return kept, left_out, empty


_KINECT2 = re.compile(r"^\d+_(.+)_rgbf\d+(?:-resize)?$")


def recording(ref_id: str) -> str:
    """The default group of a scene folder at ``ref_id`` (its path under the root): the SUN3D
    sequence, the Kinect v2 capture session, else the folder itself (module docs)."""
    parts = ref_id.split("/")
    if "sun3ddata" in parts[:-1]:
        k = parts.index("sun3ddata")
        # sun3ddata/<place>/<sequence>/...: every scan of a place (d507_1, d507_2) shows the
        # same room, so the place is the unit (as NYU's a/b recordings of one room are)
        if len(parts) >= k + 3:
            return "/".join(parts[: k + 2])
    m = _KINECT2.match(parts[-1])
    if m and len(parts) >= 2 and parts[-2] == "kinect2data":
        return "/".join([*parts[:-1], m.group(1)])
    return ref_id


def scene_groups(adapter: ModalityAdapter, scenes: Mapping[str, Path]) -> dict[str, str]:
    """Scene id -> group: :func:`recording`, or the ``group_by`` param on the id; a folder
    whose path ``group_by`` does not match is refused through the log's guard (an error, or
    skipped and absent from the result)."""
    spec = getattr(adapter.params, "group_by", None)
    if spec is None:
        return {ref_id: recording(ref_id) for ref_id in scenes}
    out = {}
    for ref_id, scene in scenes.items():
        with adapter.log.guard(scene, unit="scene"):
            out[ref_id] = group_of(ref_id, spec, path=str(scene))
    return out


def _check_found(adapter: ModalityAdapter, scenes: list[Path], unannotated: list[Path]) -> None:
    """No scene folder is an error; folders without the annotation are one warning."""
    p, root = adapter.params, adapter.root
    if not scenes:
        raise DataError(
            f"no SUN RGB-D scene folder (depth/, {INTRINSICS_FILE} and "
            f"{p.sunrgbd_annotation}) under the root",
            path=root,
        )
    if unannotated:
        first = ", ".join(d.relative_to(root).as_posix() for d in unannotated[:3])
        adapter.log.warn(
            f"left out {len(unannotated)} folder(s) with depth/ and "
            f"{INTRINSICS_FILE} but no {p.sunrgbd_annotation}: {first}"
            + (", ..." if len(unannotated) > 3 else ""),
            root,
        )


def discover_scenes(
    adapter: ModalityAdapter,
    scenes: list[Path],
    unannotated: list[Path],
    splits: Callable[..., dict[str, str]],
) -> tuple[list[SampleRef], list[str]]:
    """The refs of ``scenes`` (from :func:`find_scenes`) and the class names (``class_names``,
    else NYU's). A ref's id is its folder's path under ``adapter.root`` (posix), its group
    that of :func:`scene_groups` (``meta["group"]``); its split is
    ``splits({ref_id: aliases}, groups)[ref_id]`` (split lists naming the folder path or its
    name, else the hash of the group; a folder the lists leave out has no split and no ref).
    Per scene (under ``adapter.log.guard``): the annotation parses, the depth PNG (and, for
    ``rgbd``, the colour image) declares at most ``max_pixels``, the intrinsics parse;
    objects are the polygons of the classes (:func:`select`)."""
    p, root, log = adapter.params, adapter.root, adapter.log
    _check_found(adapter, scenes, unannotated)
    classes = list(p.class_names or nyu.DEFAULT_CLASSES)
    ids = {scene.relative_to(root).as_posix(): scene for scene in scenes}
    groups = scene_groups(adapter, ids)
    split_of = splits({i: [i, i.rsplit("/", 1)[-1]] for i in ids if i in groups}, groups)
    refs = []
    for ref_id, scene in ids.items():
        split = split_of.get(ref_id)
        if split is None:
            continue
        ann = adapter.resolve_inside_root(scene / p.sunrgbd_annotation, scene)
        with log.guard(ann, unit="scene"):
            ref = _scene_ref(adapter, scene, ref_id, split, ann, classes)
            ref.meta["group"] = groups[ref_id]
            refs.append(ref)
    return refs, classes


def _scene_ref(
    adapter: ModalityAdapter, scene: Path, ref_id: str, split: str, ann: Path, classes: list[str]
) -> SampleRef:
    """One scene's ref: the annotation parsed, the depth PNG (and, for ``rgbd``, the colour
    image) checked against ``max_pixels``, the intrinsics parsed, the objects of ``classes``
    selected; what is left out is one warning each."""
    p, log = adapter.params, adapter.log
    polygons = parse_index(ann)
    depth = scene_file(scene / DEPTH_FOLDER, (".png",), "depth PNG", required=True)
    w, h = png.declared_size(depth, p.max_pixels)
    adapter.check_declared_size(depth, w * h, p.max_pixels, f"{w} x {h} px", "max_pixels")
    paths = {"depth": depth, "annotation": ann}
    rgb = scene_file(scene / IMAGE_FOLDER, png.RGB_EXTENSIONS, "colour image", False)
    if rgb is not None:
        paths["rgb"] = rgb
        if p.encoding == "rgbd":
            rw, rh = png.declared_size(rgb, p.max_pixels)
            adapter.check_declared_size(rgb, rw * rh, p.max_pixels, f"{rw} x {rh} px", "max_pixels")
    paths["intrinsics"] = scene / INTRINSICS_FILE
    intrinsics.read_intrinsics(paths["intrinsics"])
    objects, left_out, empty = select(polygons, classes, p.sunrgbd_name_map, w, h)
    if left_out:
        log.warn(annotations.left_out_note(left_out), ann, ref_id)
    if empty:
        log.warn(
            f"left out {empty} polygon(s) whose box is empty inside the {w}x{h} image",
            ann,
            ref_id,
        )
    codec = "sunrgbd" if p.sunrgbd_unshift else None
    return SampleRef(ref_id, split, paths, {"objects": objects, "depth_codec": codec})
