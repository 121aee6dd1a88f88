"""The modality adapter protocol.

An adapter turns one kind of imagery, in its native file formats, into canonical
:class:`dsod_core.data.Sample` objects, and maps predictions back to the world. To add a
sensor, subclass :class:`ModalityAdapter`, implement the abstract methods, and register it
(``@register("name")`` in :mod:`modalities.registry`, or an entry point in the group
``dsod.modalities`` of your own package). ``docs/adding_a_modality.md`` walks through it.

Life cycle, as the prepare stage drives it::

    adapter = AdapterClass(root, params)      # params validated: unknown keys -> ConfigError
    refs = adapter.discover()                 # cheap: list what exists, assign splits
    adapter.class_names, adapter.channel_names  # known after discover()
    for ref in refs:
        for sample in adapter.read(ref):      # one ref may yield many samples (slices, chips)
            store.add(sample)

Rules every adapter keeps (the contract tests in ``tests/test_adapter_contract.py`` check them):

* ``channel_names`` has exactly C entries for images of C channels; nothing assumes 3.
* Images are float32 ``[C, H, W]`` and finite; intensity handling (HU windows, depth units,
  reflectance scaling, percentile clipping) happens in ``read``; per-channel mean/std are
  computed by the store from the train split, never hard-coded.
* Boxes are xyxy pixels of the returned image, inside it, positive area; labels 1..K.
* ``Sample.affine`` maps pixels to world coordinates and is invertible.
* Errors name the file: raise :class:`dsod_core.errors.DataError` (bad data) or
  :class:`dsod_core.errors.ConfigError` (bad params). Never return partial garbage.
* Paths read from annotation files are resolved inside ``root``; one that escapes it is refused
  (:meth:`resolve_inside_root`).
* ``write_demo`` writes a small synthetic dataset **in the native format** so the real reading
  path runs, and returns the params with which the adapter reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError


@dataclass
class SampleRef:
    """A discovered, not yet read, unit of data (an image, a volume, a raster).

    ``paths`` names the files that make it (e.g. ``{"image": ..., "annotation": ...}``);
    ``meta`` carries whatever ``read`` needs (annotations parsed at discovery, etc.).
    """

    ref_id: str
    split: str
    paths: dict[str, Path]
    meta: dict[str, Any] = field(default_factory=dict)


def assign_split(key: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split from a stable hash of ``key`` (same answer on every machine)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class ModalityAdapter(ABC):
    """Base class of all modality adapters.

    Class attributes to set:
        name: the registry name used in ``params.yaml`` (``modality: depth``).
        param_defaults: every parameter the adapter accepts, with its default. Unknown keys
            are refused with a :class:`ConfigError` naming the key and the accepted ones.
        world_units: what ``Sample.affine`` maps to (``"mm"``, ``"crs"``, ``"pixel"``).
    """

    name: ClassVar[str] = ""
    param_defaults: ClassVar[dict[str, Any]] = {}
    world_units: ClassVar[str] = "pixel"

    def __init__(self, root: str | Path, params: Mapping[str, Any] | None = None):
        self.root = Path(root)
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.param_defaults))
        if unknown:
            raise ConfigError(
                f"unknown {self.name} adapter param(s) {unknown}; "
                f"accepted: {sorted(self.param_defaults)}"
            )
        merged = {**self.param_defaults, **params}
        self.params: dict[str, Any] = merged
        self._check_params()

    def _check_params(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Validate ``self.params`` types/values; raise ConfigError. Override as needed."""

    # --- what the data looks like -------------------------------------------------------
    @property
    @abstractmethod
    def channel_names(self) -> list[str]:
        """Names of the C image channels, in order (e.g. ``["depth_m", "valid"]``)."""

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of classes 1..K, in label order (background excluded). Known after discover."""

    # --- reading ------------------------------------------------------------------------
    @abstractmethod
    def discover(self) -> list[SampleRef]:
        """List the dataset's units under ``self.root`` with their split. Cheap; no pixels."""

    @abstractmethod
    def read(self, ref: SampleRef) -> Iterator[Sample]:
        """Read one unit into canonical samples (stream: large inputs by window/slice)."""

    # --- back to the world --------------------------------------------------------------
    def to_world(
        self,
        sample_meta: Mapping[str, Any],
        affine: np.ndarray,
        detections: Mapping[str, np.ndarray],
    ) -> list[dict[str, Any]]:  # noqa: E501
        """Map one image's detections (``boxes`` px ``[N,4]``, ``scores``, ``labels``) to world
        coordinates. The default maps box corners through ``affine`` and returns one dict per
        detection with ``world_min``/``world_max`` (axis-aligned in world), score and class.
        Modalities with richer outputs (GeoJSON, 3D lesions) override
        :meth:`export_predictions` as well."""
        out = []
        boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, detections["scores"], detections["labels"]):
            corners = np.array([[box[0], box[1]], [box[2], box[3]]])
            world = pixel_to_world(affine, corners)
            out.append(
                {
                    "world_min": np.minimum(world[0], world[1]).tolist(),
                    "world_max": np.maximum(world[0], world[1]).tolist(),
                    "score": float(score),
                    "label": int(label),
                    "class": self.class_names[int(label) - 1],
                }
            )
        return out

    def export_predictions(self, items: list[dict[str, Any]], out_dir: Path) -> list[Path]:
        """Write predictions in the modality's world format. ``items`` holds, per image,
        ``sample_id``, ``source``, ``meta``, ``affine`` and ``detections`` (px, as
        :meth:`to_world` takes). Default: one JSON file of world boxes. Returns written paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for item in items:
            rows.append(
                {
                    "sample_id": item["sample_id"],
                    "source": item["source"],
                    "units": self.world_units,
                    "detections": self.to_world(item["meta"], item["affine"], item["detections"]),
                }
            )
        path = out_dir / "predictions_world.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)
        return [path]

    def extra_metrics(self, exported: list[Path], split: str) -> dict[str, Any]:
        """Modality-specific scores computed from the files :meth:`export_predictions` wrote
        for ``split`` (e.g. FROC on 3D lesions for medical volumes). Default: none."""
        return {}

    def render(self, image: np.ndarray) -> np.ndarray:
        """A uint8 ``[H, W, 3]`` picture of a stored (un-normalised) ``[C,H,W]`` image for
        drawing detections. Default: first channel, min-max scaled, grey."""
        ch = np.asarray(image[0], dtype=np.float64)
        lo, hi = np.percentile(ch, [1, 99]) if ch.size else (0.0, 1.0)
        g = np.clip((ch - lo) / max(hi - lo, 1e-12), 0, 1)
        return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)

    # --- demo ---------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def write_demo(
        cls, out_dir: str | Path, *, num_images: int = 64, image_size: int = 96, seed: int = 0
    ) -> dict[str, Any]:
        """Write a synthetic dataset in the native format under ``out_dir`` and return the
        adapter params that read it (``root`` is ``out_dir``). ``num_images`` is the number of
        training-sized samples to aim for; ``image_size`` the side of one sample in pixels."""

    # --- helpers for subclasses ---------------------------------------------------------
    def resolve_inside_root(self, relative: str | Path, referenced_from: str | Path) -> Path:
        """Resolve a path read from an annotation file; refuse one that escapes ``root``.

        The check is lexical (``..`` and absolute paths), not through symlink targets, so a
        dataset whose image folder is a symlink to another disk still works.
        """
        root = Path(os.path.abspath(self.root))
        candidate = Path(relative)
        path = Path(os.path.normpath(candidate if candidate.is_absolute() else root / candidate))
        if path != root and root not in path.parents:
            raise DataError(
                f"path {str(relative)!r} escapes the dataset root {root}", path=referenced_from
            )
        return path
