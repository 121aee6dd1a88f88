"""The ``depth`` adapter: RGB-D sensor depth maps (Kinect/RealSense, NYU Depth v2, SUN RGB-D).

Layouts under ``root`` (param ``layout``; ``auto`` picks the first that exists):

* ``nyu``: the NYU Depth v2 labelled file ``<nyu_file>`` (HDF5); boxes are the tight boxes of
  the instance masks, class names come from the file, restricted to ``classes``.
* ``voc``: ``<annotation_dir>/<id>.xml`` VOC boxes, each paired by name with
  ``<depth_dir>/<id>.{png,npy,tif,tiff}`` (the stem of the XML's ``<filename>``, else of the XML);
  optional ``<rgb_dir>/<id>.{png,jpg}``, ``<intrinsics_dir>/<id>.{json,txt}`` and split lists
  ``<split_dir>/{train,val,test}.txt``.
* ``coco``: ``<coco_file>`` COCO JSON; each image's ``file_name`` stem names the depth file.

Depth is converted to metres: ``metres = raw * unit * depth_scale`` with ``unit`` 0.001 for
``depth_unit: mm`` and 1 for ``m`` (``auto``: mm for integer images, m for float data). Pixels
with no reading (0, NaN, inf) or outside ``[min_depth_m, max_depth_m]`` are invalid: they are
filled with the nearest valid depth, left out of the store's statistics (``Sample.valid``) and,
with ``validity_channel: true``, flagged in an extra 0/1 channel. There is no world frame beyond
the image, so ``Sample.affine`` is the identity (world = pixels of the depth map); the camera
frame lives in :meth:`DepthAdapter.export_predictions`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.data.sample import SPLITS, Sample
from dsod_core.errors import ConfigError, DataError
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.depth import formats
from modalities.depth.encodings import (
    ENCODING_CHANNELS,
    NEEDS_INTRINSICS,
    VALIDITY_CHANNEL,
    Intrinsics,
    encode,
    fill_missing,
)

# The 19 furniture classes of Gupta et al. (ECCV 2014) NYUD2 detection, as spelled in the
# labelled file's ``names``.
NYU_DEFAULT_CLASSES = [
    "bathtub", "bed", "bookshelf", "box", "chair", "counter", "desk", "door", "dresser",
    "garbage bin", "lamp", "monitor", "night stand", "pillow", "sink", "sofa", "table",
    "television", "toilet",
]  # fmt: skip
# Colour camera intrinsics of the NYU Depth v2 toolbox (camera_params.m); the labelled depth
# maps are registered to the colour camera.
NYU_INTRINSICS = Intrinsics(518.8579, 519.4696, 325.5824, 253.7362)
_LAYOUTS = ("auto", "voc", "coco", "nyu")
_UNITS = {"mm": 0.001, "m": 1.0}


class DepthAdapter(ModalityAdapter):
    """Depth maps -> canonical samples in one of the encodings of :data:`ENCODING_CHANNELS`."""

    name = "depth"
    world_units = "pixel"
    param_defaults = {
        "layout": "auto",
        "encoding": "depth",
        "validity_channel": False,
        "depth_unit": "auto",
        "depth_scale": 1.0,
        "min_depth_m": 0.1,
        "max_depth_m": 10.0,
        "fx": None,
        "fy": None,
        "cx": None,
        "cy": None,
        "classes": None,
        "depth_dir": "depth",
        "annotation_dir": "Annotations",
        "rgb_dir": "rgb",
        "intrinsics_dir": "intrinsics",
        "split_dir": "ImageSets/Main",
        "coco_file": "annotations.json",
        "nyu_file": "nyu_depth_v2_labeled.mat",
        "nyu_depth_key": "depths",
        "normal_smoothing_px": 1.0,
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "split_seed": 0,
        "max_pixels": 50_000_000,  # decompression-bomb guard on declared image sizes
    }

    def __init__(self, root: str | Path, params: Mapping[str, Any] | None = None):
        super().__init__(root, params)
        self._class_names: list[str] | None = None
        self._layout: str | None = None

    # --- params -----------------------------------------------------------------------------
    def _check_params(self) -> None:
        p = self.params

        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"depth adapter param {key}={p[key]!r}: {why}")

        try:
            if float(p["max_pixels"]) <= 0:
                raise ValueError
        except (TypeError, ValueError):
            raise bad("max_pixels", "must be a positive number") from None

        if p["layout"] not in _LAYOUTS:
            raise bad("layout", f"must be one of {list(_LAYOUTS)}")
        if p["encoding"] not in ENCODING_CHANNELS:
            raise bad("encoding", f"must be one of {sorted(ENCODING_CHANNELS)}")
        if not isinstance(p["validity_channel"], bool):
            raise bad("validity_channel", "must be true or false")
        if p["depth_unit"] not in ("auto", "mm", "m"):
            raise bad("depth_unit", "must be 'auto', 'mm' or 'm'")
        for key in ("depth_scale", "min_depth_m", "max_depth_m", "normal_smoothing_px"):
            if isinstance(p[key], bool) or not isinstance(p[key], int | float):
                raise bad(key, "must be a number")
        if not p["depth_scale"] > 0:
            raise bad("depth_scale", "must be > 0")
        if not 0 < p["min_depth_m"] < p["max_depth_m"]:
            raise bad("min_depth_m", f"need 0 < min_depth_m < max_depth_m={p['max_depth_m']}")
        if p["normal_smoothing_px"] < 0:
            raise bad("normal_smoothing_px", "must be >= 0")
        given = [k for k in ("fx", "fy", "cx", "cy") if p[k] is not None]
        if given and len(given) != 4:
            raise bad(given[0], "give all of fx, fy, cx, cy or none")
        for key in given:
            if isinstance(p[key], bool) or not isinstance(p[key], int | float):
                raise bad(key, "must be a number")
        if given and (p["fx"] <= 0 or p["fy"] <= 0):
            raise bad("fx", "fx and fy must be > 0")
        if p["classes"] is not None and (
            not isinstance(p["classes"], list | tuple)
            or not p["classes"]
            or not all(isinstance(c, str) and c for c in p["classes"])
            or len(set(p["classes"])) != len(p["classes"])
        ):
            raise bad("classes", "must be a non-empty list of distinct names, or null")
        for key in ("val_fraction", "test_fraction"):
            if (
                isinstance(p[key], bool)
                or not isinstance(p[key], int | float)
                or not 0 <= p[key] < 1
            ):
                raise bad(key, "must be a number in [0, 1)")
        if p["val_fraction"] + p["test_fraction"] >= 1:
            raise bad("val_fraction", "val_fraction + test_fraction must be < 1")
        for key in (
            "depth_dir",
            "annotation_dir",
            "rgb_dir",
            "intrinsics_dir",
            "split_dir",
            "coco_file",
            "nyu_file",
            "nyu_depth_key",
        ):
            if not isinstance(p[key], str) or not p[key]:
                raise bad(key, "must be a non-empty string")
        if not isinstance(p["split_seed"], int) or isinstance(p["split_seed"], bool):
            raise bad("split_seed", "must be an integer")

    # --- what the data looks like -----------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        names = list(ENCODING_CHANNELS[self.params["encoding"]])
        if self.params["validity_channel"]:
            names.append(VALIDITY_CHANNEL)
        return names

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            if self.params["classes"] is not None:
                return list(self.params["classes"])
            raise ConfigError("depth adapter: class names are known after discover()")
        return list(self._class_names)

    # --- discovery --------------------------------------------------------------------------
    def _resolve_layout(self) -> str:
        layout = self.params["layout"]
        if layout != "auto":
            return layout
        if (self.root / self.params["nyu_file"]).is_file():
            return "nyu"
        if (self.root / self.params["annotation_dir"]).is_dir():
            return "voc"
        if (self.root / self.params["coco_file"]).is_file():
            return "coco"
        raise DataError(
            f"no depth dataset found: expected {self.params['nyu_file']} (NYU), "
            f"{self.params['annotation_dir']}/ (VOC XML) or {self.params['coco_file']} (COCO)",
            path=self.root,
        )

    def discover(self) -> list[SampleRef]:
        """List samples with their split. Checks that every annotation's depth file exists."""
        self._layout = self._resolve_layout()
        if self._layout == "nyu":
            return self._discover_nyu()
        if self._layout == "voc":
            return self._discover_voc()
        return self._discover_coco()

    def _find_depth(self, stem: str, referenced_from: Path) -> Path:
        depth_dir = self.resolve_inside_root(self.params["depth_dir"], referenced_from)
        for ext in formats.DEPTH_EXTENSIONS:
            cand = self.resolve_inside_root(depth_dir / f"{stem}{ext}", referenced_from)
            if cand.is_file():
                return cand
        raise DataError(
            f"names depth map {stem!r} but no {depth_dir / stem}"
            f"{{{','.join(formats.DEPTH_EXTENSIONS)}}} exists",
            path=referenced_from,
        )

    def _optional(
        self, folder: str, stem: str, exts: tuple[str, ...], ref_from: Path
    ) -> Path | None:
        base = self.resolve_inside_root(folder, ref_from)
        for ext in exts:
            cand = base / f"{stem}{ext}"
            if cand.is_file():
                return self.resolve_inside_root(cand, ref_from)
        return None

    def _paths_for(self, stem: str, ref_from: Path) -> dict[str, Path]:
        paths = {"depth": self._find_depth(stem, ref_from), "annotation": ref_from}
        rgb = self._optional(self.params["rgb_dir"], stem, formats.RGB_EXTENSIONS, ref_from)
        if rgb is not None:
            paths["rgb"] = rgb
        intr = self._optional(self.params["intrinsics_dir"], stem, (".json", ".txt"), ref_from)
        if intr is None:
            intr = self._optional(".", "intrinsics", (".json", ".txt"), ref_from)
        if intr is not None:
            paths["intrinsics"] = intr
        return paths

    def _split_lists(self) -> dict[str, str]:
        split_dir = self.root / self.params["split_dir"]
        out: dict[str, str] = {}
        for split in SPLITS:
            f = split_dir / f"{split}.txt"
            if f.is_file():
                for line in f.read_text().split():
                    out[line.strip()] = split
        return out

    def _split(self, key: str, lists: dict[str, str]) -> str:
        if lists:
            return lists.get(key, "__skip__")  # an id in no list is not part of the dataset
        p = self.params
        return assign_split(key, p["val_fraction"], p["test_fraction"], p["split_seed"])

    def _set_classes(self, found: list[str]) -> None:
        self._class_names = list(self.params["classes"]) if self.params["classes"] else found

    def _discover_voc(self) -> list[SampleRef]:
        ann_dir = self.root / self.params["annotation_dir"]
        xmls = sorted(ann_dir.glob("*.xml"))
        if not xmls:
            raise DataError("no VOC XML annotations (*.xml) found", path=ann_dir)
        lists = self._split_lists()
        refs, names = [], set()
        for xml in xmls:
            ann = formats.parse_voc(xml)
            stem = Path(ann["filename"]).stem if ann["filename"] else xml.stem
            split = self._split(xml.stem, lists)
            if split == "__skip__":
                continue
            names.update(o["name"] for o in ann["objects"])
            refs.append(
                SampleRef(xml.stem, split, self._paths_for(stem, xml), {"objects": ann["objects"]})
            )
        self._set_classes(sorted(names))
        return refs

    def _discover_coco(self) -> list[SampleRef]:
        path = self.root / self.params["coco_file"]
        coco = formats.parse_coco(path)
        cat_name = dict(coco["categories"])
        refs = []
        for im in sorted(coco["images"], key=lambda im: im["id"]):
            stem = Path(im["file_name"]).stem
            objects = []
            for o in im["objects"]:
                if o["category_id"] not in cat_name:
                    raise DataError(
                        f"image {im['file_name']!r}: unknown category_id {o['category_id']}",
                        path=path,
                    )
                objects.append({**o, "name": cat_name[o["category_id"]]})
            p = self.params
            split = assign_split(stem, p["val_fraction"], p["test_fraction"], p["split_seed"])
            refs.append(SampleRef(stem, split, self._paths_for(stem, path), {"objects": objects}))
        self._set_classes([name for _, name in coco["categories"]])
        return refs

    def _discover_nyu(self) -> list[SampleRef]:
        path = self.resolve_inside_root(self.params["nyu_file"], self.root)
        need = (*formats.NYU_REQUIRED, self.params["nyu_depth_key"])
        if self.params["encoding"] == "rgbd":
            need = (*need, "images")
        with formats.nyu_open(path, tuple(dict.fromkeys(need))) as f:
            file_names = formats.nyu_class_names(f, path)
            n = int(f[self.params["nyu_depth_key"]].shape[0])
        self._class_names = list(self.params["classes"] or NYU_DEFAULT_CLASSES)
        p = self.params
        return [
            SampleRef(
                f"nyu_{i:04d}",
                assign_split(
                    f"nyu_{i:04d}", p["val_fraction"], p["test_fraction"], p["split_seed"]
                ),
                {"nyu": path},
                {"index": i, "file_names": file_names},
            )
            for i in range(n)
        ]

    # --- reading ----------------------------------------------------------------------------
    def _intrinsics(self, ref: SampleRef) -> Intrinsics | None:
        p = self.params
        if p["fx"] is not None:
            return Intrinsics(float(p["fx"]), float(p["fy"]), float(p["cx"]), float(p["cy"]))
        if "intrinsics" in ref.paths:
            return formats.read_intrinsics(ref.paths["intrinsics"])
        if "nyu" in ref.paths:
            return NYU_INTRINSICS
        return None

    def _to_metres(self, raw: np.ndarray, natural_unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw values -> (depth metres ``[H, W]`` float64 with 0 where invalid, valid mask)."""
        p = self.params
        unit = natural_unit if p["depth_unit"] == "auto" else p["depth_unit"]
        with np.errstate(invalid="ignore", over="ignore"):
            metres = raw * (_UNITS[unit] * float(p["depth_scale"]))
            valid = (
                np.isfinite(metres) & (metres >= p["min_depth_m"]) & (metres <= p["max_depth_m"])
            )
        return np.where(valid, metres, 0.0), valid

    def load_depth(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Depth of one ref in metres: ``(depth [H, W] float64, 0 where invalid; valid [H, W]
        bool; extras)``; extras hold NYU labels/instances/rgb when the ref is an NYU frame."""
        if "nyu" in ref.paths:
            path = ref.paths["nyu"]
            need = (*formats.NYU_REQUIRED, self.params["nyu_depth_key"])
            with formats.nyu_open(path, tuple(dict.fromkeys(need))) as f:
                try:
                    frame = formats.nyu_read_image(
                        f,
                        ref.meta["index"],
                        self.params["nyu_depth_key"],
                        with_rgb=self.params["encoding"] == "rgbd",
                    )
                except (KeyError, IndexError, ValueError, OSError) as exc:
                    raise DataError(f"frame {ref.meta['index']}: {exc}", path=path) from exc
            depth, valid = self._to_metres(frame.pop("depth"), "m")
            return depth, valid, frame
        raw, unit = formats.read_depth_raw(ref.paths["depth"], float(self.params["max_pixels"]))
        depth, valid = self._to_metres(raw, unit)
        return depth, valid, {}

    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """One depth map -> one :class:`Sample` ``[C, H, W]`` in the configured encoding."""
        if self._class_names is None and self.params["classes"] is None:
            raise ConfigError("depth adapter: call discover() before read()")
        source = ref.paths.get("depth", ref.paths.get("nyu"))
        depth, valid, extras = self.load_depth(ref)
        if not valid.any():
            raise DataError(
                f"no valid depth reading in [{self.params['min_depth_m']}, "
                f"{self.params['max_depth_m']}] m (check depth_unit / depth_scale)",
                path=source,
                sample=ref.ref_id,
            )
        h, w = depth.shape
        filled = fill_missing(depth, valid)
        k = self._intrinsics(ref)
        encoding = self.params["encoding"]
        if encoding in NEEDS_INTRINSICS and k is None:
            raise DataError(
                f"encoding {encoding!r} needs camera intrinsics: set fx, fy, cx, cy or write "
                f"{self.params['intrinsics_dir']}/{ref.ref_id}.json or intrinsics.json in root",
                path=source,
                sample=ref.ref_id,
            )
        rgb = None
        if encoding == "rgbd":
            if "rgb" in extras:
                rgb = extras["rgb"]
                if rgb.shape[:2] != (h, w):
                    raise DataError("NYU colour image and depth differ in size", path=source)
            elif "rgb" in ref.paths:
                rgb = formats.read_rgb(ref.paths["rgb"], (h, w))
            else:
                raise DataError(
                    f"encoding 'rgbd' needs an aligned colour image "
                    f"{self.params['rgb_dir']}/{ref.ref_id}.{{png,jpg}}",
                    path=source,
                    sample=ref.ref_id,
                )
        image, enc_meta = encode(
            encoding,
            filled,
            valid,
            k,
            rgb,
            validity_channel=self.params["validity_channel"],
            smoothing_px=float(self.params["normal_smoothing_px"]),
        )
        if "nyu" in ref.paths:
            boxes, labels, difficult = self._nyu_targets(ref, extras)
        else:
            boxes, labels, difficult = self._annotated_targets(ref, w, h)
        meta = {
            "depth_units": "m",
            "encoding": encoding,
            "valid_fraction": float(valid.mean()),
            "intrinsics": k.as_dict() if k else None,
            "ref": {
                "ref_id": ref.ref_id,
                "paths": {a: str(b) for a, b in ref.paths.items()},
                "index": ref.meta.get("index"),
            },
            **enc_meta,
        }
        sample = Sample(
            image=image,
            boxes=boxes,
            labels=labels,
            difficult=difficult,
            sample_id=ref.ref_id,
            source=str(source),
            split=ref.split,
            affine=np.eye(4),
            valid=valid,
            meta=meta,
        )
        sample.validate(num_channels=len(self.channel_names), num_classes=len(self.class_names))
        yield sample

    def _annotated_targets(self, ref: SampleRef, w: int, h: int):
        index = {c: i + 1 for i, c in enumerate(self.class_names)}
        ann = ref.paths["annotation"]
        boxes, labels, difficult = [], [], []
        for o in ref.meta["objects"]:
            if o["name"] not in index:
                continue  # restricted by ``classes``
            x1, y1, x2, y2 = o["box"]
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            if x2 <= x1 or y2 <= y1:
                raise DataError(
                    f"object {o['name']!r} box {o['box']} is empty inside the {w}x{h} depth map",
                    path=ann,
                    sample=ref.ref_id,
                )
            boxes.append([x1, y1, x2, y2])
            labels.append(index[o["name"]])
            difficult.append(bool(o["difficult"]))
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), difficult

    def _nyu_targets(self, ref: SampleRef, frame: dict[str, np.ndarray]):
        index = {c: i + 1 for i, c in enumerate(self.class_names)}
        names = ref.meta["file_names"]
        boxes, labels = [], []
        for label, box in formats.boxes_from_instances(frame["labels"], frame["instances"]):
            name = names[label - 1] if 0 < label <= len(names) else None
            if name in index:  # unknown / unlisted classes are skipped
                boxes.append(box)
                labels.append(index[name])
        return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), None

    # --- back to the world ------------------------------------------------------------------
    def export_predictions(self, items: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Write ``predictions_depth.json``: per image, per detection, the box (px), score,
        class, the median measured depth inside the box (m; the filled depth when the box holds
        no reading, flagged ``depth_measured: false``) and, when intrinsics are known, the 3D
        centre ``[X, Y, Z]`` in the camera frame (m; x right, y down, z forward): the box centre
        back-projected at the median depth. The depth is re-read from the sample's source file
        (``meta["ref"]``), so the figures come from measurements, not from the encoding."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for item in items:
            meta = item["meta"]
            r = meta["ref"]
            ref = SampleRef(
                r["ref_id"],
                "test",
                {a: Path(b) for a, b in r["paths"].items()},
                {"index": r.get("index")},
            )
            depth, valid, _ = self.load_depth(ref)
            filled = fill_missing(depth, valid) if valid.any() else depth
            k = meta.get("intrinsics")
            det = item["detections"]
            boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
            out = []
            for box, score, label in zip(boxes, det["scores"], det["labels"]):
                z, measured = _median_depth(filled, valid, box)
                row = {
                    "box_xyxy_px": [float(v) for v in box],
                    "score": float(score),
                    "label": int(label),
                    "class": self.class_names[int(label) - 1],
                    "median_depth_m": z,
                    "depth_measured": measured,
                }
                if k is not None and z is not None:
                    # Continuous box centre -> OpenCV pixel index (centre of pixel i is i + 0.5).
                    u = 0.5 * (box[0] + box[2]) - 0.5
                    v = 0.5 * (box[1] + box[3]) - 0.5
                    row["centre_camera_m"] = [
                        (u - k["cx"]) * z / k["fx"],
                        (v - k["cy"]) * z / k["fy"],
                        z,
                    ]
                out.append(row)
            rows.append(
                {
                    "sample_id": item["sample_id"],
                    "source": item["source"],
                    "units": "m",
                    "camera_frame": "x right, y down, z forward",
                    "detections": out,
                }
            )
        path = out_dir / "predictions_depth.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, path)
        return [path]

    def render(self, image: np.ndarray) -> np.ndarray:
        """Colour-mapped first channel (matplotlib ``turbo``, 1st-99th percentile) as uint8
        ``[H, W, 3]``."""
        from matplotlib import colormaps

        ch = np.nan_to_num(np.asarray(image[0], dtype=np.float64))
        lo, hi = np.percentile(ch, [1, 99]) if ch.size else (0.0, 1.0)
        g = np.clip((ch - lo) / max(hi - lo, 1e-12), 0, 1)
        return (colormaps["turbo"](g)[..., :3] * 255).round().astype(np.uint8)

    # --- demo -------------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 240, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Render a synthetic indoor depth dataset (16-bit mm PNG + VOC XML + intrinsics JSON +
        split lists) under ``out_dir``; see :mod:`modalities.depth.demo`."""
        from modalities.depth.demo import write_demo

        return write_demo(out_dir, num_images=num_images, image_size=image_size, seed=seed)


def _median_depth(
    filled: np.ndarray, valid: np.ndarray, box: np.ndarray
) -> tuple[float | None, bool]:  # noqa: E501
    """Median depth (m) of the pixels whose centres lie in ``box`` (xyxy continuous px)."""
    h, w = filled.shape
    c0 = int(np.clip(np.ceil(box[0] - 0.5), 0, w))
    c1 = int(np.clip(np.ceil(box[2] - 0.5), 0, w))
    r0 = int(np.clip(np.ceil(box[1] - 0.5), 0, h))
    r1 = int(np.clip(np.ceil(box[3] - 0.5), 0, h))
    if c1 <= c0 or r1 <= r0:  # a box thinner than a pixel: take the pixel under its centre
        cx = int(np.clip((box[0] + box[2]) / 2, 0, w - 1))
        cy = int(np.clip((box[1] + box[3]) / 2, 0, h - 1))
        c0, c1, r0, r1 = cx, cx + 1, cy, cy + 1
    d, m = filled[r0:r1, c0:c1], valid[r0:r1, c0:c1]
    if m.any():
        return float(np.median(d[m])), True
    return (float(np.median(d)), False) if d.size and valid.any() else (None, False)
