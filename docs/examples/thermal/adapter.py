"""The thermal adapter: radiometric 16-bit PNG -> degrees Celsius, VOC boxes, classes from data.

Shared helpers it uses: :func:`modalities.rgb.voc.parse_voc_xml` (VOC parsing, 1-based
inclusive boxes to continuous pixels), :func:`modalities.base.assign_split` (a stable split
per frame), ``self.log`` (the prepare stage's error policy) and ``check_declared_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from dsod_core.data.sample import Sample
from dsod_core.errors import DataError
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.rgb.voc import parse_voc_xml
from thermal import demo
from thermal.params import ThermalParams


class ThermalAdapter(ModalityAdapter):
    name = "thermal"
    Params = ThermalParams
    world_units = "pixel"

    def __init__(self, root, params=None, *, log=None):
        super().__init__(root, params, log=log)
        self._classes: list[str] | None = self.params.class_names

    @property
    def channel_names(self) -> list[str]:
        return ["temperature_c"]

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            raise DataError("class_names are known after discover()", path=self.root)
        return list(self._classes)

    def restore(self, state) -> None:
        """Classes found in the labels, given back from a store or a model (evaluation and
        ``dsod detect`` never list the raw data again)."""
        self._classes = list(state["class_names"])

    def discover(self) -> list[SampleRef]:
        p = self.params
        refs, found = [], set()
        for xml in sorted((self.root / p.annotation_dir).glob("*.xml")):
            with self.log.guard(xml, unit="image"):  # one bad file: prepare.on_error decides
                ann = parse_voc_xml(xml)
                image = self.resolve_inside_root(Path(p.image_dir) / ann["filename"], xml)
                if not image.is_file():
                    raise DataError(f"image {image.name} not found", path=xml)
                with Image.open(image) as im:  # the header only: no pixels decoded yet
                    w, h = im.size
                self.check_declared_size(image, w * h, p.max_pixels, f"{w} x {h} px", "max_pixels")
                found.update(o["name"] for o in ann["objects"])
                split = assign_split(xml.stem, p.val_fraction, p.test_fraction, p.seed)
                refs.append(
                    SampleRef(xml.stem, split, {"image": image}, {"objects": ann["objects"]})
                )
        if self._classes is None:
            self._classes = sorted(found)
        return refs

    def read(self, ref: SampleRef) -> Iterator[Sample]:
        p = self.params
        try:
            with Image.open(ref.paths["image"]) as im:
                im.load()  # decode every pixel: a truncated file raises here, not half-read
                counts = np.asarray(im, dtype=np.float64)
        except OSError as exc:
            raise DataError(f"cannot decode image ({exc})", path=ref.paths["image"]) from None
        if counts.ndim != 2:
            raise DataError("not a single-channel radiometric image", path=ref.paths["image"])
        celsius = counts * p.kelvin_per_count + p.kelvin_offset - 273.15
        boxes, labels = [], []
        for obj in ref.meta["objects"]:
            if obj["name"] not in self._classes:
                if p.unknown_class == "error":
                    raise DataError(f"unknown class {obj['name']!r}", sample=ref.ref_id)
                self.log.warn(f"object of class {obj['name']!r} left out", sample=ref.ref_id)
                continue
            boxes.append(obj["box"])
            labels.append(self._classes.index(obj["name"]) + 1)
        yield Sample(
            image=celsius[None].astype(np.float32),
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            sample_id=ref.ref_id,
            source=str(ref.paths["image"]),
            split=ref.split,
        )

    @classmethod
    def write_demo(cls, out_dir, *, num_images=64, image_size=96, seed=0):
        return demo.write_demo(Path(out_dir), num_images, image_size, seed)
