"""RGB photographs with Pascal VOC (XML) or MS COCO (instances JSON) annotations.

The RGB baselines of the paper (VOC 07+12, COCO) and the source domain for fine-tuning. Images
are decoded with Pillow to 8-bit RGB and stored as float32 ``[3, H, W]`` in ``[0, 1]`` at their
original resolution; no ImageNet statistics are applied anywhere (the store computes the
per-channel mean/std of the train split). ``Sample.affine`` is the identity: stored pixels are
original-image pixels, so predictions exported in pixels are already in original coordinates.

Coordinate conventions (ours: continuous, 0-based, ``x2``/``y2`` exclusive edges):

* VOC ``bndbox`` values are 1-based *inclusive* pixel indices: pixel columns ``xmin..xmax``
  are covered. In continuous coordinates that is ``[xmin - 1, xmax)``, so we store
  ``(xmin - 1, ymin - 1, xmax, ymax)`` and export back as ``(x1 + 1, y1 + 1, x2, y2)``.
* COCO ``bbox`` is ``[x, y, w, h]`` already continuous and 0-based: ``(x, y, x + w, y + h)``.

A box may stick out of its image by at most :data:`BOX_TOLERANCE_PX` (annotation tools and
rounding produce such boxes, e.g. VOC ``xmin = 0``); it is clipped to the image. A box further
outside, or inverted, is a :class:`DataError` naming the annotation file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.registry import register

try:  # defusedxml refuses entity-expansion and external-entity tricks in untrusted XML.
    from defusedxml import ElementTree as SafeET
    from defusedxml.common import DefusedXmlException
except ImportError:  # pragma: no cover - fallback when the optional hardening is not installed
    # The stdlib parser (expat >= 2.4.1 as bundled with Python 3.11) already limits billion-
    # laughs amplification and never fetches external entities; defusedxml adds explicit
    # refusal of DTD entity declarations on top.
    import xml.etree.ElementTree as SafeET  # noqa: N813

    class DefusedXmlException(ValueError):  # type: ignore[no-redef]
        """Placeholder so the except clauses below stay valid without defusedxml."""


from xml.etree.ElementTree import Element, ParseError  # noqa: E402  (types only, no parsing)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC classes in the devkit's standard order (labels 1..20)."""

BOX_TOLERANCE_PX = 1.0
"""How far (pixels) a box may extend beyond the image before it is an error; it is clipped."""

SPLIT_PARAM = {"train": "train_sets", "val": "val_sets", "test": "test_sets"}
COCO_JSON_PARAM = {"train": "train_json", "val": "val_json", "test": "test_json"}

DEMO_CLASSES = ["circle", "square", "triangle"]


def _is_str_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def to_coco_results(
    items: Sequence[Mapping[str, Any]], label_to_category_id: Mapping[int, int]
) -> list[dict[str, Any]]:
    """Detections of many images as a COCO results list (what ``COCO.loadRes`` reads).

    Args:
        items: per image, ``meta["image_id"]`` (the COCO image id, or the VOC image id string),
            ``affine`` (stored pixel -> original pixel, ``[4, 4]``) and ``detections`` with
            ``boxes`` float ``[N, 4]`` xyxy in stored-image pixels, ``scores`` ``[N]`` and
            ``labels`` ``[N]`` in ``1..K``.
        label_to_category_id: contiguous label -> category id written to the file.

    Returns:
        One dict per detection: ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` in
        original-image pixels (continuous, 0-based) and ``score``.
    """
    rows: list[dict[str, Any]] = []
    for item in items:
        det = item["detections"]
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        affine = np.asarray(item.get("affine", np.eye(4)), dtype=np.float64)
        image_id = item["meta"]["image_id"]
        for box, score, label in zip(boxes, det["scores"], det["labels"]):
            corners = pixel_to_world(affine, np.array([[box[0], box[1]], [box[2], box[3]]]))
            x1, y1 = np.minimum(corners[0, :2], corners[1, :2])
            x2, y2 = np.maximum(corners[0, :2], corners[1, :2])
            try:
                category_id = label_to_category_id[int(label)]
            except KeyError:
                raise DataError(
                    f"predicted label {int(label)} has no category id",
                    sample=str(item.get("sample_id")),
                ) from None
            rows.append(
                {
                    "image_id": image_id,
                    "category_id": int(category_id),
                    "bbox": [round(float(v), 3) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(float(score), 5),
                }
            )
    return rows


def from_coco_results(
    rows: Sequence[Mapping[str, Any]], label_to_category_id: Mapping[int, int]
) -> dict[Any, dict[str, np.ndarray]]:
    """Inverse of :func:`to_coco_results`: ``image_id -> {boxes [N,4] xyxy, scores, labels}``."""
    category_to_label = {int(c): int(lab) for lab, c in label_to_category_id.items()}
    grouped: dict[Any, list[tuple[list[float], float, int]]] = {}
    for row in rows:
        x, y, w, h = (float(v) for v in row["bbox"])
        label = category_to_label[int(row["category_id"])]
        grouped.setdefault(row["image_id"], []).append(
            ([x, y, x + w, y + h], float(row["score"]), label)
        )
    return {
        image_id: {
            "boxes": np.array([d[0] for d in dets], dtype=np.float64).reshape(-1, 4),
            "scores": np.array([d[1] for d in dets], dtype=np.float64),
            "labels": np.array([d[2] for d in dets], dtype=np.int64),
        }
        for image_id, dets in grouped.items()
    }


@register("rgb")
class RGBAdapter(ModalityAdapter):
    """8-bit RGB images with Pascal VOC or MS COCO detection annotations.

    Channels: ``["red", "green", "blue"]``, float32 in ``[0, 1]`` (8-bit value / 255).
    World frame: original-image pixels (``affine`` is the identity).

    Params (``param_defaults``; ``root`` is a VOCdevkit folder or a COCO folder):

    * ``format``: ``"voc"`` or ``"coco"``.
    * ``classes``: class names for labels 1..K. VOC: defaults to the 20 VOC classes in the
      standard order (:data:`VOC_CLASSES`). COCO: ``null`` takes the JSON's categories sorted
      by category id; a list given must equal those names in that order (a check only).
    * ``keep_difficult``: True keeps VOC ``difficult`` objects (and COCO ``iscrowd`` regions)
      with ``difficult=True`` so VOC metrics ignore them; False drops them.
    * ``max_pixels``: refuse (DataError) an image whose header declares more pixels, checked
      before decoding (decompression-bomb guard). Pillow's own guard still refuses anything
      above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 Mpx). A numeric string (YAML reads
      ``50e6`` as one) is accepted.
    * ``val_fraction``: move this fraction of the *train* images to ``val``, chosen by a stable
      hash of the sample id (:func:`modalities.base.assign_split`); for VOC 07+12, which has
      no validation list. 0 keeps the dataset's own splits.

    VOC only (``root/<year>/{Annotations,JPEGImages,ImageSets/Main}``):

    * ``years``: VOC folders relative to ``root`` to combine, e.g. ``["VOC2007", "VOC2012"]``
      for the paper's 07+12; ``["."]`` when ``root`` itself is the VOC folder.
    * ``train_sets``, ``val_sets``, ``test_sets``: names of ``ImageSets/Main/<name>.txt``
      lists. A plain name (``"trainval"``) is read in every year; ``"<year>/<name>"``
      (``"VOC2007/test"``) only in that year. An image listed in two splits is an error.
    * ``unknown_classes``: ``"error"`` (DataError naming the XML) or ``"skip"`` for objects
      whose name is not in ``classes``.

    COCO only:

    * ``train_json``, ``val_json``, ``test_json``: instances JSON paths relative to ``root``
      (``null``: no such split).
    * ``image_dirs``: split -> image folder relative to ``root`` that ``file_name`` is
      relative to. Categories are mapped to contiguous labels 1..K sorted by category id
      (:attr:`label_to_category_id` maps back). ``iscrowd`` annotations become
      ``difficult=True`` boxes (ignored by VOC metrics, like VOC difficult objects). Images
      without annotations are kept. Boxes with zero width or height (COCO holds a few) are
      dropped and counted in ``meta["dropped_degenerate"]``.

    Images are not EXIF-rotated: VOC and COCO annotate the stored pixel grid. An image whose
    size differs from the size its annotation declares is a DataError.
    """

    param_defaults: ClassVar[dict[str, Any]] = {
        "format": "voc",
        "classes": None,
        "keep_difficult": True,
        "max_pixels": 50e6,
        "val_fraction": 0.0,
        # VOC
        "years": ["VOC2007", "VOC2012"],
        "train_sets": ["trainval"],
        "val_sets": [],
        "test_sets": ["VOC2007/test"],
        "unknown_classes": "error",
        # COCO
        "train_json": "annotations/instances_train2017.json",
        "val_json": None,
        "test_json": "annotations/instances_val2017.json",
        "image_dirs": {"train": "train2017", "val": "val2017", "test": "val2017"},
    }
    world_units: ClassVar[str] = "pixel"

    def __init__(self, root: str | Path, params: Mapping[str, Any] | None = None):
        super().__init__(root, params)
        self._class_names: list[str] | None = None
        self._label_to_category: dict[int, int] | None = None
        if self.params["format"] == "voc":
            self._class_names = list(self.params["classes"] or VOC_CLASSES)
            self._label_to_category = {i + 1: i + 1 for i in range(len(self._class_names))}

    # --- params -------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params

        def bad(key: str, why: str) -> None:
            raise ConfigError(f"rgb adapter param {key!r}={p[key]!r}: {why}")

        if p["format"] not in ("voc", "coco"):
            bad("format", "must be 'voc' or 'coco'")
        if p["classes"] is not None:
            if not _is_str_list(p["classes"]) or not p["classes"]:
                bad("classes", "must be null or a non-empty list of names")
            if len(set(p["classes"])) != len(p["classes"]):
                bad("classes", "names must be unique")
        if not isinstance(p["keep_difficult"], bool):
            bad("keep_difficult", "must be true or false")
        mp = p["max_pixels"]
        if isinstance(mp, str):  # YAML 1.1 reads "50e6" as a string
            try:
                p["max_pixels"] = mp = float(mp)
            except ValueError:
                bad("max_pixels", "must be a positive number")
        if isinstance(mp, bool) or not isinstance(mp, (int, float)) or not mp > 0:
            bad("max_pixels", "must be a positive number")
        vf = p["val_fraction"]
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
            bad("val_fraction", "must be a number in [0, 1)")
        if p["format"] == "voc":
            if not _is_str_list(p["years"]) or not p["years"]:
                bad("years", "must be a non-empty list of VOC folders relative to root")
            if len(set(p["years"])) != len(p["years"]):
                bad("years", "folders must be unique")
            for key in SPLIT_PARAM.values():
                if not _is_str_list(p[key]):
                    bad(key, "must be a list of ImageSets/Main list names")
                for entry in p[key]:
                    year, _, name = entry.rpartition("/")
                    if year and year not in p["years"]:
                        bad(key, f"{entry!r} names year {year!r}, not one of years")
                    if not name or name in (".", ".."):
                        bad(key, f"{entry!r} has no list name")
            if not any(p[k] for k in SPLIT_PARAM.values()):
                bad("train_sets", "no image lists given for any split")
            if p["unknown_classes"] not in ("error", "skip"):
                bad("unknown_classes", "must be 'error' or 'skip'")
        else:
            for key in COCO_JSON_PARAM.values():
                if p[key] is not None and not (isinstance(p[key], str) and p[key]):
                    bad(key, "must be null or a path relative to root")
            if not any(p[k] for k in COCO_JSON_PARAM.values()):
                bad("train_json", "no annotation JSON given for any split")
            dirs = p["image_dirs"]
            if not isinstance(dirs, Mapping) or not all(isinstance(v, str) for v in dirs.values()):
                bad("image_dirs", "must map split -> image folder relative to root")
            for split, key in COCO_JSON_PARAM.items():
                if p[key] and split not in dirs:
                    bad("image_dirs", f"no image folder for split {split!r}")

    # --- what the data looks like -------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        return ["red", "green", "blue"]

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise RuntimeError("COCO class names are known after discover()")
        return list(self._class_names)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Contiguous label (1..K) -> category id of the results file: the original COCO
        category id, or the label itself for VOC. Known after :meth:`discover` for COCO."""
        if self._label_to_category is None:
            raise RuntimeError("COCO category ids are known after discover()")
        return dict(self._label_to_category)

    # --- discovery ----------------------------------------------------------------------
    def discover(self) -> list[SampleRef]:
        refs = self._discover_voc() if self.params["format"] == "voc" else self._discover_coco()
        fraction = float(self.params["val_fraction"])
        if fraction > 0:
            for ref in refs:
                if ref.split == "train":
                    ref.split = assign_split(ref.ref_id, fraction, 0.0)
        return refs

    def _display(self, path: Path) -> Path:
        """``path`` (resolved) shown relative to ``root`` as the user gave it."""
        try:
            return self.root / path.relative_to(self.root.resolve())
        except ValueError:
            return path

    def _voc_lists(self, year: str, split: str) -> list[str]:
        names = []
        for entry in self.params[SPLIT_PARAM[split]]:
            entry_year, _, name = entry.rpartition("/")
            if not entry_year or entry_year == year:
                names.append(name)
        return names

    def _discover_voc(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        root_file = self.root  # blamed when a configured (not annotated) path escapes
        for year in self.params["years"]:
            year_dir = self.resolve_inside_root(year, root_file)
            if not year_dir.is_dir():
                raise DataError("VOC folder listed in 'years' does not exist", path=year_dir)
            split_of: dict[str, tuple[str, Path]] = {}
            for split in SPLIT_PARAM:
                for name in self._voc_lists(year, split):
                    list_path = self.resolve_inside_root(
                        Path(year) / "ImageSets" / "Main" / f"{name}.txt", root_file
                    )
                    for image_id in self._read_id_list(list_path):
                        seen = split_of.get(image_id)
                        if seen is not None and seen[0] != split:
                            raise DataError(
                                f"image {image_id!r} is listed for split {split!r} here and "
                                f"for {seen[0]!r} in {self._display(seen[1])}",
                                path=self._display(list_path),
                            )
                        split_of[image_id] = (split, list_path)
            for image_id, (split, _) in split_of.items():
                xml_path = self.resolve_inside_root(
                    Path(year) / "Annotations" / f"{image_id}.xml", root_file
                )
                refs.append(self._voc_ref(year, image_id, split, xml_path))
        return refs

    def _read_id_list(self, list_path: Path) -> list[str]:
        shown = self._display(list_path)
        try:
            text = list_path.read_text()
        except FileNotFoundError:
            raise DataError("image list not found", path=shown) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"image list unreadable: {exc}", path=shown) from None
        ids = []
        for lineno, line in enumerate(text.splitlines(), 1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 1:
                raise DataError(f"line {lineno}: expected one image id, got {line!r}", path=shown)
            ids.append(tokens[0])
        return list(dict.fromkeys(ids))  # duplicates within a list are harmless; keep order

    def _voc_ref(self, year: str, image_id: str, split: str, xml_path: Path) -> SampleRef:
        shown = self._display(xml_path)
        try:
            root = SafeET.parse(xml_path).getroot()
        except FileNotFoundError:
            raise DataError("annotation file not found", path=shown) from None
        except (ParseError, DefusedXmlException, OSError) as exc:
            raise DataError(f"malformed VOC XML: {exc}", path=shown) from None
        if root.tag != "annotation":
            raise DataError(f"root element is <{root.tag}>, expected <annotation>", path=shown)

        filename = (root.findtext("filename") or "").strip() or f"{image_id}.jpg"
        image_path = self.resolve_inside_root(Path(year) / "JPEGImages" / filename, shown)
        if not image_path.is_file():
            # The devkit itself loads JPEGImages/<id>.jpg; tools such as labelImg sometimes
            # write the name of the file before it was renamed into <filename>.
            fallback = self.resolve_inside_root(
                Path(year) / "JPEGImages" / f"{image_id}.jpg", shown
            )
            if not fallback.is_file():
                raise DataError(f"image {self._display(image_path)} not found", path=shown)
            image_path, filename = fallback, f"{image_id}.jpg"

        declared = None
        size = root.find("size")
        if size is not None:
            w, h = (_xml_number(size, tag, shown) for tag in ("width", "height"))
            if w > 0 and h > 0:  # some tools write 0 for "unknown"
                declared = [int(w), int(h)]

        index = {name: i + 1 for i, name in enumerate(self.class_names)}
        boxes, labels, difficult, skipped = [], [], [], 0
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                if self.params["unknown_classes"] == "skip":
                    skipped += 1
                    continue
                raise DataError(f"unknown class {name!r} (classes: {self.class_names})", path=shown)
            is_difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            if is_difficult and not self.params["keep_difficult"]:
                continue
            bnd = obj.find("bndbox")  # direct child: <part> boxes of person layout are not ours
            if bnd is None:
                raise DataError(f"object {name!r} has no <bndbox>", path=shown)
            xmin, ymin, xmax, ymax = (
                _xml_number(bnd, tag, shown) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmax < xmin or ymax < ymin:
                raise DataError(
                    f"inverted box of {name!r}: xmin={xmin:g} ymin={ymin:g} "
                    f"xmax={xmax:g} ymax={ymax:g}",
                    path=shown,
                )
            # 1-based inclusive pixel indices -> continuous 0-based edges.
            boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
            labels.append(index[name])
            difficult.append(is_difficult)

        sample_id = image_id if year == "." else f"{year}/{image_id}"
        return SampleRef(
            ref_id=sample_id,
            split=split,
            paths={"image": image_path, "annotation": xml_path},
            meta={
                "image_id": image_id,
                "year": year,
                "file_name": filename,
                "declared_size": declared,
                "boxes": boxes,
                "labels": labels,
                "difficult": difficult,
                "skipped_unknown": skipped,
            },
        )

    def _discover_coco(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        categories: list[tuple[int, str]] | None = None
        category_file: Path | None = None
        owner: dict[int, tuple[str, Path]] = {}
        for split, key in COCO_JSON_PARAM.items():
            rel = self.params[key]
            if not rel:
                continue
            json_path = self.resolve_inside_root(rel, self.root)
            data, cats = self._load_coco_json(json_path)
            if categories is None:
                categories, category_file = cats, json_path
                self._set_categories(cats, json_path)
            elif cats != categories:
                raise DataError(
                    f"categories differ from those of {self._display(category_file)}",
                    path=self._display(json_path),
                )
            for ref in self._coco_refs(data, split, json_path):
                image_id = ref.meta["image_id"]
                if image_id in owner:
                    raise DataError(
                        f"image id {image_id} also appears in the {owner[image_id][0]!r} split "
                        f"({self._display(owner[image_id][1])})",
                        path=self._display(json_path),
                    )
                owner[image_id] = (split, json_path)
                refs.append(ref)
        return refs

    def _set_categories(self, cats: list[tuple[int, str]], json_path: Path) -> None:
        names = [name for _, name in cats]
        wanted = self.params["classes"]
        if wanted is not None and list(wanted) != names:
            raise ConfigError(
                f"param classes {list(wanted)} differ from the categories sorted by id "
                f"{names} of {self._display(json_path)}"
            )
        self._class_names = names
        self._label_to_category = {i + 1: cid for i, (cid, _) in enumerate(cats)}

    def _load_coco_json(self, json_path: Path) -> tuple[dict[str, Any], list[tuple[int, str]]]:
        shown = self._display(json_path)
        try:
            with open(json_path, "rb") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise DataError("annotation file not found", path=shown) from None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise DataError(f"malformed COCO JSON: {exc}", path=shown) from None
        if not isinstance(data, dict):
            raise DataError("COCO JSON must be an object", path=shown)
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise DataError(f"COCO JSON lacks a {key!r} list", path=shown)
        cats = []
        for cat in data["categories"]:
            if not (
                isinstance(cat, dict)
                and _is_int(cat.get("id"))
                and isinstance(cat.get("name"), str)
            ):
                raise DataError(f"malformed category {cat!r}", path=shown)
            cats.append((int(cat["id"]), cat["name"]))
        cats.sort()
        ids = [c for c, _ in cats]
        if len(set(ids)) != len(ids):
            raise DataError("duplicate category ids", path=shown)
        if not cats:
            raise DataError("no categories", path=shown)
        return data, cats

    def _coco_refs(self, data: dict[str, Any], split: str, json_path: Path) -> list[SampleRef]:
        shown = self._display(json_path)
        label_of = {cid: lab for lab, cid in self.label_to_category_id.items()}
        image_dir = Path(self.params["image_dirs"][split])
        images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            if not (
                isinstance(img, dict)
                and _is_int(img.get("id"))
                and isinstance(img.get("file_name"), str)
                and img["file_name"]
            ):
                raise DataError(f"malformed image entry {str(img)[:200]}", path=shown)
            if int(img["id"]) in images:
                raise DataError(f"duplicate image id {img['id']}", path=shown)
            file_name = img["file_name"]
            if Path(file_name).is_absolute():
                raise DataError(f"image file_name {file_name!r} must be relative", path=shown)
            image_path = self.resolve_inside_root(image_dir / file_name, shown)
            if not image_path.is_file():
                raise DataError(f"image {self._display(image_path)} not found", path=shown)
            w, h = img.get("width"), img.get("height")
            declared = [int(w), int(h)] if _is_int(w) and _is_int(h) and w > 0 and h > 0 else None
            images[int(img["id"])] = {
                "path": image_path,
                "file_name": file_name,
                "declared_size": declared,
                "boxes": [],
                "labels": [],
                "difficult": [],
                "dropped_degenerate": 0,
            }
        for ann in data["annotations"]:
            if not (
                isinstance(ann, dict)
                and _is_int(ann.get("image_id"))
                and _is_int(ann.get("category_id"))
            ):
                raise DataError(f"malformed annotation {str(ann)[:200]}", path=shown)
            bbox = ann.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise DataError(
                    f"annotation {ann.get('id')}: bbox must be [x, y, w, h]", path=shown
                )
            entry = images.get(int(ann["image_id"]))
            if entry is None:
                raise DataError(
                    f"annotation {ann.get('id')} refers to unknown image id {ann['image_id']}",
                    path=shown,
                )
            label = label_of.get(int(ann["category_id"]))
            if label is None:
                raise DataError(
                    f"annotation {ann.get('id')} has unknown category id {ann['category_id']}",
                    path=shown,
                )
            x, y, w, h = (float(v) for v in bbox)
            if w < 0 or h < 0 or not all(math.isfinite(v) for v in (x, y, w, h)):
                raise DataError(
                    f"annotation {ann.get('id')}: inverted or non-finite bbox {bbox}", path=shown
                )
            if w == 0 or h == 0:
                entry["dropped_degenerate"] += 1
                continue
            crowd = bool(ann.get("iscrowd", 0))
            if crowd and not self.params["keep_difficult"]:
                continue
            entry["boxes"].append([x, y, x + w, y + h])
            entry["labels"].append(label)
            entry["difficult"].append(crowd)
        refs = []
        for image_id, entry in images.items():
            refs.append(
                SampleRef(
                    ref_id=f"coco/{image_id}",
                    split=split,
                    paths={"image": entry.pop("path"), "annotation": json_path},
                    meta={"image_id": image_id, **entry},
                )
            )
        return refs

    # --- reading ------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        image_path = ref.paths["image"]
        ann_shown = self._display(ref.paths["annotation"])
        image = self._decode(image_path)  # [H, W, 3] uint8
        h, w = image.shape[:2]
        declared = ref.meta.get("declared_size")
        if declared is not None and list(declared) != [w, h]:
            raise DataError(
                f"declares image size {declared[0]}x{declared[1]} but "
                f"{self._display(image_path)} is {w}x{h}",
                path=ann_shown,
                sample=ref.ref_id,
            )
        boxes = np.asarray(ref.meta["boxes"], dtype=np.float64).reshape(-1, 4)
        tol = BOX_TOLERANCE_PX
        outside = (
            (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol)
            | (boxes[:, 2] > w + tol) | (boxes[:, 3] > h + tol)
        )  # fmt: skip
        if outside.any():
            bad = boxes[np.argmax(outside)]
            raise DataError(
                f"box {np.round(bad, 2).tolist()} (continuous xyxy) lies outside the {w}x{h} "
                f"image beyond the {tol:g}-px tolerance",
                path=ann_shown,
                sample=ref.ref_id,
            )
        boxes = np.clip(boxes, 0, [w, h, w, h])
        if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
            raise DataError(
                f"a box is empty once clipped to the {w}x{h} image",
                path=ann_shown,
                sample=ref.ref_id,
            )
        meta = {
            "image_id": ref.meta["image_id"],
            "file_name": ref.meta["file_name"],
            "width": w,
            "height": h,
            "format": self.params["format"],
        }
        for key in ("year", "skipped_unknown", "dropped_degenerate"):
            if key in ref.meta:
                meta[key] = ref.meta[key]
        sample = Sample(
            image=np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0,
            boxes=boxes,
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            difficult=np.asarray(ref.meta["difficult"], dtype=bool),
            sample_id=ref.ref_id,
            source=str(self._display(image_path)),
            split=ref.split,
            affine=np.eye(4),
            meta=meta,
        )
        sample.validate(num_channels=3, num_classes=len(self.class_names))
        yield sample

    def _decode(self, path: Path) -> np.ndarray:
        """Decode an image to uint8 ``[H, W, 3]``; size checked from the header first."""
        shown = self._display(path)
        try:
            with warnings.catch_warnings():
                # Our own max_pixels check below replaces Pillow's warning.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size  # from the header: nothing decoded yet
                    if w * h > self.params["max_pixels"]:
                        raise DataError(
                            f"image declares {w}x{h} = {w * h} pixels, more than max_pixels="
                            f"{self.params['max_pixels']:g}",
                            path=shown,
                        )
                    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                        raise DataError(
                            f"image mode {im.mode!r} is not 8-bit; the rgb adapter reads 8-bit "
                            "images (use the depth adapter for 16-bit data)",
                            path=shown,
                        )
                    im.load()  # a truncated file raises here
                    rgb = im.convert("RGB")  # grey, palette, RGBA (alpha dropped), CMYK
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError("image file not found", path=shown) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot decode image: {exc}", path=shown) from None
        return np.asarray(rgb, dtype=np.uint8)

    # --- back to the world --------------------------------------------------------------
    def export_predictions(self, items: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Write ``coco_results.json`` (list for ``COCO.loadRes``: original category ids for
        COCO, labels 1..K for VOC, bbox xywh in original-image pixels), ``categories.json``
        (``[{id, name}]`` of those ids) and the world JSON of the base class; for VOC also
        the devkit's ``comp4_det_<split>_<class>.txt`` files (``image_id score xmin ymin xmax
        ymax``, 1-based inclusive convention: ``x1 + 1, y1 + 1, x2, y2``)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        mapping = self.label_to_category_id
        written = list(super().export_predictions(items, out_dir))

        results = out_dir / "coco_results.json"
        _atomic_write_text(results, json.dumps(to_coco_results(items, mapping)))
        categories = out_dir / "categories.json"
        cats = [{"id": mapping[i + 1], "name": n} for i, n in enumerate(self.class_names)]
        _atomic_write_text(categories, json.dumps(cats, indent=1))
        written += [results, categories]

        if self.params["format"] == "voc":
            lines: dict[tuple[str, int], list[str]] = {}
            for item in items:
                split = item.get("split", "test")
                det = item["detections"]
                boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
                affine = np.asarray(item.get("affine", np.eye(4)), dtype=np.float64)
                for box, score, label in zip(boxes, det["scores"], det["labels"]):
                    c = pixel_to_world(affine, np.array([[box[0], box[1]], [box[2], box[3]]]))
                    x1, y1 = np.minimum(c[0, :2], c[1, :2]) + 1.0
                    x2, y2 = np.maximum(c[0, :2], c[1, :2])
                    lines.setdefault((split, int(label)), []).append(
                        f"{item['meta']['image_id']} {float(score):.6f} "
                        f"{x1:.3f} {y1:.3f} {x2:.3f} {y2:.3f}"
                    )
            for (split, label), rows in sorted(lines.items()):
                path = out_dir / f"comp4_det_{split}_{self.class_names[label - 1]}.txt"
                _atomic_write_text(path, "\n".join(rows) + "\n")
                written.append(path)
        return written

    def render(self, image: np.ndarray) -> np.ndarray:
        """The stored ``[3, H, W]`` image in ``[0, 1]`` as uint8 ``[H, W, 3]``."""
        arr = np.asarray(image, dtype=np.float64)
        return np.round(np.clip(arr[:3].transpose(1, 2, 0), 0.0, 1.0) * 255.0).astype(np.uint8)

    # --- demo ---------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Synthetic VOC-layout set: ``JPEGImages/*.jpg`` (quality 95), ``Annotations/*.xml``
        and ``ImageSets/Main/{train,val,test}.txt`` (about 70/15/15) directly under
        ``out_dir``. Classes ``circle``, ``square``, ``triangle`` on cluttered backgrounds
        (gradients, noise, blurred blobs, strokes); each class draws its colour from a palette
        overlapping the others', so shape decides. 1-3 objects of 30-55 % of the side, later
        ones may partly occlude earlier ones; faint (low-contrast) objects are ``difficult``.
        Returns the params (format voc, years ``["."]``) that read it with ``root=out_dir``."""
        if num_images < 3:
            raise ConfigError(f"write_demo needs num_images >= 3 (one per split), got {num_images}")
        if image_size < 32:
            raise ConfigError(f"write_demo needs image_size >= 32, got {image_size}")
        out = Path(out_dir)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        n_test = max(1, round(0.15 * num_images))
        n_val = max(1, round(0.15 * num_images))
        order = rng.permutation(num_images)
        split_of = np.full(num_images, "train", dtype=object)
        split_of[order[:n_test]] = "test"
        split_of[order[n_test : n_test + n_val]] = "val"
        lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
        for i in range(num_images):
            image_id = f"{i:06d}"
            img, objects = _demo_image(rng, image_size)
            jpg = out / "JPEGImages" / f"{image_id}.jpg"
            tmp = jpg.with_name(jpg.name + ".tmp")
            img.save(tmp, format="JPEG", quality=95)
            os.replace(tmp, jpg)
            _atomic_write_text(
                out / "Annotations" / f"{image_id}.xml",
                _voc_xml(f"{image_id}.jpg", image_size, image_size, objects),
            )
            lists[str(split_of[i])].append(image_id)
        for split, ids in lists.items():
            _atomic_write_text(out / "ImageSets" / "Main" / f"{split}.txt", "\n".join(ids) + "\n")
        return {
            "format": "voc",
            "years": ["."],
            "train_sets": ["train"],
            "val_sets": ["val"],
            "test_sets": ["test"],
            "classes": list(DEMO_CLASSES),
        }


# --- helpers --------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _xml_number(parent: Element, tag: str, shown: Path) -> float:
    text = parent.findtext(tag)
    try:
        value = float((text or "").strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"<{parent.tag}><{tag}> is {text!r}, not a number", path=shown)
    return value


def _voc_xml(filename: str, width: int, height: int, objects: list[dict[str, Any]]) -> str:
    """A VOC annotation; ``objects`` hold ``name``, ``difficult``, ``occluded`` and ``box``
    (continuous xyxy) written as 1-based inclusive indices covering the box."""
    parts = [
        "<annotation>",
        "  <folder>VOCdemo</folder>",
        f"  <filename>{filename}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        xmin, ymin = math.floor(x1) + 1, math.floor(y1) + 1
        xmax, ymax = min(math.ceil(x2), width), min(math.ceil(y2), height)
        parts += [
            "  <object>",
            f"    <name>{obj['name']}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <occluded>{int(obj['occluded'])}</occluded>",
            f"    <difficult>{int(obj['difficult'])}</difficult>",
            f"    <bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


# Hue palettes (RGB) per demo class: every colour is shared by two classes.
_DEMO_COLOURS = {
    "red": (220, 40, 40),
    "yellow": (230, 200, 30),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "magenta": (200, 50, 200),
}
_DEMO_PALETTES = {
    "circle": ("red", "yellow", "blue"),
    "square": ("blue", "green", "magenta"),
    "triangle": ("green", "magenta", "yellow"),
}  # every colour but red belongs to two classes, so colour alone does not decide the class


def _demo_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """One cluttered RGB image and its objects (continuous xyxy boxes)."""
    # Background: linear gradient between two muted colours, plus noise and clutter.
    c0, c1 = rng.uniform(60, 190, 3), rng.uniform(60, 190, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)
    bg = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")

    clutter = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(clutter)
    for _ in range(rng.integers(3, 7)):  # soft blobs, 8-18 % of the side
        r = rng.uniform(0.04, 0.09) * size
        cx, cy = rng.uniform(0, size, 2)
        colour = tuple(int(v) for v in rng.uniform(30, 230, 3)) + (int(rng.uniform(60, 140)),)
        draw.ellipse([cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r], fill=colour)
    for _ in range(rng.integers(1, 4)):  # thin strokes
        pts = [tuple(float(v) for v in rng.uniform(0, size, 2)) for _ in range(2)]
        colour = tuple(int(v) for v in rng.uniform(30, 230, 3)) + (110,)
        draw.line(pts, fill=colour, width=max(1, size // 48))
    clutter = clutter.filter(ImageFilter.GaussianBlur(radius=size / 64))
    canvas = Image.alpha_composite(canvas.convert("RGBA"), clutter)

    # Objects drawn at 4x and downsampled for anti-aliased edges.
    scale = 4
    objects: list[dict[str, Any]] = []
    boxes: list[np.ndarray] = []
    for _ in range(rng.integers(1, 4)):
        for _attempt in range(20):
            side = rng.uniform(0.3, 0.55) * size
            x1, y1 = rng.uniform(0, size - side, 2)
            box = np.array([x1, y1, x1 + side, y1 + side])
            # Limit occlusion: a new object covers at most ~10 % of an earlier one.
            if all(_overlap_fraction(b, box) <= 0.10 for b in boxes):
                break
        else:
            continue
        name = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
        base = np.array(_DEMO_COLOURS[_DEMO_PALETTES[name][int(rng.integers(3))]], float)
        colour = np.clip(base + rng.normal(0, 18, 3), 0, 255)
        difficult = bool(rng.random() < 0.06)
        alpha = 90 if difficult else 255  # faint objects are the "difficult" ones
        layer = Image.new("RGBA", (size * scale, size * scale), (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        fill = tuple(int(v) for v in colour) + (alpha,)
        sb = (box * scale).tolist()
        if name == "circle":
            ld.ellipse(sb, fill=fill)
        elif name == "square":
            ld.rectangle(sb, fill=fill)
        else:
            ld.polygon([(sb[0], sb[3]), (sb[2], sb[3]), ((sb[0] + sb[2]) / 2, sb[1])], fill=fill)
        canvas = Image.alpha_composite(canvas, layer.reduce(scale))
        for prev, prev_box in zip(objects, boxes):  # drawn on top of earlier objects
            prev["occluded"] = prev["occluded"] or _overlap_fraction(prev_box, box) > 0
        boxes.append(box)
        objects.append(
            {"name": name, "box": box.tolist(), "difficult": difficult, "occluded": False}
        )

    arr = np.asarray(canvas.convert("RGB"), dtype=np.float64)
    arr += rng.normal(0, 6, arr.shape)  # modest sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB"), objects


def _overlap_fraction(earlier: np.ndarray, later: np.ndarray) -> float:
    """Fraction of ``earlier``'s box area covered by ``later``'s box."""
    iw = max(0.0, min(earlier[2], later[2]) - max(earlier[0], later[0]))
    ih = max(0.0, min(earlier[3], later[3]) - max(earlier[1], later[1]))
    area = (earlier[2] - earlier[0]) * (earlier[3] - earlier[1])
    return float(iw * ih / area) if area > 0 else 0.0
