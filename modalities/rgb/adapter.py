"""The ``rgb`` adapter: 8-bit photographs with Pascal VOC (XML) or MS COCO (JSON) boxes.

The RGB baselines of the paper (VOC 07+12, COCO) and the source domain for fine-tuning. Images
are decoded with Pillow to 8-bit RGB and stored as float32 ``[3, H, W]`` in ``[0, 1]`` at their
original resolution; no ImageNet statistics are applied anywhere (the store computes the
per-channel mean/std of the train split). ``Sample.affine`` is the identity: stored pixels are
original-image pixels, so predictions exported in pixels are already in original coordinates.

Boxes are continuous, 0-based, ``x2``/``y2`` exclusive (:mod:`modalities.rgb.voc` and
:mod:`modalities.rgb.coco` convert the formats' conventions). A box may stick out of its image
by at most :data:`BOX_TOLERANCE_PX` (annotation tools and rounding produce such boxes, e.g.
VOC ``xmin = 0``); it is clipped to the image. A box further outside, or inverted, is a
:class:`DataError` naming the annotation file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_atomic, write_json
from modalities.base import AdapterParams, ModalityAdapter, PrepareLog, SampleRef, assign_split
from modalities.rgb import coco, demo, voc
from modalities.rgb.params import COCO_JSON_PARAM, SPLIT_PARAM, RGBParams

BOX_TOLERANCE_PX = 1.0
"""How far (pixels) a box may extend beyond the image before it is an error; it is clipped."""


def _with_sample(exc: DataError, sample: str) -> DataError:
    """``exc`` naming ``sample`` (the format readers name the file, not the sample)."""
    return exc if exc.sample else DataError(exc.reason, path=exc.path, sample=sample)


class RGBAdapter(ModalityAdapter):
    """8-bit RGB images with Pascal VOC or MS COCO detection annotations.

    Channels: ``["red", "green", "blue"]``, float32 in ``[0, 1]`` (8-bit value / 255).
    World frame: original-image pixels (``affine`` is the identity). Params:
    :class:`modalities.rgb.params.RGBParams`.

    VOC (``root/<year>/{Annotations,JPEGImages,ImageSets/Main}``): the image is
    ``JPEGImages/<filename>`` of the XML (``<id>.jpg`` when that file is absent, as the devkit
    loads). COCO: categories are mapped to contiguous labels 1..K sorted by category id
    (:attr:`label_to_category_id` maps back); ``iscrowd`` annotations become ``crowd=True``
    boxes (not difficult: neither positives nor negatives in training, ignored ground truth in
    evaluation), dropped with ``keep_difficult: false``; images without annotations are kept;
    zero-width or -height boxes are dropped and counted in ``meta["dropped_degenerate"]``.

    Errors: a problem of one image found while listing (its XML, its COCO entry or
    annotations, its path) goes through ``self.log.guard`` (``unit="image"``); a problem of a
    whole file (an image list, a COCO JSON, a split conflict) raises. ``read`` raises for an
    image that does not decode completely, is larger than ``max_pixels`` (from its header,
    before decoding) or does not match its annotation. Images are not EXIF-rotated: VOC and
    COCO annotate the stored pixel grid.
    """

    name: ClassVar[str] = "rgb"
    Params: ClassVar[type[AdapterParams]] = RGBParams
    world_units: ClassVar[str] = "pixel"
    detect_module: ClassVar[str] = "modalities.rgb.detect"
    params: RGBParams

    def __init__(
        self,
        root: str | os.PathLike,
        params: Mapping[str, Any] | AdapterParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        super().__init__(root, params, log=log)
        self._class_names: list[str] | None = None
        self._label_to_category: dict[int, int] | None = None
        if self.params.format == "voc":
            self._class_names = list(self.params.class_names or voc.VOC_CLASSES)
            self._label_to_category = {i + 1: i + 1 for i in range(len(self._class_names))}

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
        refs = self._discover_voc() if self.params.format == "voc" else self._discover_coco()
        fraction = self.params.val_fraction
        if fraction > 0:
            for ref in refs:
                if ref.split == "train":
                    ref.split = assign_split(ref.ref_id, fraction, 0.0, seed=self.params.seed)
        return refs

    def _display(self, path: Path) -> Path:
        """``path`` (absolute, inside root) shown relative to ``root`` as the user gave it."""
        try:
            return self.root / Path(path).relative_to(os.path.abspath(self.root))
        except ValueError:
            return Path(path)

    def _discover_voc(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        root_file = self.root  # blamed when a configured (not annotated) path escapes
        for year in self.params.years:
            year_dir = self.resolve_inside_root(year, root_file)
            if not year_dir.is_dir():
                raise DataError("VOC folder listed in 'years' does not exist", path=year_dir)
            split_of: dict[str, tuple[str, Path]] = {}
            for split, key in SPLIT_PARAM.items():
                for entry in getattr(self.params, key):
                    entry_year, _, name = entry.rpartition("/")
                    if entry_year and entry_year != year:
                        continue
                    list_path = self.resolve_inside_root(
                        Path(year) / "ImageSets" / "Main" / f"{name}.txt", root_file
                    )
                    shown = self._display(list_path)
                    for image_id in voc.read_image_set(list_path, shown=shown):
                        seen = split_of.get(image_id)
                        if seen is not None and seen[0] != split:
                            raise DataError(
                                f"image {image_id!r} is listed for split {split!r} here and "
                                f"for {seen[0]!r} in {self._display(seen[1])}",
                                path=shown,
                            )
                        split_of[image_id] = (split, list_path)
            for image_id, (split, list_path) in split_of.items():
                xml_rel = Path(year) / "Annotations" / f"{image_id}.xml"
                sample_id = image_id if year == "." else f"{year}/{image_id}"
                with self.log.guard(self.root / xml_rel, unit="image"):
                    try:
                        xml_path = self.resolve_inside_root(xml_rel, self._display(list_path))
                        refs.append(self._voc_ref(year, image_id, sample_id, split, xml_path))
                    except DataError as exc:
                        raise _with_sample(exc, sample_id) from None
        return refs

    def _voc_ref(
        self, year: str, image_id: str, sample_id: str, split: str, xml_path: Path
    ) -> SampleRef:
        shown = self._display(xml_path)
        ann = voc.parse_voc_xml(xml_path, shown=shown)

        filename = ann["filename"] or f"{image_id}.jpg"
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

        index = {name: i + 1 for i, name in enumerate(self.class_names)}
        boxes, labels, difficult, unknown = [], [], [], []
        for obj in ann["objects"]:
            if obj["name"] not in index:
                if self.params.unknown_class == "error":
                    raise DataError(
                        f"unknown class {obj['name']!r} (class_names: {self.class_names})",
                        path=shown,
                    )
                unknown.append(obj["name"])
                continue
            if obj["difficult"] and not self.params.keep_difficult:
                continue
            boxes.append(obj["box"])
            labels.append(index[obj["name"]])
            difficult.append(obj["difficult"])
        if unknown:
            self.log.warn(
                f"{len(unknown)} object(s) of unknown class {sorted(set(unknown))} skipped "
                "(unknown_class: skip)",
                shown,
                sample_id,
            )
        return SampleRef(
            ref_id=sample_id,
            split=split,
            paths={"image": image_path, "annotation": xml_path},
            meta={
                "image_id": image_id,
                "year": year,
                "file_name": filename,
                "declared_size": ann["size"],
                "boxes": boxes,
                "labels": labels,
                "difficult": difficult,
                "skipped_unknown": len(unknown),
            },
        )

    def _discover_coco(self) -> list[SampleRef]:
        refs: list[SampleRef] = []
        categories: list[tuple[int, str]] | None = None
        category_file: Path | None = None
        owner: dict[int, tuple[str, Path]] = {}
        for split, key in COCO_JSON_PARAM.items():
            rel = getattr(self.params, key)
            if not rel:
                continue
            json_path = self.resolve_inside_root(rel, self.root)
            data, cats = coco.load_coco_json(json_path, shown=self._display(json_path))
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
        wanted = self.params.class_names
        if wanted is not None and list(wanted) != names:
            raise ConfigError(
                f"param class_names {list(wanted)} differ from the categories sorted by id "
                f"{names} of {self._display(json_path)}"
            )
        self._class_names = names
        self._label_to_category = {i + 1: cid for i, (cid, _) in enumerate(cats)}

    def _coco_refs(self, data: dict[str, Any], split: str, json_path: Path) -> list[SampleRef]:
        shown = self._display(json_path)
        label_of = {cid: lab for lab, cid in self.label_to_category_id.items()}
        image_dir = Path(self.params.image_dirs[split])

        listed = [img.get("id") for img in data["images"] if isinstance(img, dict)]
        listed = [i for i in listed if isinstance(i, int) and not isinstance(i, bool)]
        seen: set[int] = set()
        for image_id in listed:  # which of two entries is the right one: the file's fault
            if image_id in seen:
                raise DataError(f"duplicate image id {image_id}", path=shown)
            seen.add(image_id)

        images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            with self.log.guard(shown, unit="image"):
                entry = coco.parse_image_entry(img, shown)
                sample = coco.coco_sample_id(entry["id"])
                try:
                    image_path = self.resolve_inside_root(image_dir / entry["file_name"], shown)
                except DataError as exc:
                    raise _with_sample(exc, sample) from None
                if not image_path.is_file():
                    raise DataError(
                        f"image {self._display(image_path)} not found", path=shown, sample=sample
                    )
                images[entry["id"]] = {
                    "path": image_path,
                    "file_name": entry["file_name"],
                    "declared_size": entry["declared_size"],
                    "boxes": [],
                    "labels": [],
                    "difficult": [],
                    "crowd": [],
                    "dropped_degenerate": 0,
                }

        for ann in data["annotations"]:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                raise DataError(f"malformed annotation {str(ann)[:200]}", path=shown)
            if image_id not in seen:
                raise DataError(
                    f"annotation {ann.get('id')} refers to unknown image id {image_id}",
                    path=shown,
                )
            entry = images.get(image_id)
            if entry is None:  # that image's own entry was refused (and recorded) above
                continue
            with self.log.guard(shown, unit="image"):
                try:
                    parsed = coco.parse_annotation(ann, shown)
                    label = label_of.get(parsed["category_id"])
                    if label is None:
                        raise DataError(
                            f"annotation {ann.get('id')} has unknown category id "
                            f"{parsed['category_id']}",
                            path=shown,
                            sample=coco.coco_sample_id(image_id),
                        )
                except DataError:
                    del images[image_id]  # the image goes, whatever the log decides
                    raise
                if parsed["box"] is None:
                    entry["dropped_degenerate"] += 1
                elif not parsed["crowd"] or self.params.keep_difficult:
                    entry["boxes"].append(parsed["box"])
                    entry["labels"].append(label)
                    entry["difficult"].append(False)
                    entry["crowd"].append(parsed["crowd"])

        return [
            SampleRef(
                ref_id=coco.coco_sample_id(image_id),
                split=split,
                paths={"image": entry.pop("path"), "annotation": json_path},
                meta={"image_id": image_id, **entry},
            )
            for image_id, entry in images.items()
        ]

    # --- reading ------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        image_path = ref.paths["image"]
        ann_shown = self._display(ref.paths["annotation"])
        image = self._decode(image_path, ref.ref_id)  # [H, W, 3] uint8, fully decoded
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
            "format": self.params.format,
        }
        for key in ("year", "skipped_unknown", "dropped_degenerate"):
            if key in ref.meta:
                meta[key] = ref.meta[key]
        sample = Sample(
            image=np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0,
            boxes=boxes,
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            difficult=np.asarray(ref.meta["difficult"], dtype=bool),
            crowd=ref.meta.get("crowd"),  # COCO only; None (all False) for VOC
            sample_id=ref.ref_id,
            source=str(self._display(image_path)),
            split=ref.split,
            affine=np.eye(4),
            meta=meta,
        )
        sample.validate(num_channels=3, num_classes=len(self.class_names))
        yield sample

    def _decode(self, path: Path, sample_id: str) -> np.ndarray:
        """Decode a whole image to uint8 ``[H, W, 3]``; its size is checked from the header
        first. Any decode problem (truncated, not an image, 16-bit) raises DataError."""
        shown = self._display(path)
        try:
            with warnings.catch_warnings():
                # Our own max_pixels check below replaces Pillow's warning.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size  # from the header: nothing decoded yet
                    self.check_declared_size(
                        shown, w * h, self.params.max_pixels, f"{w} x {h} px", "max_pixels"
                    )
                    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                        raise DataError(
                            f"image mode {im.mode!r} is not 8-bit; the rgb adapter reads 8-bit "
                            "images (use the depth adapter for 16-bit data)",
                            path=shown,
                        )
                    # Pillow decodes lazily: load() decodes every pixel now, so a truncated
                    # file raises here instead of leaving a partly grey image behind.
                    im.load()
                    rgb = im.convert("RGB")  # grey, palette, RGBA (alpha dropped), CMYK
        except DataError as exc:
            raise _with_sample(exc, sample_id) from None
        except FileNotFoundError:
            raise DataError("image file not found", path=shown, sample=sample_id) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot decode image: {exc}", path=shown, sample=sample_id) from None
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

        results = write_json(
            out_dir / "coco_results.json", coco.to_coco_results(items, mapping), indent=None
        )
        cats = [{"id": mapping[i + 1], "name": n} for i, n in enumerate(self.class_names)]
        categories = write_json(out_dir / "categories.json", cats, indent=1)
        written += [results, categories]

        if self.params.format == "voc":
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
                written.append(write_atomic(path, "\n".join(rows) + "\n"))
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
        """The synthetic VOC set of :mod:`modalities.rgb.demo` under ``out_dir``; returns the
        params that read it with ``root=out_dir``."""
        return demo.write_demo(out_dir, num_images=num_images, image_size=image_size, seed=seed)
