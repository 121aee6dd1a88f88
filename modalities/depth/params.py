"""The depth adapter's params: one frozen dataclass, validated by :meth:`AdapterParams.parse`.

Types, choices and ranges are declared on the fields; rules that span fields (the valid depth
range, intrinsics given all together, the split fractions) are in :meth:`DepthParams.check`.

:class:`DepthParams` derives from the shared labelled-image layer's params
(:class:`modalities.formats.collection.CollectionParams`): ``labels``, ``label_dir``,
``coco_json``, ``class_map``, ``crowd``, ``unmatched``, ``keep_background``, ``mask_*`` are
read by ``layout: collection``; ``split_files`` and ``unlisted`` by every layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalities.base import param
from modalities.formats.collection import CollectionParams
from modalities.formats.groups import check_group_by

# The folder and file-name params: each must be a non-empty string.
_NAMES = (
    "depth_dir",
    "annotation_dir",
    "rgb_dir",
    "intrinsics_dir",
    "split_dir",
    "coco_file",
    "nyu_file",
    "nyu_depth_key",
    "sunrgbd_annotation",
)


#: Params only the ``collection`` layout reads (the other layouts have their own folders and
#: files); with ``layout: auto`` setting one of them picks ``collection``.
COLLECTION_ONLY = (
    "labels", "image_dir", "label_dir", "coco_json", "names_file", "mask_suffix",
    "mask_min_pixels", "mask_class",
)  # fmt: skip


@dataclass(frozen=True)
class DepthParams(CollectionParams):
    """Params of :class:`modalities.depth.DepthAdapter` (``adapter:`` in ``params.yaml``)."""

    layout: Literal["auto", "voc", "coco", "collection", "nyu", "sunrgbd"] = param(
        "auto",
        "dataset layout; auto: collection when a collection param (labels, label_dir, "
        "coco_json, ...) is set, else NYU `.mat`, else VOC `Annotations/`, else COCO JSON, "
        "else SUN RGB-D scene folders; collection: the labels param (voc/coco/yolo/masks/none)",
    )
    image_dir: str | None = param(
        None, "collection: folder of the depth maps relative to root (recursive); null: depth_dir"
    )
    label_dir: str | None = param(
        None,
        "collection: folder of the labels relative to root; null: annotation_dir (voc), "
        "labels (yolo), masks (masks)",
    )
    coco_json: dict[str, str] = param(
        default_factory=dict,
        doc="collection, coco: split (train/val/test, or 'all') -> instances JSON relative to "
        "root; empty: {all: <coco_file>}",
    )
    encoding: Literal["depth", "disparity", "normals", "hha", "rgbd"] = param(
        "depth", "channels the detector sees (normals and hha need intrinsics, rgbd colour)"
    )
    validity_channel: bool = param(False, "append a 0/1 channel `depth_valid` (1 = measured)")
    depth_unit: Literal["auto", "mm", "m"] = param(
        "auto", "unit of the raw values; auto: mm for integer images, m for float data"
    )
    depth_scale: float = param(
        1.0,
        "extra factor on raw values (0.125 for depth stored as mm << 3)",
        min=0.0,
        min_exclusive=True,
    )
    min_depth_m: float = param(
        0.1,
        "nearest valid depth (m); nearer readings count as missing",
        min=0.0,
        min_exclusive=True,
    )
    max_depth_m: float = param(
        10.0,
        "farthest valid depth (m); farther readings count as missing",
        min=0.0,
        min_exclusive=True,
    )
    fx: float | None = param(
        None,
        "focal length x (px); with fy, cx, cy overrides intrinsics files",
        min=0.0,
        min_exclusive=True,
    )
    fy: float | None = param(None, "focal length y (px)", min=0.0, min_exclusive=True)
    cx: float | None = param(None, "principal point x (px, OpenCV pixel-centre convention)")
    cy: float | None = param(None, "principal point y (px, OpenCV pixel-centre convention)")
    class_names: list[str] | None = param(
        None,
        "names of labels 1..K; null: VOC sorted names found, COCO categories, NYU and SUN RGB-D "
        "the 19 furniture classes, collection the classes found (class_map applied)",
    )
    keep_difficult: bool = param(
        True,
        "keep VOC difficult objects (flagged difficult) and, in the coco layout, COCO crowd "
        "regions (crowd; collection: the crowd param)",
    )
    depth_dir: str = param("depth", "folder of depth maps `<id>.{png,npy,tif,tiff}`")
    annotation_dir: str = param("Annotations", "folder of VOC XML annotations (voc layout)")
    rgb_dir: str = param("rgb", "folder of aligned colour images `<id>.{png,jpg,jpeg}`")
    intrinsics_dir: str = param("intrinsics", "folder of per-image intrinsics `<id>.{json,txt}`")
    split_dir: str = param(
        "ImageSets/Main",
        "folder of split lists `{train,val,test}.txt` (every layout; split_files overrides)",
    )
    coco_file: str = param("annotations.json", "COCO JSON of the coco layout")
    nyu_file: str = param("nyu_depth_v2_labeled.mat", "NYU Depth v2 labelled file (nyu layout)")
    nyu_depth_key: str = param(
        "depths", "NYU dataset holding the depth (`rawDepths`: raw, with holes)"
    )
    sunrgbd_annotation: str = param(
        "annotation2Dfinal/index.json",
        "2D polygon annotation JSON inside each SUN RGB-D scene folder (sunrgbd layout)",
    )
    sunrgbd_name_map: dict[str, str] = param(
        default_factory=dict,
        doc="SUN RGB-D object name -> class name, e.g. {tv: television} (names compared "
        "lower-case, `_` as space)",
    )
    sunrgbd_unshift: bool = param(
        True, "undo the toolbox's 3-bit circular shift of SUN RGB-D depth PNGs (mm)"
    )
    normal_smoothing_px: float = param(
        1.0, "Gaussian sigma (px) on depth before normals; 0 = none", min=0.0
    )
    val_fraction: float = param(0.15, "hash-split share of val (when no split lists)", min=0, max=1)
    test_fraction: float = param(
        0.15, "hash-split share of test (1: an evaluation-only dataset)", min=0, max=1
    )
    seed: int = param(0, "seed of the hash split")
    group_by: str | None = param(
        None,
        "independence unit of a frame, kept whole by splits, subsets and intervals: null = "
        "NYU its room (`scenes`), SUN RGB-D its recording, else the frame; 'folder', "
        "'folder:N' or a regex (first capture group) on its path: voc the XML, coco the "
        "file_name, collection the depth map, sunrgbd the scene folder, nyu <scene>/nyu_<iiii>",
    )
    max_pixels: float = param(
        50e6,
        "refuse a depth or colour image whose header declares more pixels",
        min=0.0,
        min_exclusive=True,
    )

    def check(self) -> None:
        if not self.min_depth_m < self.max_depth_m:
            self.fail(
                "min_depth_m",
                f"need min_depth_m < max_depth_m, got {self.min_depth_m} >= {self.max_depth_m}",
            )
        given = [k for k in ("fx", "fy", "cx", "cy") if getattr(self, k) is not None]
        if given and len(given) != 4:
            missing = [k for k in ("fx", "fy", "cx", "cy") if k not in given]
            self.fail(given[0], f"give all of fx, fy, cx, cy or none (missing {missing})")
        names = self.class_names
        if names is not None and (not names or not all(names) or len(set(names)) != len(names)):
            self.fail(
                "class_names", f"must be a non-empty list of distinct names or null, got {names!r}"
            )
        if names is not None and self.sunrgbd_name_map:
            from modalities.depth.sunrgbd import normalise

            known = {normalise(n) for n in names}
            bad = sorted(v for v in self.sunrgbd_name_map.values() if normalise(v) not in known)
            if bad:
                self.fail("sunrgbd_name_map", f"maps to names not in class_names: {bad}")
        if why := check_group_by(self.group_by):
            self.fail("group_by", why)
        if self.val_fraction + self.test_fraction > 1:
            # == 1 is an evaluation-only dataset (no train split; to score a trained model)
            self.fail("val_fraction", "val_fraction + test_fraction must be <= 1")
        for key in _NAMES:
            if not getattr(self, key):
                self.fail(key, "must be a non-empty string")
        if self.layout not in ("auto", "collection"):
            for key in COLLECTION_ONLY:
                if getattr(self, key) != getattr(type(self)(), key):
                    self.fail(key, f"applies to layout: collection, not layout: {self.layout}")
        # The shared layer's rules (split_files / coco_json keys, labels: coco or masks); the
        # split fractions and class names were checked above with depth's own rules.
        self.replace(
            image_dir=self.image_dir or self.depth_dir,
            coco_json=self.coco_json or {"all": self.coco_file},
            val_fraction=0.0,
            test_fraction=0.0,
        ).check_collection()
