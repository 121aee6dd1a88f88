"""The modality adapter protocol, its params and its error policy.

An adapter turns one kind of imagery, in its native file formats, into canonical
:class:`dsod_core.data.Sample` objects, and maps predictions back to the world. Every modality
is a package of one shape (``docs/adding_a_modality.md`` walks through one)::

    modalities/<name>/adapter.py   the ModalityAdapter subclass
    modalities/<name>/params.py    a frozen dataclass of its params (AdapterParams subclass)
    modalities/<name>/demo.py      the demo generator, writing the native format
    modalities/<name>/<format>.py  one module per file format it reads
    modalities/<name>/detect.py    optional: running a trained model on new files
                                   (``dsod detect``; named by ``detect_module``)

and is registered in one way: an entry point in the group ``dsod.modalities`` (the built-ins
are declared in this project's ``pyproject.toml`` exactly like a third-party package's).

Life cycle, as the prepare stage drives it::

    log = PrepareLog(on_error="skip")          # prepare.on_error alone decides stop or skip
    adapter = AdapterClass(root, params, log=log)  # params validated by the dataclass
    refs = adapter.discover()                 # cheap: headers only, sizes checked, splits
    adapter.class_names, adapter.channel_names  # known after discover()
    for ref in refs:
        for sample in adapter.read(ref):      # one ref may yield many samples (slices, chips)
            store.add(sample)
    log.skipped, log.warnings                 # -> data/prepared/<dataset>.report.json

Rules every adapter keeps (the contract tests in ``tests/test_adapter_contract.py`` check them):

* ``channel_names`` has exactly C entries for images of C channels; nothing assumes 3.
* Images are float32 ``[C, H, W]`` and finite; intensity handling (HU windows, depth units,
  reflectance scaling, percentile clipping) happens in ``read``; per-channel mean/std are
  computed by the store from the train split, never hard-coded.
* Boxes are xyxy pixels of the returned image, inside it, positive area; labels 1..K.
* ``Sample.affine`` maps pixels to world coordinates and is invertible.
* Errors: bad data raises :class:`dsod_core.errors.DataError` naming the file, the sample and
  the reason; bad params raise :class:`dsod_core.errors.ConfigError`. An adapter never decides
  to skip by itself: per-unit problems found while listing go through ``self.log.guard``,
  oddities that do not stop a unit go to ``self.log.warn``. Never return partial garbage: a
  unit (an image, a volume, a raster) unreadable anywhere raises, so it is refused or skipped
  whole.
* Declared sizes are checked from the header before any pixel work (``max_pixels``-style
  limits, named in the message so the user knows which param to raise).
* Paths read from annotation files are resolved inside ``root``; one that escapes it is refused
  (:meth:`resolve_inside_root`).
* ``write_demo`` writes a small synthetic dataset **in the native format** so the real reading
  path runs, and returns the params with which the adapter reads it back.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json
from dsod_core.params import RENAMED as RENAMED  # re-exported: the adapters' params API
from dsod_core.params import AdapterParams
from dsod_core.params import param as param

# --- params ---------------------------------------------------------------------------------
# The typed params mechanism is the project's one (dsod_core/params.py): ``param`` declares a
# field, ``AdapterParams`` is the base of every adapter's frozen params dataclass.


# --- the error policy -------------------------------------------------------------------------
@dataclass
class PrepareLog:
    """What the prepare stage decides and records: ``on_error`` (``"error"`` stops at the first
    bad unit, ``"skip"`` leaves it out) and every skip and warning, with file and reason.

    Adapters use :meth:`guard` around the per-unit work of ``discover`` (parsing one annotation
    file, opening one header), and :meth:`warn` for what does not stop a unit (a label outside
    its raster, an unknown class skipped by ``unknown_class: skip``). Errors raised by ``read``
    are handled by the prepare stage itself, which removes whatever the unit had added.
    """

    on_error: Literal["error", "skip"] = "error"
    skipped: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    #: Named counts the adapters and the shared label layer keep (background images, quirks
    #: such as crowd boxes read as objects, unmatched COCO ids); the prepare report's ``counts``.
    counts: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def guard(self, path: str | os.PathLike, unit: str = "file") -> Iterator[None]:
        """Run a unit's discovery: in skip mode a :class:`DataError` is recorded and swallowed
        (the ``with`` block is left, the loop goes on); in error mode it propagates."""
        try:
            yield
        except DataError as exc:
            if self.on_error != "skip":
                raise
            self.record_skip(exc, path, unit, stage="discover")

    def record_skip(
        self, exc: DataError, path: str | os.PathLike, unit: str, stage: str = "read"
    ) -> None:
        self.skipped.append(
            {
                "file": exc.path or str(path),
                "unit": unit,
                "sample": exc.sample,
                "stage": stage,
                "reason": " ".join(str(exc).split()),  # the message error mode would print
            }
        )

    def warn(
        self, reason: str, path: str | os.PathLike | None = None, sample: str | None = None
    ) -> None:
        self.warnings.append(
            {"file": None if path is None else str(path), "sample": sample, "reason": reason}
        )


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


def split_hash(key: str, seed: int = 0) -> float:
    """A stable pseudo-random number in ``[0, 1)`` from ``key`` and ``seed``, the same on every
    machine and Python version: the first 8 bytes of ``sha256(f"{seed}:{key}")`` read as a
    big-endian integer, divided by ``2**64``.

    The project's one hash for deterministic choices: :func:`assign_split` draws splits with
    it, adapters draw keep/drop decisions with it under their own key prefixes (the
    multispectral adapter's empty chips: ``split_hash(f"empty:{chip}", seed)``, the medical
    adapter's negative slices: ``split_hash(f"{volume}:{k}", seed)``)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(key: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """Deterministic split from the stable hash of ``key`` (:func:`split_hash`): ``test``
    below ``test_fraction``, ``val`` below ``test_fraction + val_fraction``, else ``train``."""
    u = split_hash(key, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


class ModalityAdapter(ABC):
    """Base class of all modality adapters.

    Class attributes to set:
        name: the registry name used in ``params.yaml`` (``modality: depth``); it equals the
            adapter's entry-point name.
        Params: the :class:`AdapterParams` dataclass of the adapter's params.
        world_units: what ``Sample.affine`` maps to (``"mm"``, ``"crs"``, ``"pixel"``).

    ``self.params`` is the validated, frozen ``Params`` instance; ``self.log`` the
    :class:`PrepareLog` that decides stop or skip and records skips and warnings.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[AdapterParams]] = AdapterParams
    world_units: ClassVar[str] = "pixel"
    #: The module ``dsod detect`` runs new inputs with (``modalities/<name>/detect.py``): it
    #: defines ``detect_inputs(adapter, path, predictor, run) -> list[DetectResult]``
    #: (:mod:`dsod_core.detection`); None: the modality cannot detect on new files yet.
    detect_module: ClassVar[str | None] = None
    #: Options of ``dsod detect`` that belong to this modality: an :class:`AdapterParams`
    #: subclass whose fields become ``dsod detect --<field>`` flags (underscores as dashes);
    #: validated once and passed as ``DetectRun.modality``. None: no options of its own.
    DetectParams: ClassVar[type[AdapterParams] | None] = None
    #: The module of the modality's format table (``modalities/<name>/formats.py``), asked by
    #: :meth:`claims`; None: ``<the adapter's package>.formats`` when it exists.
    formats_module: ClassVar[str | None] = None
    #: File-name suffixes (lower case) stripped to name an input's outputs (``.nii.gz``).
    output_suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        root: str | os.PathLike,
        params: Mapping[str, Any] | AdapterParams | None = None,
        *,
        log: PrepareLog | None = None,
    ):
        self.root = Path(root)
        if isinstance(params, self.Params):
            self.params = params
        else:
            self.params = self.Params.parse(params, owner=self.name)
        self.log = log if log is not None else PrepareLog()

    @property
    def warnings(self) -> list[dict[str, Any]]:
        """The warnings recorded so far (``self.log.warnings``)."""
        return self.log.warnings

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

    # --- the file-level API: prepare, evaluate and `dsod detect` all call it --------------
    @classmethod
    def claims(cls, path: str | os.PathLike) -> bool:
        """Whether one of this modality's formats reads ``path`` (a file, or a folder such as
        a DICOM series): its format table's ``claims`` (``modalities/<name>/formats.py``)."""
        import importlib

        name = cls.formats_module or f"{cls.__module__.rpartition('.')[0]}.formats"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            return False
        return bool(module.claims(Path(path)))

    @classmethod
    def accepts(cls, path: str | os.PathLike) -> bool:
        """Whether a model of this modality may be given ``path`` although another modality
        claims it (``dsod detect`` refuses an input another modality claims unless this says
        yes). Default: :meth:`claims`. A modality whose files are often stored in another's
        container (grey thermal frames saved as RGB) widens it."""
        return cls.claims(path)

    @classmethod
    def output_stem(cls, path: str | os.PathLike) -> str:
        """The name an input's outputs are named after: the file name without its format
        suffix (``ct.nii.gz`` -> ``ct``, ``scene.tif`` -> ``scene``), a folder's own name."""
        p = Path(path)
        name = p.name
        for suffix in sorted(cls.output_suffixes, key=len, reverse=True):
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return p.stem if p.is_file() else name

    def state(self) -> dict[str, Any]:
        """What :meth:`discover` learnt from the data that evaluation needs again (class
        names found in the labels, original category ids, ...), as JSON-able data. The
        prepare stage stores it beside the samples, so evaluation never lists raw data."""
        return {"class_names": list(self.class_names)}

    def restore(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Take back what :meth:`state` returned (an adapter rebuilt from a store)."""

    def unit_record(self, ref: SampleRef) -> dict[str, Any] | None:
        """World-level ground truth of one unit for unit-level metrics (3D lesions of a
        volume, ...), stored by the prepare stage for every unit it kept and handed back to
        :meth:`extra_metrics`. Default: none."""
        return None

    def merge(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-sample detections -> per-unit detections (the rule ``dsod detect`` and the
        evaluate stage share). ``items`` holds, per sample, ``sample_id``, ``source``,
        ``meta``, ``affine`` and ``detections`` (``boxes`` px ``[N, 4]``, ``scores``,
        ``labels``). Default: every sample is its own unit (``unit`` = its id)."""
        return [
            {"unit": it["sample_id"], "source": it["source"], "detections": it["detections"]}
            for it in items
        ]

    def detect(self, path: Path, predictor: Any, run: Any) -> list[Any]:
        """``dsod detect`` on one input: ``detect_inputs`` of :attr:`detect_module`
        (``predictor`` follows :class:`dsod_core.detection.PredictorLike`, ``run`` is a
        :class:`dsod_core.detection.DetectRun`); returns ``DetectResult`` records."""
        import importlib

        if not self.detect_module:
            raise ConfigError(
                f"modality {self.name!r} has no detect support (its adapter sets no "
                "detect_module; see docs/adding_a_modality.md)"
            )
        module = importlib.import_module(self.detect_module)
        return list(module.detect_inputs(self, Path(path), predictor, run))

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

    def export_predictions(
        self, items: list[dict[str, Any]], out_dir: Path, merged: list | None = None
    ) -> list[Path]:
        """Write predictions in the modality's world format. ``items`` holds, per image,
        ``sample_id``, ``source``, ``meta``, ``affine`` and ``detections`` (px, as
        :meth:`to_world` takes); ``merged`` the per-unit detections of :meth:`merge` when the
        caller has them. Default: one JSON file of world boxes. Returns written paths."""
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
        write_json(path, rows, indent=1)
        return [path]

    def extra_metrics(
        self, merged: list[dict[str, Any]], units: Mapping[str, Any], split: str
    ) -> dict[str, Any]:
        """Modality-specific scores of the merged detections of ``split`` (:meth:`merge`)
        against the stored unit records (:meth:`unit_record`, by unit id), e.g. FROC on 3D
        lesions for medical volumes. Default: none."""
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
    def check_declared_size(
        self, path: str | os.PathLike, declared: float, limit: float, what: str, param: str
    ) -> None:
        """Refuse a unit whose header declares more than ``limit`` (before any pixel work).

        ``what`` describes the declaration (``"200000 x 200000 px"``), ``param`` names the
        adapter param that raises the limit, so the message says what to change.
        """
        if declared > limit:
            raise DataError(
                f"declares {what} = {declared:,.0f}, over the limit {param}={limit:,.0f} "
                f"(raise the adapter param {param!r} to read it)",
                path=path,
            )

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
