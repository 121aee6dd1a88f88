"""The heightmap adapter: float32 elevation tiles (.npy, metres) with YOLO boxes, classes
from the data.

Shared helpers it uses: :mod:`modalities.formats.yolo` (YOLO txt and class-name parsing,
normalised boxes to pixels), :func:`modalities.base.assign_split` (a stable split per tile),
``self.log`` (the prepare stage's error policy) and ``check_declared_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dsod_core.data.sample import Sample
from dsod_core.errors import DataError
from heightmap import demo
from heightmap.params import HeightmapParams
from modalities.base import ModalityAdapter, SampleRef, assign_split
from modalities.formats.yolo import parse_yolo_txt, read_yolo_names, to_pixels


def _header(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a 2-D float tile from the .npy header (no data read)."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read .npy header: {exc}", path=path) from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"expected a 2-D float tile, got {arr.dtype} {arr.shape}", path=path)
    return int(arr.shape[0]), int(arr.shape[1])


class HeightmapAdapter(ModalityAdapter):
    name = "heightmap"
    Params = HeightmapParams
    world_units = "pixel"

    def __init__(self, root, params=None, *, log=None):
        super().__init__(root, params, log=log)
        self._classes: list[str] | None = self.params.class_names

    @property
    def channel_names(self) -> list[str]:
        return ["height_m"]

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            raise DataError("class_names are known after discover()", path=self.root)
        return list(self._classes)

    def restore(self, state) -> None:
        """Classes found in the data, given back from a store or a model (evaluation and
        ``dsod detect`` never list the raw data again)."""
        self._classes = list(state["class_names"])

    def discover(self) -> list[SampleRef]:
        p = self.params
        if self._classes is None:
            self._classes = read_yolo_names(self.root / p.names_file)
        refs = []
        for tile in sorted((self.root / p.tile_dir).glob("*.npy")):
            with self.log.guard(tile, unit="tile"):  # one bad file: prepare.on_error decides
                h, w = _header(tile)  # the header only: no pixels read yet
                self.check_declared_size(tile, w * h, p.max_pixels, f"{w} x {h} px", "max_pixels")
                txt = self.resolve_inside_root(Path(p.label_dir) / f"{tile.stem}.txt", tile)
                objects = parse_yolo_txt(txt)  # a missing txt: no objects (a negative tile)
                boxes, labels = [], []
                for index, box in objects:
                    if index >= len(self._classes):
                        if p.unknown_class == "error":
                            raise DataError(f"class index {index} has no name", path=txt)
                        self.log.warn(f"object of class index {index} left out", txt, tile.stem)
                        continue
                    boxes.append(to_pixels(box, w, h))
                    labels.append(index + 1)
                split = assign_split(tile.stem, p.val_fraction, p.test_fraction, p.seed)
                meta = {"boxes": boxes, "labels": labels}
                refs.append(SampleRef(tile.stem, split, {"image": tile}, meta))
        return refs

    def read(self, ref: SampleRef) -> Iterator[Sample]:
        path = ref.paths["image"]
        try:
            elevation = np.load(path, allow_pickle=False)  # reads all: a cut file raises
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"cannot read tile ({exc})", path=path, sample=ref.ref_id) from None
        if not np.isfinite(elevation).all():
            raise DataError("tile has non-finite elevations", path=path, sample=ref.ref_id)
        if self.params.relative:
            elevation = elevation - np.median(elevation)
        sample = Sample(
            image=elevation[None].astype(np.float32),
            boxes=np.asarray(ref.meta["boxes"], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(ref.meta["labels"], dtype=np.int64),
            sample_id=ref.ref_id,
            source=str(path),
            split=ref.split,
        )
        sample.validate(num_channels=1, num_classes=len(self.class_names))
        yield sample

    @classmethod
    def write_demo(cls, out_dir, *, num_images=64, image_size=96, seed=0):
        return demo.write_demo(Path(out_dir), num_images, image_size, seed)
