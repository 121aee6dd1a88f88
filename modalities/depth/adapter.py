"""The ``depth`` adapter: RGB-D sensor depth maps (Kinect/RealSense, NYU Depth v2, SUN RGB-D).

Layouts under ``root`` (param ``layout``; ``auto`` picks the first that exists):

* ``nyu``: the NYU Depth v2 labelled file ``<nyu_file>`` (HDF5, :mod:`.nyu`); boxes are the
  tight boxes of the instance masks, class names come from the file, restricted to
  ``class_names``.
* ``voc``: ``<annotation_dir>/<id>.xml`` VOC boxes (:mod:`.annotations`), each paired by name
  with ``<depth_dir>/<id>.{png,npy,tif,tiff}`` (:mod:`.png`, :mod:`.npy`; the stem of the
  XML's ``<filename>``, else of the XML); optional ``<rgb_dir>/<id>.{png,jpg}``,
  ``<intrinsics_dir>/<id>.{json,txt}`` (:mod:`.intrinsics`) and split lists
  ``<split_dir>/{train,val,test}.txt``.
* ``coco``: ``<coco_file>`` COCO JSON; each image's ``file_name`` stem names the depth file.
* ``sunrgbd``: the SUN RGB-D release tree (:mod:`.sunrgbd`): every folder under ``root``
  holding ``depth/``, ``intrinsics.txt`` and ``<sunrgbd_annotation>`` is one frame (its
  ``depth/*.png`` un-shifted to mm, ``image/*.jpg``, polygons -> enclosing boxes); names are
  matched to ``class_names`` lower-case (``sunrgbd_name_map`` renames them first).

Depth is converted to metres: ``metres = raw * unit * depth_scale`` with ``unit`` 0.001 for
``depth_unit: mm`` and 1 for ``m`` (``auto``: mm for integer images, m for float data). Pixels
with no reading (0, NaN, inf) or outside ``[min_depth_m, max_depth_m]`` are invalid: they are
filled with the nearest valid depth, left out of the store's statistics (``Sample.valid``) and,
with ``validity_channel: true``, flagged in an extra 0/1 channel. There is no world frame beyond
the image, so ``Sample.affine`` is the identity (world = pixels of the depth map); the camera
frame lives in :meth:`DepthAdapter.export_predictions`.

Errors: ``discover()`` reads every frame's annotation and image headers under
``self.log.guard`` (one bad frame is refused or skipped whole, as ``prepare.on_error`` says) and
checks ``max_pixels`` there; objects of classes outside ``class_names`` are left out with one
warning per frame; ``read()`` raises on any unreadable byte.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.data.sample import SPLITS, Sample
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from modalities.base import ModalityAdapter, PrepareLog, SampleRef, assign_split
from modalities.depth import annotations, formats, intrinsics, npy, nyu, png, sunrgbd
from modalities.depth.encodings import (
    ENCODING_CHANNELS,
    NEEDS_INTRINSICS,
    VALIDITY_CHANNEL,
    Intrinsics,
    encode,
    fill_missing,
)
from modalities.depth.params import DepthParams

# Depth readers by file extension, in the order a stem's files are looked for; each module has
# ``declared_size(path, max_pixels)`` (header only) and ``read_depth(path, max_pixels)``.
DEPTH_READERS = {".png": png, ".npy": npy, ".tif": png, ".tiff": png}
DEPTH_EXTENSIONS = tuple(DEPTH_READERS)
_UNITS = {"mm": 0.001, "m": 1.0}


class DepthAdapter(ModalityAdapter):
    """Depth maps -> canonical samples in one of the encodings of :data:`ENCODING_CHANNELS`."""

    name = "depth"
    Params = DepthParams
    world_units = "pixel"
    detect_module = "modalities.depth.detect"
    output_suffixes = (*DEPTH_EXTENSIONS, ".mat")
    params: DepthParams

    def __init__(
        self,
        root: str | os.PathLike,
        params: Mapping[str, Any] | DepthParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        super().__init__(root, params, log=log)
        self._class_names: list[str] | None = None
        self._layout: str | None = None
        self._scenes: tuple[list[Path], list[Path]] | None = None

    # --- what the data looks like -----------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        names = list(ENCODING_CHANNELS[self.params.encoding])
        if self.params.validity_channel:
            names.append(VALIDITY_CHANNEL)
        return names

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            if self.params.class_names is not None:
                return list(self.params.class_names)
            raise ConfigError("depth adapter: class names are known after discover()")
        return list(self._class_names)

    # --- discovery --------------------------------------------------------------------------
    def _resolve_layout(self) -> str:
        p = self.params
        if p.layout != "auto":
            return p.layout
        if (self.root / p.nyu_file).is_file():
            return "nyu"
        if (self.root / p.annotation_dir).is_dir():
            return "voc"
        if (self.root / p.coco_file).is_file():
            return "coco"
        if self._sunrgbd_scenes()[0]:
            return "sunrgbd"
        raise DataError(
            f"no depth dataset found: expected {p.nyu_file} (NYU), "
            f"{p.annotation_dir}/ (VOC XML), {p.coco_file} (COCO) or SUN RGB-D scene folders "
            f"(depth/, {sunrgbd.INTRINSICS_FILE}, {p.sunrgbd_annotation})",
            path=self.root,
        )

    def _sunrgbd_scenes(self) -> tuple[list[Path], list[Path]]:
        if self._scenes is None:
            self._scenes = sunrgbd.find_scenes(self.root, self.params.sunrgbd_annotation)
        return self._scenes

    def discover(self) -> list[SampleRef]:
        """List frames with their split: ``discover`` of the layout's module
        (:data:`modalities.depth.formats.FORMATS`). Per frame (under ``self.log.guard``): its
        annotation parses, its depth file exists and its header declares at most
        ``max_pixels``."""
        self._layout = self._resolve_layout()
        return formats.FORMATS[self._layout].discover(self)

    def _find_depth(self, stem: str, referenced_from: Path, sample: str) -> Path:
        depth_dir = self.resolve_inside_root(self.params.depth_dir, referenced_from)
        for ext in DEPTH_EXTENSIONS:
            cand = self.resolve_inside_root(depth_dir / f"{stem}{ext}", referenced_from)
            if cand.is_file():
                return cand
        raise DataError(
            f"names depth map {stem!r} but no {depth_dir / stem}"
            f"{{{','.join(DEPTH_EXTENSIONS)}}} exists",
            path=referenced_from,
            sample=sample,
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

    def _check_header(self, path: Path, reader=png) -> None:
        """Refuse an image whose header declares more than ``max_pixels`` (no pixel read)."""
        limit = self.params.max_pixels
        w, h = reader.declared_size(path, limit)
        self.check_declared_size(path, w * h, limit, f"{w} x {h} px", "max_pixels")

    def _ref(
        self, ref_id: str, split: str, stem: str, ref_from: Path, objects: list[dict[str, Any]]
    ) -> SampleRef:
        """A frame's ref: its files found (depth required, colour and intrinsics optional) and
        the headers of the images it will read checked against ``max_pixels``."""
        p = self.params
        depth = self._find_depth(stem, ref_from, ref_id)
        paths = {"depth": depth, "annotation": ref_from}
        self._check_header(depth, DEPTH_READERS[depth.suffix.lower()])
        rgb = self._optional(p.rgb_dir, stem, png.RGB_EXTENSIONS, ref_from)
        if rgb is not None:
            paths["rgb"] = rgb
            if p.encoding == "rgbd":
                self._check_header(rgb)
        intr = self._optional(p.intrinsics_dir, stem, intrinsics.EXTENSIONS, ref_from)
        if intr is None:
            intr = self._optional(".", "intrinsics", intrinsics.EXTENSIONS, ref_from)
        if intr is not None:
            paths["intrinsics"] = intr
        return SampleRef(ref_id, split, paths, {"objects": objects})

    def _note_left_out(self, counts: Counter, path: Path, sample: str) -> None:
        if counts:
            self.log.warn(annotations.left_out_note(counts), path, sample)

    def _split_lists(self) -> dict[str, str]:
        split_dir = self.root / self.params.split_dir
        out: dict[str, str] = {}
        for split in SPLITS:
            f = split_dir / f"{split}.txt"
            if f.is_file():
                for line in f.read_text().split():
                    out[line.strip()] = split
        return out

    def _hash_split(self, key: str) -> str:
        """The split of a frame by the stable hash of ``key`` (:func:`assign_split`)."""
        p = self.params
        return assign_split(key, p.val_fraction, p.test_fraction, p.seed)

    def _nyu_need(self) -> tuple[str, ...]:
        need = (*nyu.REQUIRED, self.params.nyu_depth_key)
        if self.params.encoding == "rgbd":
            need = (*need, "images")
        return tuple(dict.fromkeys(need))

    # --- reading ----------------------------------------------------------------------------
    def _intrinsics(self, ref: SampleRef) -> Intrinsics | None:
        p = self.params
        if p.fx is not None:
            return Intrinsics(float(p.fx), float(p.fy), float(p.cx), float(p.cy))
        if "intrinsics" in ref.paths:
            return intrinsics.read_intrinsics(ref.paths["intrinsics"])
        if "nyu" in ref.paths:
            return nyu.INTRINSICS
        return None

    def _to_metres(self, raw: np.ndarray, natural_unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw values -> (depth metres ``[H, W]`` float64 with 0 where invalid, valid mask)."""
        p = self.params
        unit = natural_unit if p.depth_unit == "auto" else p.depth_unit
        with np.errstate(invalid="ignore", over="ignore"):
            metres = raw * (_UNITS[unit] * float(p.depth_scale))
            valid = np.isfinite(metres) & (metres >= p.min_depth_m) & (metres <= p.max_depth_m)
        return np.where(valid, metres, 0.0), valid

    def load_depth(self, ref: SampleRef) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Depth of one ref in metres: ``(depth [H, W] float64, 0 where invalid; valid [H, W]
        bool; extras)``; extras hold NYU labels/instances/rgb when the ref is an NYU frame."""
        p = self.params
        if "nyu" in ref.paths:
            path = ref.paths["nyu"]
            need = tuple(dict.fromkeys((*nyu.REQUIRED, p.nyu_depth_key)))
            with nyu.open_labelled(path, need) as f:
                try:
                    frame = nyu.read_frame(
                        f, ref.meta["index"], p.nyu_depth_key, with_rgb=p.encoding == "rgbd"
                    )
                except (KeyError, IndexError, ValueError, OSError) as exc:
                    raise DataError(
                        f"frame {ref.meta['index']}: {exc}", path=path, sample=ref.ref_id
                    ) from exc
            depth, valid = self._to_metres(frame.pop("depth"), "m")
            return depth, valid, frame
        path = ref.paths["depth"]
        sun = ref.meta.get("depth_codec") == "sunrgbd"  # SUN RGB-D's bit-shifted PNGs
        reader = sunrgbd if sun else DEPTH_READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"unsupported depth file type {path.suffix.lower()!r}", path=path)
        raw, unit = reader.read_depth(path, float(p.max_pixels))
        depth, valid = self._to_metres(raw, unit)
        return depth, valid, {}

    def _rgb(self, ref: SampleRef, extras: dict[str, Any], h: int, w: int, source) -> np.ndarray:
        if "rgb" in extras:
            if extras["rgb"].shape[:2] != (h, w):
                raise DataError(
                    "NYU colour image and depth differ in size", path=source, sample=ref.ref_id
                )
            return extras["rgb"]
        if "rgb" in ref.paths:
            return png.read_rgb(ref.paths["rgb"], (h, w), float(self.params.max_pixels))
        raise DataError(
            f"encoding 'rgbd' needs an aligned colour image "
            f"{self.params.rgb_dir}/{ref.ref_id}.{{png,jpg}}",
            path=source,
            sample=ref.ref_id,
        )

    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """One depth map -> one :class:`Sample` ``[C, H, W]`` in the configured encoding."""
        p = self.params
        if self._class_names is None and p.class_names is None:
            raise ConfigError("depth adapter: call discover() before read()")
        source = ref.paths.get("depth", ref.paths.get("nyu"))
        depth, valid, extras = self.load_depth(ref)
        if not valid.any():
            raise DataError(
                f"no valid depth reading in [{p.min_depth_m}, {p.max_depth_m}] m "
                "(check depth_unit / depth_scale)",
                path=source,
                sample=ref.ref_id,
            )
        h, w = depth.shape
        filled = fill_missing(depth, valid)
        k = self._intrinsics(ref)
        if p.encoding in NEEDS_INTRINSICS and k is None:
            raise DataError(
                f"encoding {p.encoding!r} needs camera intrinsics: set fx, fy, cx, cy or write "
                f"{p.intrinsics_dir}/{ref.ref_id}.json or intrinsics.json in root",
                path=source,
                sample=ref.ref_id,
            )
        rgb = self._rgb(ref, extras, h, w, source) if p.encoding == "rgbd" else None
        image, enc_meta = encode(
            p.encoding,
            filled,
            valid,
            k,
            rgb,
            validity_channel=p.validity_channel,
            smoothing_px=float(p.normal_smoothing_px),
        )
        boxes, labels, difficult, crowd = self._targets(ref, extras, w, h, source)
        meta = {
            "depth_units": "m",
            "encoding": p.encoding,
            "valid_fraction": float(valid.mean()),
            "intrinsics": k.as_dict() if k else None,
            "ref": _ref_meta(ref),
            **enc_meta,
        }
        sample = Sample(
            image=image,
            boxes=boxes,
            labels=labels,
            difficult=difficult,
            crowd=crowd,
            sample_id=ref.ref_id,
            source=str(source),
            split=ref.split,
            affine=np.eye(4),
            valid=valid,
            meta=meta,
        )
        sample.validate(num_channels=len(self.channel_names), num_classes=len(self.class_names))
        yield sample

    def _targets(
        self, ref: SampleRef, extras: dict[str, Any], w: int, h: int, source: Path | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(boxes, labels, difficult, crowd)`` of one depth map: from the NYU labels (no
        difficult/crowd flags; left-out objects noted) or from its annotation file."""
        if "nyu" in ref.paths:
            boxes, labels, left_out = nyu.targets(extras, ref.meta["file_names"], self.class_names)
            difficult = crowd = None
            self._note_left_out(left_out, source, ref.ref_id)
        else:
            boxes, labels, difficult, crowd = annotations.targets(
                ref.meta["objects"], self.class_names, w, h, ref.paths["annotation"], ref.ref_id
            )
        return boxes, labels, difficult, crowd

    # --- back to the world ------------------------------------------------------------------
    def restore(self, state: Mapping[str, Any]) -> None:
        """Read with the classes of a store or a model (labels 1..K of its detections)."""
        names = list(state["class_names"])
        if self.params.class_names is None:
            self.params = self.params.replace(class_names=names)
        elif list(self.params.class_names) != names:
            raise ConfigError(
                f"adapter class_names {list(self.params.class_names)} differ from the model's "
                f"{names}"
            )

    def world_rows(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per image, per detection: the box (px), score, class, the median measured depth
        inside the box (m; the filled depth when the box holds no reading, flagged
        ``depth_measured: false``) and, when intrinsics are known, the 3D centre ``[X, Y, Z]``
        in the camera frame (m; x right, y down, z forward): the box centre back-projected at
        the median depth. The depth is re-read from the sample's source file (``meta["ref"]``),
        so the figures come from measurements, not from the encoding. The evaluate stage and
        ``dsod detect`` both write these rows."""
        rows = []
        for item in items:
            meta = item["meta"]
            r = meta["ref"]
            ref = SampleRef(
                r["ref_id"],
                "test",
                {a: Path(b) for a, b in r["paths"].items()},
                {"index": r.get("index"), "depth_codec": r.get("depth_codec")},
            )
            depth, valid, _ = self.load_depth(ref)
            filled = fill_missing(depth, valid) if valid.any() else depth
            det = item["detections"]
            boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
            out = [
                self._world_detection(filled, valid, box, score, label, meta.get("intrinsics"))
                for box, score, label in zip(boxes, det["scores"], det["labels"])
            ]
            rows.append(
                {
                    "sample_id": item["sample_id"],
                    "source": item["source"],
                    "units": "m",
                    "camera_frame": "x right, y down, z forward",
                    "detections": out,
                }
            )
        return rows

    def _world_detection(self, filled, valid, box, score, label, k) -> dict[str, Any]:
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
            row["centre_camera_m"] = [(u - k["cx"]) * z / k["fx"], (v - k["cy"]) * z / k["fy"], z]
        return row

    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
        """Write ``predictions_depth.json``: :meth:`world_rows` of every image."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "predictions_depth.json"
        write_json(path, self.world_rows(items), indent=1)
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


def _ref_meta(ref: SampleRef) -> dict[str, Any]:
    """The sample's ``ref`` meta: the id, the paths (as strings), the NYU index and the depth
    codec."""
    return {
        "ref_id": ref.ref_id,
        "paths": {a: str(b) for a, b in ref.paths.items()},
        "index": ref.meta.get("index"),
        "depth_codec": ref.meta.get("depth_codec"),
    }


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
