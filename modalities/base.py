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

import dataclasses
import difflib
import hashlib
import os
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union

import numpy as np

from dsod_core.data.sample import Sample, pixel_to_world
from dsod_core.errors import ConfigError, DataError
from dsod_core.io import write_json


# --- params ---------------------------------------------------------------------------------
def param(
    default: Any = dataclasses.MISSING,
    doc: str = "",
    *,
    default_factory: Any = dataclasses.MISSING,
    min: float | None = None,  # noqa: A002 - reads best at the call site
    max: float | None = None,  # noqa: A002
    min_exclusive: bool = False,
) -> Any:
    """A field of an :class:`AdapterParams` dataclass with its one-line doc and numeric range.

    Use ``default_factory`` for lists and dicts. Choices are written as ``Literal[...]`` in the
    annotation; ``min``/``max`` bound numbers (and every number inside a list or dict).
    """
    meta = {"doc": doc, "min": min, "max": max, "min_exclusive": min_exclusive}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return f"a mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` checked against the annotation ``tp`` (and converted: numeric strings such as
    YAML's ``50e6`` to numbers, tuples to lists); raises :class:`_Mismatch`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(arg, value, meta)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(tp) and len(args) != len(value):
            raise _Mismatch
        if not args:
            return list(value)
        if origin is tuple and Ellipsis not in typing.get_args(tp):
            return [_coerce(a, v, meta) for a, v in zip(args, value)]
        return [_coerce(args[0], v, meta) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(kt, k, {}): _coerce(vt, v, meta) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp in (int, float):
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise _Mismatch
        if tp is int:
            if float(value) != int(value):
                raise _Mismatch
            value = int(value)
        else:
            value = float(value)
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            raise _Mismatch
        if hi is not None and value > hi:
            raise _Mismatch
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _Mismatch


def _range_text(meta: Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is None and hi is None:
        return ""
    left = f"> {lo}" if meta.get("min_exclusive") else f">= {lo}"
    if hi is None:
        return f" {left}"
    return f" {left} and <= {hi}" if lo is not None else f" <= {hi}"


RENAMED = {"classes": "class_names", "unknown_classes": "unknown_class", "split_seed": "seed"}
"""Old param names -> the shared vocabulary (for the "did you mean" of unknown keys)."""


@dataclass(frozen=True)
class AdapterParams:
    """Base of every adapter's params: a frozen dataclass whose fields are the params.

    Each field is declared with :func:`param` (type annotation, default, one-line doc, range).
    :meth:`parse` is the single validator of the project's adapters: unknown keys (with a
    "did you mean"), types, choices and ranges; :meth:`check` is a hook for rules that span
    fields. Shared vocabulary (use these names for these meanings): ``class_names``,
    ``unknown_class``, ``keep_difficult``, ``val_fraction``, ``test_fraction``, ``seed`` (the
    split hash seed), ``max_pixels``.
    """

    @classmethod
    def parse(
        cls,
        values: Mapping[str, Any] | None = None,
        *,
        owner: str = "",
        source: str | None = None,
        cross_check: bool = True,
    ):
        """Validate a mapping of params (as read from YAML/JSON) into an instance.

        ``owner`` names the adapter in messages; ``source`` (e.g. ``params.yaml``) is the file
        the message names. ``cross_check=False`` checks keys, types and ranges only, not the
        rules of :meth:`check` (for a partial mapping that is completed later, such as a demo
        dataset's params before its ``demo_params.json`` exists).
        """
        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        where = f"{owner} adapter param" if owner else "adapter param"
        unknown = sorted(set(values) - set(fields))
        if unknown:
            key = unknown[0]
            close = [RENAMED[key]] if RENAMED.get(key) in fields else []
            close = close or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"unknown {where} {key!r}{hint} (accepted: {', '.join(sorted(fields))})",
                path=source,
            )
        hints = typing.get_type_hints(cls)
        converted = {}
        for name, value in values.items():
            f = fields[name]
            try:
                converted[name] = _coerce(hints[name], value, f.metadata)
            except _Mismatch:
                raise ConfigError(
                    f"{where} {name!r} must be {_type_name(hints[name])}"
                    f"{_range_text(f.metadata)}, got {value!r}",
                    path=source,
                ) from None
        inst = cls(**converted)
        if not cross_check:
            return inst
        try:
            inst.check()
        except ConfigError as exc:
            if exc.path is None and source is not None:
                raise ConfigError(exc.reason, path=source) from None
            raise
        return inst

    def check(self) -> None:  # noqa: B027 - optional hook
        """Rules that span several fields; raise ``ConfigError`` via :meth:`fail`."""

    def fail(self, name: str, why: str) -> None:
        raise ConfigError(f"adapter param {name!r}: {why}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what the store and the model record as provenance)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per param: name, type, default and doc (for docs and ``--help`` tables)."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append(
                {
                    "name": f.name,
                    "type": _type_name(hints[f.name]) + _range_text(f.metadata),
                    "default": default,
                    "doc": f.metadata.get("doc", ""),
                }
            )
        return rows


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


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
    #: defines ``detect_inputs(adapter, path, predictor, options) -> list[DetectResult]``
    #: (:mod:`dsod_core.inference`); None: the modality cannot detect on new files yet.
    detect_module: ClassVar[str | None] = None

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
        write_json(path, rows, indent=1)
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
