"""The ``rgb`` adapter: 8-bit photographs with Pascal VOC (XML), MS COCO (JSON), YOLO (txt) or
mask labels (the last ones through the shared labelled-image layer,
:mod:`modalities.formats.collection`).

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

from dsod_core.data.sample import NativeImage, Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_atomic, write_json
from modalities.base import AdapterParams, ModalityAdapter, PrepareLog, SampleRef, assign_split
from modalities.formats.collection import BOX_TOLERANCE_PX as BOX_TOLERANCE_PX  # re-exported
from modalities.formats.collection import clip_boxes, size_mismatch
from modalities.formats.unit_groups import group_for, hash_key
from modalities.rgb import coco, demo, formats, voc
from modalities.rgb.params import RGBParams


def _with_sample(exc: DataError, sample: str) -> DataError:
    """``exc`` naming ``sample`` (the format readers name the file, not the sample)."""
    return exc if exc.sample else DataError(exc.reason, path=exc.path, sample=sample)


class RGBAdapter(ModalityAdapter):
    """8-bit RGB images with Pascal VOC or MS COCO detection annotations.

    Channels: ``["red", "green", "blue"]``, float32 in ``[0, 1]`` (8-bit value / 255).
    World frame: original-image pixels (``affine`` is the identity). Params:
    :class:`modalities.rgb.params.RGBParams`.

    VOC (``root/<year>/{Annotations,JPEGImages,ImageSets/Main}``): the image is
    ``JPEGImages/<filename>`` of the XML, resolved by stem when that file is absent (a
    ``<filename>`` without extension or with another one, or ``<id>.<jpg|png|...>`` as the
    devkit loads); an ``<object>`` without ``<bndbox>`` is no object (counted, one warning);
    an image left without boxes is a background image (counted).

    COCO: categories are mapped to contiguous labels 1..K sorted by category id
    (:attr:`label_to_category_id` maps back); ``iscrowd`` annotations become ``crowd=True``
    boxes (not difficult: neither positives nor negatives in training, ignored ground truth
    in evaluation), dropped with ``keep_difficult: false``; images without annotations are
    kept; zero-width or -height boxes are dropped and counted in
    ``meta["dropped_degenerate"]``; ``class_map`` renames or drops categories by name,
    ``crowd`` and ``unmatched`` handle crowd-only files and annotations of unlisted image ids
    (one warning line each, with counts).

    Collection (``format: collection``): YOLO, plain VOC folders, COCO and masks through the
    shared layer (:mod:`modalities.rgb.collection`).

    Errors: a problem of one image found while listing (its XML, its COCO entry or
    annotations, its path) goes through ``self.log.guard`` (``unit="image"``); a problem of a
    whole file (an image list, a COCO JSON, a split conflict) raises. ``read`` raises for an
    image that does not decode completely, is larger than ``max_pixels`` (from its header,
    before decoding) or whose boxes lie outside it; a size declared by the annotation that
    differs from the decoded image is a warning (the image wins). Images are not
    EXIF-rotated: VOC and COCO annotate the stored pixel grid.
    """

    name: ClassVar[str] = "rgb"
    Params: ClassVar[type[AdapterParams]] = RGBParams
    world_units: ClassVar[str] = "pixel"
    detect_module: ClassVar[str] = "modalities.rgb.detect"
    output_suffixes: ClassVar[tuple[str, ...]] = (".jpg", ".jpeg", ".png")
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
        """The units of the ``format`` param's module (:data:`modalities.rgb.formats.FORMATS`:
        ``voc.discover``, ``coco.discover`` or ``collection.discover``). VOC and COCO images
        get their group from ``group_by`` on the image's path under root (``meta["group"]``;
        an image whose path it does not match is refused through ``self.log.guard``); with
        ``val_fraction`` > 0 their train images go to val by the stable split hash of their
        group, else their id (a collection does both in the shared layer)."""
        refs = formats.FORMATS[self.params.format].discover(self)
        if self.params.format == "collection":  # the layer set groups and hash splits
            return refs
        refs = self._grouped(refs)
        fraction = self.params.val_fraction
        if fraction > 0:
            for ref in refs:
                if ref.split == "train":
                    key = hash_key(ref.ref_id, ref.meta.get("group"))
                    ref.split = assign_split(key, fraction, 0.0, seed=self.params.seed)
        return refs

    def _grouped(self, refs: list[SampleRef]) -> list[SampleRef]:
        """``ref.meta["group"]`` of every VOC or COCO image from ``group_by`` (its image path
        under root); an image whose path has no group goes through ``self.log.guard``."""
        spec = self.params.group_by
        kept = []
        for ref in refs:
            image = ref.paths["image"]
            with self.log.guard(self._display(image), unit="image"):
                ref.meta["group"] = group_for(self.root, image, spec, self._display(image))
                kept.append(ref)
        return kept

    def _display(self, path: Path) -> Path:
        """``path`` (absolute, inside root) shown relative to ``root`` as the user gave it."""
        try:
            return self.root / Path(path).relative_to(os.path.abspath(self.root))
        except ValueError:
            return Path(path)

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

    # --- reading ------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        image_path = ref.paths["image"]
        ann_shown = self._display(ref.paths.get("annotation", image_path))
        image = self._decode(image_path, ref.ref_id)  # [H, W, 3] uint8, fully decoded
        h, w = image.shape[:2]
        # A declared size that disagrees is a warning: the image wins, boxes are checked
        # against it below.
        size_mismatch(self.log, ref.meta.get("declared_size"), (w, h), ann_shown, ref.ref_id)
        boxes = clip_boxes(ref.meta["boxes"], w, h, ann_shown, ref.ref_id)
        meta = {
            "image_id": ref.meta["image_id"],
            "file_name": ref.meta["file_name"],
            "width": w,
            "height": h,
            "format": self.params.format,
        }
        for key in ("year", "skipped_unknown", "dropped_degenerate", "background"):
            if key in ref.meta:
                meta[key] = ref.meta[key]
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        sample = Sample(
            image=chw.astype(np.float32) / 255.0,
            boxes=boxes,
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            difficult=np.asarray(ref.meta["difficult"], dtype=bool),
            crowd=ref.meta.get("crowd"),  # COCO only; None (all False) for VOC
            sample_id=ref.ref_id,
            source=str(self._display(image_path)),
            split=ref.split,
            affine=np.eye(4),
            meta=meta,
            native=NativeImage(chw, divisor=255.0),  # stored as uint8 (docs/store.md)
            group=ref.meta.get("group"),  # group_by (docs/modalities/rgb.md)
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

    # --- what a store or a model brings back ---------------------------------------------
    def use_categories(self, cats: list[tuple[int, str]], json_path: Path) -> None:
        """Take the categories ``[(id, name)]`` (sorted by id) of a COCO JSON as classes
        1..K and their original ids (refused when they are not the ``class_names`` param)."""
        self._set_categories(cats, json_path)

    def state(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "category_ids": [
                self.label_to_category_id[i + 1] for i in range(len(self.class_names))
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Classes (and, when given, their category ids) of a store or a model; without ids
        the labels 1..K stand for them."""
        names = list(state["class_names"])
        ids = state.get("category_ids") or list(range(1, len(names) + 1))
        self._class_names = names
        self._label_to_category = {i + 1: int(c) for i, c in enumerate(ids)}

    # --- back to the world --------------------------------------------------------------
    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
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
