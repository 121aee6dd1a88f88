"""The ``thermal`` adapter: infrared frames (8-bit AGC or 14/16-bit radiometric) with boxes.

Frames are read with Pillow (:mod:`modalities.thermal.frames`): 8-bit AGC frames in any
Pillow mode that stores grey (``L``, ``LA``, ``1``, a grey ``P`` palette, an ``RGB``/``RGBA``
image with R == G == B) become one channel ``grey / 255`` (:mod:`.agc`; a colour image is
refused); 16-bit, 32-bit and float frames are radiometric counts (:mod:`.radiometric`) made
one channel by the ``intensity`` param: a per-frame percentile window (``agc``, the default,
so 8-bit and 16-bit frames of one set look alike), a fixed scale (``scale``) or a linear
temperature (``temperature``: ``counts x radiometric_gain + radiometric_offset`` kelvin, in
``temperature_unit``). Channels: ``["intensity"]``, or ``["temperature_k"]`` /
``["temperature_c"]``. Per-channel mean/std come from the store, as everywhere.

Labels and splits come from the shared labelled-image layer
(:func:`modalities.formats.collection.discover_collection`: VOC, COCO, YOLO, masks or none);
images without boxes are kept as negatives (``keep_background``). ``Sample.affine`` is the
identity: the world is the frame's pixels. A declared size that differs from the decoded
frame is a warning (the frame wins); a box further than
:data:`modalities.formats.collection.BOX_TOLERANCE_PX` outside the
frame is a :class:`DataError` naming the label file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dsod_core.data.sample import NativeImage, Sample
from dsod_core.errors import DataError
from dsod_core.io import write_json
from modalities.base import AdapterParams, ModalityAdapter, PrepareLog, SampleRef
from modalities.formats.coco import to_coco_results
from modalities.formats.collection import clip_boxes, discover_collection, ref_meta, size_mismatch
from modalities.thermal import demo, frames, radiometric
from modalities.thermal.formats import IMAGE_SUFFIXES
from modalities.thermal.params import ThermalParams


class ThermalAdapter(ModalityAdapter):
    """Thermal infrared frames with VOC, COCO, YOLO or mask labels (see the module doc).

    Params: :class:`modalities.thermal.params.ThermalParams`. After :meth:`discover`,
    :attr:`counts` holds the label layer's quirk counts (background images, objects without a
    box, ...), which the warnings of ``self.log`` also state.
    """

    name: ClassVar[str] = "thermal"
    Params: ClassVar[type[AdapterParams]] = ThermalParams
    world_units: ClassVar[str] = "pixel"
    detect_module: ClassVar[str] = "modalities.thermal.detect"
    output_suffixes: ClassVar[tuple[str, ...]] = IMAGE_SUFFIXES
    params: ThermalParams

    @classmethod
    def accepts(cls, path: str | os.PathLike) -> bool:
        """Claimed thermal files, and grey frames saved as RGB/RGBA/palette images (which the
        rgb modality claims from their header): a thermal model reads those too."""
        from modalities.thermal.agc import grey_colour_image

        return cls.claims(path) or grey_colour_image(Path(path))

    def __init__(
        self,
        root: str | os.PathLike,
        params: Mapping[str, Any] | AdapterParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        super().__init__(root, params, log=log)
        names = self.params.class_names
        self._class_names: list[str] | None = list(names) if names is not None else None
        self.counts: dict[str, int] = {}

    # --- what the data looks like -------------------------------------------------------
    @property
    def channel_names(self) -> list[str]:
        if self.params.intensity == "temperature":
            return [
                "temperature_k" if self.params.temperature_unit == "kelvin" else "temperature_c"
            ]
        return ["intensity"]

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            raise RuntimeError("thermal class names are known after discover()")
        return list(self._class_names)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Classes found in the labels, given back from a store or a model."""
        self._class_names = list(state["class_names"])

    # --- discovery ----------------------------------------------------------------------
    def display(self, path: Path) -> Path:
        """``path`` (absolute, inside root) shown relative to ``root`` as the user gave it."""
        try:
            return self.root / Path(path).relative_to(os.path.abspath(self.root))
        except ValueError:
            return Path(path)

    def header_size(self, path: Path) -> tuple[int, int]:
        """A frame's ``(width, height)`` from its header, refused over ``max_pixels``."""
        return frames.declared_size(path, self.display(path), self.params.max_pixels)

    def discover(self) -> list[SampleRef]:
        """The frames of :func:`discover_collection` (``image_dir`` searched for
        :data:`IMAGE_SUFFIXES`), each frame's size checked from its header (``max_pixels``)
        under ``self.log.guard``."""
        items, names = discover_collection(
            self,
            self.params,
            image_suffixes=IMAGE_SUFFIXES,
            image_size=self.header_size,
            counts=self.counts,
        )
        self._class_names = names
        image_dir = self.resolve_inside_root(self.params.image_dir, self.root)
        refs = []
        for item in items:
            with self.log.guard(self.display(item.image), unit="image"):
                self.header_size(item.image)
                rel = item.image.relative_to(image_dir).as_posix()
                paths = {"image": item.image, "annotation": item.annotation or item.image}
                refs.append(SampleRef(item.image_id, item.split, paths, ref_meta(item, names, rel)))
        return refs

    # --- reading ------------------------------------------------------------------------
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        image_path = ref.paths["image"]
        shown = self.display(image_path)
        p = self.params
        values, bits = frames.decode(image_path, shown, p.max_pixels, p.grey_tolerance)
        channel = self.to_channel(values, bits, shown, ref.ref_id)
        h, w = channel.shape
        ann_shown = self.display(ref.paths["annotation"])
        size_mismatch(self.log, ref.meta.get("declared_size"), (w, h), ann_shown, ref.ref_id)
        boxes = self._checked_boxes(ref, w, h, ann_shown)
        meta = {
            "image_id": ref.meta["image_id"],
            "file_name": ref.meta["file_name"],
            "width": w,
            "height": h,
            "bits": bits,
            "background": bool(ref.meta.get("background", not len(boxes))),
        }
        # 8-bit frames are stored as their uint8 grey levels (docs/store.md "Native images");
        # the store checks that grey / 255 gives this float32 image bit for bit.
        native = NativeImage(values.astype(np.uint8)[None], divisor=255.0) if bits == 8 else None
        sample = Sample(
            image=channel[None].astype(np.float32),
            native=native,
            boxes=boxes,
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            difficult=np.asarray(ref.meta["difficult"], dtype=bool),
            crowd=np.asarray(ref.meta.get("crowd") or [False] * len(boxes), dtype=bool),
            sample_id=ref.ref_id,
            source=str(shown),
            split=ref.split,
            affine=np.eye(4),
            meta=meta,
            group=ref.meta.get("group"),  # group_by (docs/modalities/thermal.md)
        )
        sample.validate(num_channels=1, num_classes=len(self.class_names))
        yield sample

    def to_channel(self, values: np.ndarray, bits: int, shown: Path, sample: str) -> np.ndarray:
        """One frame's values (:func:`frames.decode`) as the channel the params ask for."""
        p = self.params
        if bits == 8:
            if p.intensity == "temperature":
                raise DataError(
                    "an 8-bit AGC frame holds no temperatures (intensity: temperature needs "
                    "16-bit radiometric frames; intensity: agc reads 8-bit and 16-bit frames)",
                    path=shown,
                    sample=sample,
                )
            return values.astype(np.float64) / 255.0
        if p.intensity == "temperature":
            return radiometric.to_temperature(
                values, p.radiometric_gain, p.radiometric_offset, p.temperature_unit
            )
        if p.intensity == "scale":
            return radiometric.scale_counts(values, p.counts_max)
        return radiometric.agc_window(values, *p.agc_percentiles)

    def _checked_boxes(self, ref: SampleRef, w: int, h: int, ann_shown: Path) -> np.ndarray:
        return clip_boxes(ref.meta["boxes"], w, h, ann_shown, ref.ref_id, noun="frame")

    # --- back to the world --------------------------------------------------------------
    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
        """The world JSON of the base class (pixels) and ``coco_results.json`` (category id =
        label 1..K, bbox xywh in frame pixels) with ``categories.json``."""
        out_dir = Path(out_dir)
        written = list(super().export_predictions(items, out_dir))
        mapping = {i + 1: i + 1 for i in range(len(self.class_names))}
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(self.class_names)]
        written.append(
            write_json(out_dir / "coco_results.json", to_coco_results(items, mapping), indent=None)
        )
        written.append(write_json(out_dir / "categories.json", cats, indent=1))
        return written

    # --- demo ---------------------------------------------------------------------------
    @classmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 48, image_size: int = 64, seed: int = 0
    ) -> dict[str, Any]:
        """The synthetic set of :mod:`modalities.thermal.demo` under ``out_dir``; returns the
        params that read it with ``root=out_dir``."""
        return demo.write_demo(out_dir, num_images=num_images, image_size=image_size, seed=seed)
