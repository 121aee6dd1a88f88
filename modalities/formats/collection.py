"""The shared labelled-image layer: a folder of images with their labels in the formats
datasets ship (Pascal VOC XML, COCO JSON, YOLO txt, segmentation masks), read with the same
quirk handling and the same report lines by every 2D modality (rgb, depth, thermal,
pixel-grid multispectral rasters).

API
---
* :class:`CollectionParams` — the params mixin (a frozen :class:`AdapterParams` dataclass);
  a modality's params derive from it (``class ThermalParams(CollectionParams): ...``, fields
  with defaults only) and call :meth:`CollectionParams.check_collection` from their own
  ``check`` when they override it.
* :func:`discover_collection` ``(adapter, params, *, image_suffixes, image_size=None,
  counts=None) -> (list[LabeledImage], class_names)`` — lists the images under
  ``root/image_dir`` (recursive), their labels, splits and the class names (labels 1..K in
  this order). Uses ``adapter.root``, ``adapter.log`` (``guard`` per image, ``warn`` for the
  quirks: one summary warning per kind, with its count) and ``adapter.resolve_inside_root``.
  ``image_size(path) -> (w, h)`` reads an image's size from its header (YOLO and masks need
  it; Pillow's header by default); ``counts`` (a dict) receives every quirk count, as does
  ``adapter.log.counts`` when the log has such a dict.
* :class:`LabeledImage` — one image: id, paths, split, class name / box / difficult / crowd
  per object, the declared size, whether it is a background image (no boxes).
* :func:`label_index` — class names -> labels 1..K; :func:`size_mismatch` — the read-time
  check of a declared size against the decoded image (a warning; the image wins);
  :func:`ref_meta` — the ``SampleRef.meta`` an adapter builds from a :class:`LabeledImage`.

Layouts (``labels``)
--------------------
* ``voc``: XML files under ``label_dir`` (default ``annotations``, ``Annotations`` when that
  exists), matched to images by ``<filename>`` resolved by stem (an extension missing, wrong
  or of another case is fine), else by the XML's stem; an ``<object>`` without ``<bndbox>`` is
  no object (counted); an image with no XML is a background image (counted).
* ``coco``: ``coco_json`` maps a split (or ``all``) to an instances JSON; ``file_name`` is
  relative to ``image_dir`` (or root; else matched by stem); categories are matched by
  **name** (ids may differ between files); ``crowd`` (``auto``/``ignore``/``objects``),
  ``unmatched`` (annotations of an image id the file does not list), zero-size boxes
  (dropped, counted).
* ``yolo``: ``label_dir`` (default: ``image_dir`` with its last ``images`` folder renamed
  ``labels``) mirrors the image tree with one ``.txt`` per image (:mod:`.yolo`); names from
  ``names_file``, else ``data.yaml``/``dataset.yaml``/``classes.txt`` at root or in the label
  folder, else ``class_names``. A missing or empty txt is a background image.
* ``masks``: one mask per image in ``label_dir`` (default ``masks``) named
  ``<stem><mask_suffix>.<any image suffix>`` (:mod:`.masks`): connected components -> boxes.
* ``none``: every image, no boxes (background images; for unlabelled sets).

Classes: ``class_map`` renames names found in the files (an empty or null value drops the
class, counted); ``class_names`` lists the classes kept, in label order (default: the
format's own order: COCO categories by id, YOLO names, VOC names sorted); a name not in it is
an error or skipped (``unknown_class``). ``keep_background`` keeps that fraction of the
background images (stable hash).

Splits, in this order: ``split_files`` (:mod:`.splits`; units in no list: ``unlisted``), a
per-split ``coco_json`` key, the image's first folder under ``image_dir`` when it is
``train``/``val``/``valid``/``validation``/``test`` (Ultralytics ``images/train``), else the
hash of the image id with ``val_fraction``/``test_fraction``/``seed``.

Independent units (``group_by``, :mod:`.unit_groups`): an image's group (a video sequence, a
scene) is read from its path under root (``"folder"``, ``"folder:N"`` or a regex); the hash
is then drawn on the group, so one group never straddles train/val/test; split lists and
split folders stay authoritative (the prepare stage refuses a group they put in two splits).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dsod_core.errors import DataError
from modalities.base import AdapterParams, assign_split, param, split_hash
from modalities.formats import coco as coco_format
from modalities.formats import masks as mask_format
from modalities.formats import splits as split_format
from modalities.formats import unit_groups
from modalities.formats import voc as voc_format
from modalities.formats import yolo as yolo_format
from modalities.formats.groups import GROUP_BY_DOC, check_group_by

#: First folder names under ``image_dir`` read as the split (Ultralytics ``images/train``).
FOLDER_SPLITS = {
    "train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"
}  # fmt: skip
#: How many ids or names a summary warning quotes.
QUOTE = 5


@dataclass(frozen=True)
class CollectionParams(AdapterParams):
    """The params of a folder of labelled images (see the module doc)."""

    labels: Literal["voc", "coco", "yolo", "masks", "none"] = param(
        "voc", "label format of the collection layout"
    )
    image_dir: str = param("images", "folder of the images relative to root (searched recursively)")
    label_dir: str | None = param(
        None,
        "folder of the labels relative to root; null: annotations (voc), the image folder with "
        "images -> labels (yolo), masks (masks)",
    )
    coco_json: dict[str, str] = param(
        default_factory=dict,
        doc="coco: split (train/val/test, or 'all') -> instances JSON relative to root",
    )
    names_file: str | None = param(
        None, "yolo: data.yaml or classes.txt naming the class indices (null: looked for)"
    )
    split_files: dict[str, str] = param(
        default_factory=dict,
        doc="split -> text file relative to root listing its images (names, stems or paths)",
    )
    unlisted: Literal["drop", "hash"] = param(
        "drop", "with split_files: an image in no list is dropped, or split by the hash"
    )
    val_fraction: float = param(0.0, "fraction of hash-split images sent to val", min=0, max=1)
    test_fraction: float = param(0.0, "fraction of hash-split images sent to test", min=0, max=1)
    seed: int = param(0, "seed of the split and background hashes")
    group_by: str | None = param(None, GROUP_BY_DOC)
    class_names: list[str] | None = param(
        None, "names of labels 1..K; null: the classes found, in the format's order"
    )
    class_map: dict[str, str | None] = param(
        default_factory=dict,
        doc="class name in the files -> class name; '' or null drops that class",
    )
    unknown_class: Literal["error", "skip"] = param(
        "error", "an object whose class is not in class_names is an error, or skipped"
    )
    keep_difficult: bool = param(True, "keep VOC difficult objects (flagged difficult)")
    crowd: Literal["auto", "ignore", "objects"] = param(
        "auto",
        "coco iscrowd boxes: ignore regions, objects, or auto (objects when every box of a "
        "file is crowd)",
    )
    unmatched: Literal["skip", "error"] = param(
        "skip", "coco annotations of an image id the file does not list: skipped or an error"
    )
    keep_background: float = param(
        1.0, "fraction of the images without boxes kept (stable hash)", min=0, max=1
    )
    mask_suffix: str = param("", "masks: the mask of <stem>.png is <stem><mask_suffix>.<ext>")
    mask_min_pixels: int = param(1, "masks: components with fewer pixels are dropped", min=1)
    mask_class: str | None = param(
        None, "masks: one class for every non-zero pixel; null: mask value k is class k"
    )

    def check(self) -> None:
        self.check_collection()

    def check_collection(self) -> None:
        """The rules spanning the collection fields (call it from an overriding ``check``)."""
        if self.class_names is not None:
            if not self.class_names or not all(self.class_names):
                self.fail("class_names", "must be null or a non-empty list of non-empty names")
            if len(set(self.class_names)) != len(self.class_names):
                self.fail("class_names", f"names must be unique, got {self.class_names}")
        if self.val_fraction + self.test_fraction >= 1:
            self.fail("val_fraction", "val_fraction + test_fraction must be < 1")
        if why := check_group_by(self.group_by):
            self.fail("group_by", why)
        bad = sorted(set(self.split_files) - set(split_format.SPLITS))
        if bad:
            self.fail("split_files", f"keys must be train, val or test, got {bad}")
        bad = sorted(set(self.coco_json) - {*split_format.SPLITS, "all"})
        if bad or ("all" in self.coco_json and len(self.coco_json) > 1):
            self.fail("coco_json", "keys must be train/val/test, or the single key 'all'")
        if self.labels == "coco" and not self.coco_json:
            self.fail("coco_json", "labels: coco needs at least one instances JSON")
        if self.labels == "masks" and self.mask_class is None and self.class_names is None:
            self.fail("mask_class", "masks need mask_class (one class) or class_names (value k)")
        if not self.image_dir:
            self.fail("image_dir", "must be a folder relative to root ('.' for root itself)")


@dataclass
class LabeledImage:
    """One image of a collection and its labels (boxes: continuous 0-based xyxy pixels,
    ``x2``/``y2`` exclusive; one entry of ``names``/``difficult``/``crowd`` per box)."""

    image_id: str
    image: Path
    annotation: Path | None
    split: str
    names: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None
    background: bool = False
    group: str | None = None  # the independence unit (group_by); None: the image itself


def label_index(names: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """The 1-based label of every name (``class_names`` order)."""
    index = {n: i + 1 for i, n in enumerate(class_names)}
    return [index[n] for n in names]


def ref_meta(item: LabeledImage, class_names: Sequence[str], file_name: str | None = None):
    """The ``SampleRef.meta`` of an image: boxes, labels, difficult, crowd, declared_size,
    file_name, image_id, background, group (the adapter's ``Sample.group``)."""
    return {
        "image_id": item.image_id,
        "file_name": file_name or item.image.name,
        "declared_size": None if item.declared_size is None else list(item.declared_size),
        "boxes": [list(b) for b in item.boxes],
        "labels": label_index(item.names, class_names),
        "difficult": list(item.difficult),
        "crowd": list(item.crowd),
        "background": item.background,
        "group": item.group,
    }


#: How far (pixels) a box may extend beyond its image before it is an error; it is clipped.
#: Annotation tools and rounding produce such boxes (VOC ``xmin = 0``, COCO boxes ending at
#: ``width + 0.5``).
BOX_TOLERANCE_PX = 1.0


def clip_boxes(
    boxes: Any, w: int, h: int, shown: Any, sample: str, noun: str = "image"
) -> np.ndarray:
    """Boxes (continuous xyxy pixels) checked against a decoded ``w`` x ``h`` image and
    clipped to it. A box further than :data:`BOX_TOLERANCE_PX` outside it, or empty once
    clipped, is a :class:`DataError` naming ``shown`` (the label file) and ``sample``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tol = BOX_TOLERANCE_PX
    outside = (
        (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol)
        | (boxes[:, 2] > w + tol) | (boxes[:, 3] > h + tol)
    )  # fmt: skip
    if outside.any():
        bad = boxes[np.argmax(outside)]
        raise DataError(
            f"box {np.round(bad, 2).tolist()} (continuous xyxy) lies outside the {w}x{h} "
            f"{noun} beyond the {tol:g}-px tolerance",
            path=shown,
            sample=sample,
        )
    boxes = np.clip(boxes, 0, [w, h, w, h])
    if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
        raise DataError(
            f"a box is empty once clipped to the {w}x{h} {noun}", path=shown, sample=sample
        )
    return boxes


def size_mismatch(
    log: Any, declared: Sequence[int] | None, actual: Sequence[int], path: Any, sample: str
) -> bool:
    """Warn (``log.warn``) when the size a label file declares (``(w, h)``) is not the decoded
    image's; returns whether they differ. The image's size is used: boxes are then checked
    against the real image by the caller."""
    if declared is None or list(declared) == list(actual):
        return False
    log.warn(
        f"declares image size {declared[0]}x{declared[1]} but the image is "
        f"{actual[0]}x{actual[1]}; the image's size is used",
        path,
        sample,
    )
    return True


def pillow_size(path: Path) -> tuple[int, int]:
    """An image's ``(width, height)`` from its header (Pillow); DataError when unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.size
    except FileNotFoundError:
        raise DataError("image file not found", path=path) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image header: {exc}", path=path) from None


# --- the run ---------------------------------------------------------------------------------
@dataclass
class _Raw:
    """One image before classes and splits: objects as (name in file, box, difficult, crowd)."""

    image_id: str
    image: Path
    rel: str  # posix path relative to image_dir, with suffix
    annotation: Path | None
    objects: list[tuple[str, list[float], bool, bool]] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None
    split: str | None = None


class CollectionRun:
    """State of one :func:`discover_collection` call: the adapter, the params, the quirk
    counts and the warnings they become. Public for readers of other layouts that apply the
    same COCO rules (the multispectral COCO labels: :func:`coco_annotations`,
    :func:`crowd_mode`)."""

    def __init__(self, adapter, params, image_suffixes, image_size, counts):
        self.adapter, self.p, self.log = adapter, params, adapter.log
        self.suffixes = tuple(s.lower() for s in image_suffixes)
        self.image_size = image_size or pillow_size
        self.counts: Counter = Counter()
        self.sink = counts
        self.found_order: list[str] = []  # class names in the format's own order

    # paths
    def display(self, path: Path) -> Path:
        try:
            return self.adapter.root / Path(path).relative_to(os.path.abspath(self.adapter.root))
        except ValueError:
            return Path(path)

    def inside(self, rel: str | Path, referenced_from: Any = None) -> Path:
        return self.adapter.resolve_inside_root(rel, referenced_from or self.adapter.root)

    def warn(self, key: str, n: int, text: str, path: Any = None) -> None:
        """Count ``n`` under ``key`` and, when ``n``, warn once with the text."""
        self.counts[key] += n
        if n:
            self.log.warn(text, None if path is None else str(path))

    def index_images(self, exclude: Path | None) -> dict[str, tuple[Path, str]]:
        """image id -> (path, rel) of every image under image_dir (not under ``exclude``)."""
        folder = self.inside(self.p.image_dir)
        if not folder.is_dir():
            raise DataError("image folder (param image_dir) not found", path=self.display(folder))
        found: dict[str, tuple[Path, str]] = {}
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in self.suffixes or not path.is_file():
                continue
            if exclude is not None and (path == exclude or exclude in path.parents):
                continue
            rel = path.relative_to(folder).as_posix()
            image_id = rel[: -len(path.suffix)]
            if image_id in found:
                raise DataError(
                    f"two images share the id {image_id!r}: {found[image_id][1]} and {rel}",
                    path=self.display(folder),
                )
            found[image_id] = (path, rel)
        return found

    def label_root(self, default: str) -> Path:
        return self.inside(self.p.label_dir or default)

    def flush_counts(self) -> None:
        for sink in (self.sink, getattr(self.log, "counts", None)):
            if isinstance(sink, dict):
                for key, n in self.counts.items():
                    sink[key] = sink.get(key, 0) + n


def discover_collection(
    adapter: Any,
    params: CollectionParams,
    *,
    image_suffixes: tuple[str, ...],
    image_size: Callable[[Path], tuple[int, int]] | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[list[LabeledImage], list[str]]:
    """The labelled images of ``adapter.root`` as ``params`` describe them, and the class
    names (labels 1..K). See the module doc for layouts, classes, splits and reporting."""
    run = CollectionRun(adapter, params, image_suffixes, image_size, counts)
    reader = {
        "voc": _read_voc,
        "coco": _read_coco,
        "yolo": _read_yolo,
        "masks": _read_masks,
        "none": _read_none,
    }[params.labels]
    raws = reader(run)
    class_names = _class_names(run)
    items = []
    for raw in raws:
        with run.log.guard(run.display(raw.annotation or raw.image), unit="image"):
            items.append(_classify(run, raw, class_names))
    _class_warnings(run)
    items = unit_groups.set_groups(adapter, items, params.group_by, run.display)
    items = _assign_splits(run, items)
    items = _backgrounds(run, items)
    run.flush_counts()
    return items, class_names


# --- classes ---------------------------------------------------------------------------------
def _mapped(run: CollectionRun, name: str) -> str | None:
    if name in run.p.class_map:
        return run.p.class_map[name] or None
    return name


def _class_names(run: CollectionRun) -> list[str]:
    if run.p.class_names is not None:
        return list(run.p.class_names)
    names = [_mapped(run, n) for n in run.found_order]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise DataError(
            "no class names: the labels name no class (give the param class_names)",
            path=run.display(run.inside(run.p.label_dir or run.p.image_dir)),
        )
    return names


def _classify(run: CollectionRun, raw: _Raw, class_names: list[str]) -> LabeledImage:
    """Class map, unknown classes and difficult objects applied to one image's objects."""
    known = set(class_names)
    item = LabeledImage(
        raw.image_id, raw.image, raw.annotation, raw.split or "", declared_size=raw.declared_size
    )
    for name, box, difficult, crowd in raw.objects:
        mapped = _mapped(run, name)
        if mapped is None:
            run.counts["class_map_dropped"] += 1
            run.counts[f"class_map_dropped:{name}"] += 1
            continue
        if mapped not in known:
            if run.p.unknown_class == "error":
                raise DataError(
                    f"unknown class {mapped!r} (class_names: {class_names}; set "
                    "unknown_class: skip or class_map to leave it out)",
                    path=run.display(raw.annotation or raw.image),
                    sample=raw.image_id,
                )
            run.counts["unknown_skipped"] += 1
            run.counts[f"unknown_skipped:{mapped}"] += 1
            continue
        if difficult and not run.p.keep_difficult:
            run.counts["difficult_dropped"] += 1
            continue
        item.names.append(mapped)
        item.boxes.append(list(box))
        item.difficult.append(bool(difficult))
        item.crowd.append(bool(crowd))
    item.background = not item.boxes
    return item


def _per_name(run: CollectionRun, key: str) -> list[str]:
    prefix = f"{key}:"
    return sorted(k[len(prefix) :] for k in run.counts if k.startswith(prefix))


def _class_warnings(run: CollectionRun) -> None:
    n = run.counts["class_map_dropped"]
    if n:
        run.log.warn(
            f"{n} object(s) of classes {_per_name(run, 'class_map_dropped')} dropped by class_map"
        )
    n = run.counts["unknown_skipped"]
    if n:
        run.log.warn(
            f"{n} object(s) of unknown classes {_per_name(run, 'unknown_skipped')} "
            "skipped (unknown_class: skip)"
        )
    n = run.counts["difficult_dropped"]
    if n:
        run.log.warn(f"{n} difficult object(s) dropped (keep_difficult: false)")
    for key in [k for k in run.counts if ":" in k]:
        del run.counts[key]


# --- splits and backgrounds --------------------------------------------------------------------
def _assign_splits(run: CollectionRun, items: list[LabeledImage]) -> list[LabeledImage]:
    p = run.p
    if p.split_files:
        return _from_split_files(run, items)
    for item in items:
        if item.split:
            continue
        first = item.image_id.split("/", 1)[0] if "/" in item.image_id else ""
        item.split = FOLDER_SPLITS.get(first.lower()) or assign_split(
            unit_groups.hash_key(item.image_id, item.group), p.val_fraction, p.test_fraction, p.seed
        )
    return items


def _from_split_files(run: CollectionRun, items: list[LabeledImage]) -> list[LabeledImage]:
    p = run.p
    files = {split: run.inside(rel) for split, rel in p.split_files.items()}
    listed = split_format.read_split_files(
        files, shown={s: run.display(f) for s, f in files.items()}
    )
    by_id = {item.image_id: item for item in items}
    aliases = {}
    for item in items:
        rel = item.image.relative_to(run.inside(p.image_dir)).as_posix()
        aliases[item.image_id] = split_format.unit_aliases(rel, p.image_dir)
    result = split_format.assign_splits(
        aliases,
        listed,
        unlisted=p.unlisted,
        val_fraction=p.val_fraction,
        test_fraction=p.test_fraction,
        seed=p.seed,
        keys={item.image_id: unit_groups.hash_key(item.image_id, item.group) for item in items},
    )
    missing = result.not_found
    run.warn(
        "split_not_found",
        len(missing),
        f"{len(missing)} listed unit(s) match no image (first: "
        f"{[e for e, _ in missing[:QUOTE]]}); they are ignored",
        missing[0][1] if missing else None,
    )
    dropped = [u for u in result.unlisted if u not in result.split]
    run.warn(
        "split_unlisted_dropped",
        len(dropped),
        f"{len(dropped)} image(s) in no split list dropped (unlisted: drop; first: "
        f"{dropped[:QUOTE]})",
    )
    kept = []
    for unit, split in result.split.items():
        by_id[unit].split = split
        kept.append(by_id[unit])
    return kept


def _backgrounds(run: CollectionRun, items: list[LabeledImage]) -> list[LabeledImage]:
    fraction = run.p.keep_background
    kept, dropped = [], 0
    for item in items:
        if item.background and split_hash(f"background:{item.image_id}", run.p.seed) >= fraction:
            dropped += 1
            continue
        kept.append(item)
    # Kept background images are counted, not warned about: they are ordinary negatives (the
    # prepare report gives them per split under ``background`` and ``counts``).
    run.counts["background_kept"] += sum(item.background for item in kept)
    run.warn(
        "background_dropped",
        dropped,
        f"{dropped} background images (no boxes) dropped (keep_background: {fraction:g})",
    )
    return kept


# --- VOC -------------------------------------------------------------------------------------
def _voc_label_root(run: CollectionRun) -> Path:
    if run.p.label_dir:
        return run.inside(run.p.label_dir)
    lower = run.inside("annotations")
    upper = run.inside("Annotations")
    return upper if not lower.is_dir() and upper.is_dir() else lower


def _read_voc(run: CollectionRun) -> list[_Raw]:
    label_root = _voc_label_root(run)
    if not label_root.is_dir():
        raise DataError(
            "VOC annotation folder (param label_dir) not found", path=run.display(label_root)
        )
    images = run.index_images(exclude=label_root)
    by_stem: dict[str, list[str]] = {}
    for image_id in images:
        by_stem.setdefault(image_id.rsplit("/", 1)[-1], []).append(image_id)
    raws: dict[str, _Raw] = {}
    no_box: list[str] = []
    names: set[str] = set()
    for xml in sorted(label_root.rglob("*.xml")):
        shown = run.display(xml)
        with run.log.guard(shown, unit="image"):
            ann = voc_format.parse_voc_xml(xml, shown=shown)
            image_id = _voc_image(run, ann["filename"], xml, label_root, images, by_stem)
            if image_id in raws:
                raise DataError(
                    f"image {images[image_id][1]!r} is also annotated by "
                    f"{run.display(raws[image_id].annotation)}",
                    path=shown,
                )
            path, rel = images[image_id]
            size = tuple(ann["size"]) if ann["size"] else None
            objs = [(o["name"], o["box"], o["difficult"], False) for o in ann["objects"]]
            raws[image_id] = _Raw(image_id, path, rel, xml, objs, size)
            names.update(o["name"] for o in ann["objects"])
            no_box += ann["no_box"]
    run.found_order = sorted(names)
    run.warn(
        "no_box_objects",
        len(no_box),
        f"{len(no_box)} VOC object(s) without a <bndbox> ignored (no box: not objects)",
        run.display(label_root),
    )
    missing = [i for i in images if i not in raws]
    run.warn(
        "no_annotation_file",
        len(missing),
        f"{len(missing)} image(s) without an annotation file read as background images "
        f"(first: {missing[:QUOTE]})",
        run.display(label_root),
    )
    raws.update({i: _Raw(i, *images[i], None) for i in missing})
    return [raws[i] for i in images if i in raws]


def _voc_image(run, filename, xml, label_root, images, by_stem) -> str:
    """The image id an XML annotates: its ``<filename>`` (same folder as the XML relative to
    the label folder, then anywhere) matched by stem, else the XML's own stem."""
    sub = xml.parent.relative_to(label_root).as_posix()
    sub = "" if sub == "." else f"{sub}/"
    candidates = []
    if filename:
        fname = filename.replace("\\", "/").rsplit("/", 1)[-1]
        stem = (
            Path(fname).stem if Path(fname).suffix.lower() in voc_format.IMAGE_SUFFIXES else fname
        )
        candidates += [f"{sub}{stem}", stem]
    candidates += [f"{sub}{xml.stem}", xml.stem]
    for cand in candidates:
        if cand in images:
            return cand
        found = by_stem.get(cand.rsplit("/", 1)[-1], []) if "/" not in cand else []
        if len(found) == 1:
            return found[0]
    raise DataError(
        f"no image for <filename> {filename!r} (nor for the XML's stem {xml.stem!r}) under "
        f"{run.display(run.inside(run.p.image_dir))}",
        path=run.display(xml),
    )


# --- YOLO ------------------------------------------------------------------------------------
def _yolo_names(run: CollectionRun, label_root: Path) -> list[str] | None:
    if run.p.names_file:
        path = run.inside(run.p.names_file)
        return yolo_format.read_yolo_names(path, shown=run.display(path))
    root = run.inside(".")
    for cand in (
        root / "data.yaml",
        root / "dataset.yaml",
        label_root / "classes.txt",
        root / "classes.txt",
    ):
        if cand.is_file():
            return yolo_format.read_yolo_names(cand, shown=run.display(cand))
    return None


def _read_yolo(run: CollectionRun) -> list[_Raw]:
    label_root = run.label_root(yolo_format.default_label_dir(run.p.image_dir))
    names = _yolo_names(run, label_root) or (list(run.p.class_names) if run.p.class_names else None)
    if names is None:
        raise DataError(
            "YOLO labels name classes by index: give names_file, a data.yaml or classes.txt, "
            "or the param class_names",
            path=run.display(label_root),
        )
    run.found_order = list(names)
    images = run.index_images(exclude=label_root)
    raws = []
    for image_id, (path, rel) in images.items():
        txt = yolo_format.label_path_for(rel, label_root)
        shown = run.display(txt)
        with run.log.guard(shown, unit="image"):
            objects = yolo_format.parse_yolo_txt(txt, shown=shown)
            classes = yolo_format.names_of(objects, names, shown)
            w, h = run.image_size(path) if objects else (0, 0)
            objs = [
                (c, yolo_format.to_pixels(b, w, h), False, False)
                for c, (_, b) in zip(classes, objects)
            ]
            raws.append(_Raw(image_id, path, rel, txt if txt.is_file() else None, objs))
    return raws


# --- masks and none ----------------------------------------------------------------------------
def _read_masks(run: CollectionRun) -> list[_Raw]:
    p = run.p
    mask_root = run.label_root("masks")
    if not mask_root.is_dir():
        raise DataError("mask folder (param label_dir) not found", path=run.display(mask_root))
    index = {}
    for path in sorted(mask_root.rglob("*")):
        if path.suffix.lower() in voc_format.IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.relative_to(mask_root).with_suffix("").as_posix(), path)
    images = run.index_images(exclude=mask_root)
    names = [p.mask_class] if p.mask_class else list(p.class_names or [])
    run.found_order = list(names)
    raws, small, missing = [], 0, []
    for image_id, (path, rel) in images.items():
        mask_path = mask_format.mask_path_for(rel, mask_root, p.mask_suffix, index)
        if mask_path is None:
            missing.append(image_id)
            raws.append(_Raw(image_id, path, rel, None))
            continue
        shown = run.display(mask_path)
        with run.log.guard(shown, unit="image"):
            mask = mask_format.read_mask(mask_path, shown=shown)
            size = run.image_size(path)
            if (mask.shape[1], mask.shape[0]) != tuple(size):
                raise DataError(
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but the image "
                    f"{rel} is {size[0]}x{size[1]}",
                    path=shown,
                )
            boxes, classes, dropped = mask_format.mask_boxes(
                mask, single_class=bool(p.mask_class), min_pixels=p.mask_min_pixels
            )
            small += dropped
            objs = [(_mask_name(names, c, shown), b, False, False) for b, c in zip(boxes, classes)]
            raws.append(_Raw(image_id, path, rel, mask_path, objs))
    run.warn(
        "mask_small_dropped",
        small,
        f"{small} mask component(s) of fewer than "
        f"mask_min_pixels={p.mask_min_pixels} pixels dropped",
        run.display(mask_root),
    )
    run.warn(
        "no_mask_file",
        len(missing),
        f"{len(missing)} image(s) without a mask read as "
        f"background images (first: {missing[:QUOTE]})",
        run.display(mask_root),
    )
    return raws


def _mask_name(names: list[str], value: int, shown: Any) -> str:
    if 1 <= value <= len(names):
        return names[value - 1]
    raise DataError(f"mask value {value} is no class index 1..{len(names)} ({names})", path=shown)


def _read_none(run: CollectionRun) -> list[_Raw]:
    run.found_order = list(run.p.class_names or [])
    return [_Raw(i, path, rel, None) for i, (path, rel) in run.index_images(None).items()]


# --- COCO ------------------------------------------------------------------------------------
def _read_coco(run: CollectionRun) -> list[_Raw]:
    images = run.index_images(exclude=None)
    by_stem: dict[str, list[str]] = {}
    for image_id in images:
        by_stem.setdefault(image_id.rsplit("/", 1)[-1], []).append(image_id)
    raws: dict[str, _Raw] = {}
    for split, rel in run.p.coco_json.items():
        json_path = run.inside(rel)
        shown = run.display(json_path)
        data, cats = coco_format.load_coco_json(json_path, shown=shown)
        run.found_order += [name for _, name in cats if name not in run.found_order]
        for raw in _coco_file(run, data, dict(cats), json_path, images, by_stem):
            if raw.image_id in raws:
                raise DataError(
                    f"image {raw.image_id!r} is also listed by "
                    f"{run.display(raws[raw.image_id].annotation)}",
                    path=shown,
                )
            raw.split = None if split == "all" else split
            raws[raw.image_id] = raw
    return list(raws.values())


def _coco_image(run: CollectionRun, entry, images, by_stem, shown) -> str:
    """The image id of an ``images`` entry: ``file_name`` under image_dir, under root, or by
    its stem (the single image of that stem)."""
    name = entry["file_name"].replace("\\", "/")
    sample = coco_format.coco_sample_id(entry["id"])
    image_dir = run.inside(run.p.image_dir)
    for base in (image_dir, run.inside(".")):
        path = run.adapter.resolve_inside_root(base / name, shown)
        if path.is_file():
            try:
                rel = path.relative_to(image_dir).as_posix()
            except ValueError:
                continue
            image_id = rel[: -len(path.suffix)] if path.suffix else rel
            if image_id in images:
                return image_id
    stem = Path(name).stem
    found = by_stem.get(stem, [])
    if len(found) == 1:
        return found[0]
    raise DataError(
        f"image {name!r} not found under {run.display(image_dir)}", path=shown, sample=sample
    )


def _coco_file(run, data, cats, json_path, images, by_stem) -> list[_Raw]:
    shown = run.display(json_path)
    raws: dict[int, _Raw] = {}
    for img in data["images"]:
        with run.log.guard(shown, unit="image"):
            entry = coco_format.parse_image_entry(img, shown)
            if entry["id"] in raws:
                raise DataError(f"duplicate image id {entry['id']}", path=shown)
            image_id = _coco_image(run, entry, images, by_stem, shown)
            path, rel = images[image_id]
            size = tuple(entry["declared_size"]) if entry["declared_size"] else None
            raws[entry["id"]] = _Raw(image_id, path, rel, json_path, declared_size=size)
    listed = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    anns, bad = coco_annotations(run, data, listed, shown)
    for image_id in bad:
        raws.pop(image_id, None)
    crowd_objects = crowd_mode(run, anns, shown)
    degenerate = 0
    for ann, parsed in anns:
        raw = raws.get(ann["image_id"])
        if raw is None:  # that image's entry was refused (and recorded) above
            continue
        if parsed["box"] is None:
            degenerate += 1
            continue
        name = cats.get(parsed["category_id"])
        if name is None:
            raise DataError(
                f"annotation {ann.get('id')} has unknown category id {parsed['category_id']}",
                path=shown,
            )
        crowd = parsed["crowd"] and not crowd_objects
        raw.objects.append((name, parsed["box"], False, crowd))
    run.warn(
        "degenerate_dropped",
        degenerate,
        f"{degenerate} zero-width or zero-height COCO box(es) dropped",
        shown,
    )
    return list(raws.values())


def coco_annotations(
    run: CollectionRun, data, listed, shown
) -> tuple[list[tuple[dict, dict]], set]:
    """The annotations of listed images, parsed, and the image ids refused for a malformed
    annotation (through ``log.guard``); those of an image id the file does not list are
    counted and skipped (``unmatched: skip``) or refused (``unmatched: error``)."""
    out, unmatched, bad = [], [], set()
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"malformed annotation {str(ann)[:200]}", path=shown)
        if image_id not in listed:
            if run.p.unmatched == "error":
                raise DataError(
                    f"annotation {ann.get('id')} refers to image id {image_id}, which the file "
                    "does not list (unmatched: skip counts and skips such annotations)",
                    path=shown,
                )
            unmatched.append(image_id)
            continue
        parsed = None
        with run.log.guard(shown, unit="image"):  # a bad annotation refuses its image
            parsed = coco_format.parse_annotation(ann, shown)
        if parsed is None:
            bad.add(image_id)
        else:
            out.append((ann, parsed))
    first = list(dict.fromkeys(unmatched))[:QUOTE]
    run.warn(
        "coco_unmatched",
        len(unmatched),
        f"{len(unmatched)} annotation(s) refer to image ids the file does not list, "
        f"skipped (unmatched: skip; first ids {first})",
        shown,
    )
    return out, bad


def crowd_mode(run: CollectionRun, anns, shown) -> bool:
    """Whether the crowd boxes of this file are read as objects (``crowd``)."""
    mode = run.p.crowd
    if mode != "auto":
        return mode == "objects"
    boxes = [parsed for _, parsed in anns if parsed["box"] is not None]
    if boxes and all(parsed["crowd"] for parsed in boxes):
        run.warn(
            "crowd_as_objects",
            len(boxes),
            f"every one of the {len(boxes)} boxes is iscrowd: read as objects (crowd: "
            "auto; set the param crowd: ignore to keep them as ignore regions)",
            shown,
        )
        return True
    return False
