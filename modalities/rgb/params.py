"""The params of the ``rgb`` adapter (VOC devkit, COCO and collection layouts), validated by
:meth:`modalities.base.AdapterParams.parse`.

The collection layout's params (``labels``, ``image_dir``, ``label_dir``, ``split_files``,
``class_map``, ``crowd``, ``unmatched``, ...) are those of the shared labelled-image layer,
:class:`modalities.formats.collection.CollectionParams`, from which :class:`RGBParams`
derives; ``class_map``, ``crowd`` and ``unmatched`` apply to the ``coco`` layout too,
``group_by`` to every layout (on the image's path under root, e.g.
``VOC2007/JPEGImages/000005.jpg`` or ``train2017/seq01/frame_0001.jpg``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import param
from modalities.formats.collection import CollectionParams
from modalities.formats.groups import check_group_by

SPLIT_PARAM = {"train": "train_sets", "val": "val_sets", "test": "test_sets"}
"""Split -> the VOC param listing its ``ImageSets/Main`` lists."""

#: CollectionParams fields only the ``collection`` layout reads (the VOC devkit and COCO
#: layouts have their own split and folder params).
COLLECTION_ONLY = (
    "labels", "image_dir", "label_dir", "coco_json", "names_file", "split_files", "unlisted",
    "test_fraction", "keep_background", "mask_suffix", "mask_min_pixels", "mask_class",
)  # fmt: skip

COCO_JSON_PARAM = {"train": "train_json", "val": "val_json", "test": "test_json"}
"""Split -> the COCO param naming its instances JSON."""


@dataclass(frozen=True)
class RGBParams(CollectionParams):
    """Params of :class:`modalities.rgb.adapter.RGBAdapter`; ``root`` is a VOCdevkit folder
    (``format: voc``), a COCO folder (``format: coco``) or a folder of images with labels in
    any format of the shared layer (``format: collection``, the ``labels`` param)."""

    format: Literal["voc", "coco", "collection"] = param(
        "voc", "dataset layout: VOC devkit, COCO folder, or a collection (labels param)"
    )
    class_names: list[str] | None = param(
        None,
        "names of labels 1..K; null = the 20 VOC classes (voc), the JSON's categories "
        "sorted by id (coco, where a list given must equal those after class_map) or the "
        "classes found (collection)",
    )
    keep_difficult: bool = param(
        True, "keep VOC difficult objects (flagged difficult) and COCO crowd regions (crowd)"
    )
    max_pixels: float = param(
        50e6,
        "refuse an image whose header declares more pixels, checked before decoding",
        min=0,
        min_exclusive=True,
    )
    val_fraction: float = param(
        0.0,
        "move this fraction (in [0, 1)) of the train images to val by a stable hash of the "
        "group (group_by), else the sample id; 0 keeps the dataset's own splits "
        "(collection: of hash-split images)",
        min=0,
        max=1,
    )
    seed: int = param(0, "seed of the val_fraction split hash")
    # VOC
    years: list[str] = param(
        default_factory=lambda: ["VOC2007", "VOC2012"],
        doc="voc: folders under root to combine; ['.'] when root is the VOC folder",
    )
    train_sets: list[str] = param(
        default_factory=lambda: ["trainval"],
        doc="voc: ImageSets/Main lists of the train split ('<name>' or '<year>/<name>')",
    )
    val_sets: list[str] = param(default_factory=list, doc="voc: lists of the val split")
    test_sets: list[str] = param(
        default_factory=lambda: ["VOC2007/test"], doc="voc: lists of the test split"
    )
    unknown_class: Literal["error", "skip"] = param(
        "error",
        "voc, collection: an object whose (mapped) class is not in class_names is an error, "
        "or skipped (counted)",
    )
    # COCO
    train_json: str | None = param(
        "annotations/instances_train2017.json",
        "coco: train instances JSON relative to root (null: no train split)",
    )
    val_json: str | None = param(None, "coco: val instances JSON relative to root")
    test_json: str | None = param(
        "annotations/instances_val2017.json", "coco: test instances JSON relative to root"
    )
    image_dirs: dict[str, str] = param(
        default_factory=lambda: {"train": "train2017", "val": "val2017", "test": "val2017"},
        doc="coco: split -> image folder relative to root that file_name is relative to",
    )

    def check(self) -> None:
        if self.class_names is not None:
            if not self.class_names or not all(self.class_names):
                self.fail("class_names", "must be null or a non-empty list of non-empty names")
            if len(set(self.class_names)) != len(self.class_names):
                self.fail("class_names", f"names must be unique, got {self.class_names}")
        if self.val_fraction >= 1:
            self.fail(
                "val_fraction", f"must be < 1 (some images must train), got {self.val_fraction}"
            )
        if why := check_group_by(self.group_by):  # every layout: the image path under root
            self.fail("group_by", why)
        if self.format == "voc":
            self._check_voc()
        elif self.format == "coco":
            self._check_coco()
        else:
            self.check_collection()
        self._check_unused()

    def _check_unused(self) -> None:
        """A param of another layout, set away from its default, is refused rather than
        silently ignored (``split_files`` with ``format: voc`` would not split anything)."""
        unused = COLLECTION_ONLY if self.format != "collection" else ()
        if self.format != "voc":
            unused += ("years", *SPLIT_PARAM.values())
        if self.format != "coco":
            unused += (*COCO_JSON_PARAM.values(), "image_dirs")
        if self.format == "voc":
            unused += ("crowd", "unmatched", "class_map")
        defaults = type(self)()
        for name in unused:
            if getattr(self, name) != getattr(defaults, name):
                self.fail(
                    name,
                    f"applies to format: collection, not format: {self.format} (set "
                    f"format: collection with labels: ... to use it)"
                    if name in COLLECTION_ONLY
                    else f"does not apply to format: {self.format}",
                )

    def _check_voc(self) -> None:
        if not self.years or not all(self.years):
            self.fail("years", "must be a non-empty list of VOC folders relative to root")
        if len(set(self.years)) != len(self.years):
            self.fail("years", f"folders must be unique, got {self.years}")
        for key in SPLIT_PARAM.values():
            for entry in getattr(self, key):
                year, _, name = entry.rpartition("/")
                if year and year not in self.years:
                    self.fail(key, f"{entry!r} names year {year!r}, not one of years {self.years}")
                if not name or name in (".", ".."):
                    self.fail(key, f"{entry!r} has no list name")
        if not any(getattr(self, key) for key in SPLIT_PARAM.values()):
            self.fail("train_sets", "no image lists given for any split")

    def _check_coco(self) -> None:
        for key in COCO_JSON_PARAM.values():
            if getattr(self, key) == "":
                self.fail(key, "must be null or a path relative to root")
        if not any(getattr(self, key) for key in COCO_JSON_PARAM.values()):
            self.fail("train_json", "no annotation JSON given for any split")
        extra = sorted(set(self.image_dirs) - set(COCO_JSON_PARAM))
        if extra:
            self.fail("image_dirs", f"keys must be train, val or test, got {extra}")
        for split, key in COCO_JSON_PARAM.items():
            if getattr(self, key) and split not in self.image_dirs:
                self.fail("image_dirs", f"no image folder for split {split!r}")
