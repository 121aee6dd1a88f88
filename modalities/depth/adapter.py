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
* ``collection``: depth maps under ``image_dir`` (null: ``depth_dir``) with VOC, COCO, YOLO or
  mask labels (param ``labels``) through the shared labelled-image layer (:mod:`.collection`).
* ``sunrgbd``: the SUN RGB-D release tree (:mod:`.sunrgbd`): every folder under ``root``
  holding ``depth/``, ``intrinsics.txt`` and ``<sunrgbd_annotation>`` is one frame (its
  ``depth/*.png`` un-shifted to mm, ``image/*.jpg``, polygons -> enclosing boxes); names are
  matched to ``class_names`` lower-case (``sunrgbd_name_map`` renames them first).

A frame's files are found by :mod:`.frames`. Every layout takes split lists (``split_files``,
else ``<split_dir>/{train,val,test}.txt``; :mod:`.split_lists`); frames without boxes are kept
and counted (``log.counts["background_images"]``). A frame's independence unit
(``Sample.group``, ``ref.meta["group"]``) is its NYU room (:func:`.nyu.room`), its SUN RGB-D
recording (:func:`.sunrgbd.recording`) or what ``group_by`` reads from its path; hash splits
are drawn by group.

Depth is converted to metres: ``metres = raw * unit * depth_scale`` with ``unit`` 0.001 for
``depth_unit: mm`` and 1 for ``m`` (``auto``: mm for integer images, m for float data). Pixels
with no reading (0, NaN, inf) or outside ``[min_depth_m, max_depth_m]`` are invalid: they are
filled with the nearest valid depth, left out of the store's statistics (``Sample.valid``) and,
with ``validity_channel: true``, flagged in an extra 0/1 channel. There is no world frame beyond
the image, so ``Sample.affine`` is the identity (world = pixels of the depth map); the camera
frame lives in :meth:`DepthAdapter.export_predictions` (:mod:`.world`).

Errors: ``discover()`` reads every frame's annotation and image headers under
``self.log.guard`` (one bad frame is refused or skipped whole, as ``prepare.on_error`` says) and
checks ``max_pixels`` there; objects of classes outside ``class_names`` are left out with one
warning per frame; ``read()`` raises on any unreadable byte.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsod_core.data.sample import NativeImage, Sample
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from modalities.base import ModalityAdapter, PrepareLog, SampleRef
from modalities.depth import (
    annotations,
    formats,
    frames,
    intrinsics,
    nyu,
    png,
    split_lists,
    sunrgbd,
    world,
)
from modalities.depth.encodings import (
    ENCODING_CHANNELS,
    NEEDS_INTRINSICS,
    VALIDITY_CHANNEL,
    Intrinsics,
    encode,
    fill_missing,
)
from modalities.depth.frames import DEPTH_EXTENSIONS, DEPTH_READERS
from modalities.depth.params import COLLECTION_ONLY, DepthParams
from modalities.formats.collection import size_mismatch

_UNITS = {"mm": 0.001, "m": 1.0}


def _native_depth(image: np.ndarray, encoding: str, scale: float) -> NativeImage | None:
    """The uint16 codes of a ``depth`` or ``rgbd`` image (depth = code * ``scale``, colour =
    code / 255, validity 0/1) for the store; None for the computed encodings. The store keeps
    them only if they reproduce ``image`` exactly (a float depth source falls back)."""
    if encoding not in ("depth", "rgbd"):
        return None
    n = image.shape[0]
    colour = 3 if encoding == "rgbd" else 0
    scales = np.ones(n)
    scales[colour] = scale  # the depth channel; a validity channel after it stays 0/1
    divisors = np.ones(n)
    divisors[:colour] = 255.0
    return NativeImage.from_image(image, np.uint16, scale=scales, divisor=divisors)


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
        defaults = type(p)()
        if any(getattr(p, key) != getattr(defaults, key) for key in COLLECTION_ONLY):
            return "collection"  # labels / label_dir / coco_json ... asked for
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
        refs = formats.FORMATS[self._layout].discover(self)
        if self._layout in ("voc", "coco", "sunrgbd"):  # collection counts its own
            self._count_backgrounds(refs)
        return refs

    def _ref(
        self, ref_id: str, split: str, stem: str, ref_from: Path, objects: list[dict[str, Any]]
    ) -> SampleRef:
        """A frame's ref (:func:`modalities.depth.frames.frame_ref`)."""
        return frames.frame_ref(self, ref_id, split, stem, ref_from, objects)

    def _frame_paths(
        self, depth: Path, annotation: Path | None, ref_from: Path, stems: tuple[str, ...]
    ) -> dict[str, Path]:
        """The files of one frame (:func:`modalities.depth.frames.frame_paths`)."""
        return frames.frame_paths(self, depth, annotation, ref_from, stems)

    def _note_left_out(self, counts: Counter, path: Path, sample: str) -> None:
        if counts:
            self.log.warn(annotations.left_out_note(counts), path, sample)

    def _split_files(self) -> dict[str, Path]:
        """Split -> list file (:func:`modalities.depth.split_lists.split_files`)."""
        return split_lists.split_files(self)

    def _splits(
        self, units: Mapping[str, Iterable[str]], groups: Mapping[str, str | None] | None = None
    ) -> dict[str, str]:
        """Unit id -> split, drawn by group (:func:`modalities.depth.split_lists.splits`)."""
        return split_lists.splits(self, units, groups)

    def _count_backgrounds(self, refs: list[SampleRef]) -> None:
        """Frames without a box are kept as ordinary negatives: counted
        (``background_images``, in the prepare report's counts), not warned about (as the
        shared labelled-image layer does)."""
        n = sum(not ref.meta.get("objects") for ref in refs if "nyu" not in ref.paths)
        self.log.counts["background_images"] = n

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
            "ref": world.ref_meta(ref),
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
            native=self._native(ref, image),
            group=ref.meta.get("group"),
        )
        sample.validate(num_channels=len(self.channel_names), num_classes=len(self.class_names))
        yield sample

    def _native(self, ref: SampleRef, image: np.ndarray) -> NativeImage | None:
        """The integer codes the store may keep for ``image`` (:func:`_native_depth`); none
        for NYU frames (float metres in the file)."""
        p = self.params
        if "nyu" in ref.paths:
            return None
        metres = _UNITS["mm" if p.depth_unit == "auto" else p.depth_unit] * float(p.depth_scale)
        return _native_depth(image, p.encoding, metres)

    def _targets(
        self, ref: SampleRef, extras: dict[str, Any], w: int, h: int, source: Path | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(boxes, labels, difficult, crowd)`` of one depth map: from the NYU labels (no
        difficult/crowd flags; left-out objects noted) or from its annotation file."""
        annotation = ref.paths.get("annotation", source)
        # a size the label declares that is not the depth map's: a warning, the map wins
        size_mismatch(self.log, ref.meta.get("declared_size"), (w, h), annotation, ref.ref_id)
        if "nyu" in ref.paths:
            boxes, labels, left_out = nyu.targets(extras, ref.meta["file_names"], self.class_names)
            difficult = crowd = None
            self._note_left_out(left_out, source, ref.ref_id)
        else:
            boxes, labels, difficult, crowd = annotations.targets(
                ref.meta["objects"], self.class_names, w, h, annotation, ref.ref_id
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
        """Per image, per detection: box, score, class, median measured depth (m) and, with
        intrinsics, the 3D centre in the camera frame (:func:`modalities.depth.world.world_rows`).
        The evaluate stage and ``dsod detect`` both write these rows."""
        return world.world_rows(self, items)

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
