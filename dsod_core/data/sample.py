"""The canonical sample: what every modality adapter produces and the store holds.

Coordinates
-----------
Pixel coordinates are continuous: pixel ``(row r, col c)`` covers ``[c, c+1) x [r, r+1)``, so
its centre is ``(c + 0.5, r + 0.5)``. Boxes are ``x1, y1, x2, y2`` in those coordinates (no +1).

``affine`` is a float64 ``[4, 4]`` matrix mapping homogeneous pixel coordinates
``(x, y, 0, 1)`` of the *stored* image to world coordinates ``(X, Y, Z, 1)``: millimetres in
patient RAS space for medical slices, map units of the raster CRS for multispectral chips
(Z = 0), and original-image pixels for modalities without a world frame. It must be
invertible; adapters build a full-rank 4x4 (the third column carries the slice direction or
a unit Z axis).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsod_core.errors import DataError

SPLITS = ("train", "val", "test")

# The integer dtypes an image may be stored in natively (HDF5 stores each as such).
NATIVE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32")
# The per-channel float64 parameters of a native encoding, in the order they apply.
NATIVE_PARAMS = ("scale", "offset", "low", "high", "shift", "divisor")
_PARAM_DEFAULTS = {
    "scale": 1.0,
    "offset": 0.0,
    "low": -np.inf,
    "high": np.inf,
    "shift": 0.0,
    "divisor": 1.0,
}
_LUT_CACHE: dict[tuple, np.ndarray] = {}
_LUT_CACHE_MAX = 64


@dataclass
class NativeImage:
    """An image in its native integer dtype plus the map back to the float32 canonical image.

    Per channel ``c``, in float64 and in this order (``docs/store.md``)::

        y = float64(data[c]) * scale[c] + offset[c]
        y = clip(y, low[c], high[c])
        y = (y - shift[c]) / divisor[c]
        y = where(valid, y, fill[c])      # only when ``fill`` is given
        image[c] = float32(y)

    Defaults are the identity (scale 1, offset 0, no clip, shift 0, divisor 1, no fill). The
    forms the adapters use: 8-bit ``u / 255`` (``divisor=255``), depth ``mm * 0.001``
    (``scale``), a CT window ``clip((hu - lo) / (hi - lo), 0, 1)`` (``low=shift=lo``,
    ``high=hi``, ``divisor=hi - lo``), raster ``DN * scale + offset`` clipped and rescaled,
    no-data pixels filled (``fill``). :class:`~dsod_core.data.store.StoreWriter` keeps the
    native array only when :meth:`decode` reproduces ``Sample.image`` bit for bit.
    """

    data: np.ndarray
    scale: np.ndarray | float = 1.0
    offset: np.ndarray | float = 0.0
    low: np.ndarray | float = -np.inf
    high: np.ndarray | float = np.inf
    shift: np.ndarray | float = 0.0
    divisor: np.ndarray | float = 1.0
    fill: np.ndarray | float | None = None

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data)
        if self.data.ndim == 2:
            self.data = self.data[None]
        c = self.data.shape[0] if self.data.ndim == 3 else 1
        for name in NATIVE_PARAMS:
            setattr(self, name, _per_channel(getattr(self, name), c, name))
        if self.fill is not None:
            self.fill = _per_channel(self.fill, c, "fill")

    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        dtype: Any,
        valid: np.ndarray | None = None,
        **params: Any,
    ) -> NativeImage | None:
        """The codes of ``dtype`` that ``params`` (positive ``scale``) map back to ``image``,
        found by inverting the map and rounding; None when a code falls outside ``dtype``.
        For an adapter that no longer holds its integer array (depth after a fill): the
        writer still verifies the result bit for bit."""
        image = np.asarray(image, dtype=np.float32)
        probe = cls(np.zeros(image.shape[:1] + (1, 1), dtype=dtype), **params)
        p = probe.params()
        col = (slice(None), None, None)
        pre = image.astype(np.float64) * p["divisor"][col] + p["shift"][col]
        codes = (pre - p["offset"][col]) / p["scale"][col]
        # Values at a clip bound came from any code beyond it: take one safely past it (within
        # the dtype; the writer's check decides).
        info = np.iinfo(np.dtype(dtype))
        with np.errstate(invalid="ignore", over="ignore"):
            low = np.floor((p["low"] - p["offset"]) / p["scale"]) - 1
            high = np.ceil((p["high"] - p["offset"]) / p["scale"]) + 1
        low, high = np.clip(low, info.min, info.max), np.clip(high, info.min, info.max)
        with np.errstate(invalid="ignore"):
            codes = np.where(pre <= p["low"][col], low[col], codes)
            codes = np.where(pre >= p["high"][col], high[col], codes)
        if valid is not None and probe.fill is not None:
            codes = np.where(np.asarray(valid, bool)[None], codes, 0.0)
        codes = np.round(codes)
        if not np.isfinite(codes).all() or codes.min() < info.min or codes.max() > info.max:
            return None
        return cls(codes.astype(dtype), **params)

    def params(self) -> dict[str, np.ndarray]:
        """The encoding's float64 ``[C]`` parameters by name (``fill`` only when given)."""
        out = {name: getattr(self, name) for name in NATIVE_PARAMS}
        if self.fill is not None:
            out["fill"] = self.fill
        return out

    def problem(self) -> str | None:
        """Why this encoding cannot be stored (a reason in words), or None."""
        if self.data.ndim != 3:
            return f"native data must be [C,H,W], got shape {self.data.shape}"
        if self.data.dtype.name not in NATIVE_DTYPES:
            return f"native dtype {self.data.dtype} is not one of {', '.join(NATIVE_DTYPES)}"
        finite = [v for k, v in self.params().items() if k not in ("low", "high")]
        if not all(np.isfinite(v).all() for v in finite) or np.isnan(self.low).any():
            return "native scale/offset/shift/divisor/fill must be finite"
        if np.isnan(self.high).any() or (self.divisor == 0).any():
            return "native high must not be NaN nor a divisor 0"
        return None

    def decode(self, valid: np.ndarray | None = None) -> np.ndarray:
        """The float32 ``[C, H, W]`` image (see the class docstring); ``valid`` (bool
        ``[H, W]``) is needed only with ``fill``."""
        return decode_native(self.data, self.params(), valid)


def _per_channel(value: Any, c: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(c, arr[0], dtype=np.float64)
    if arr.size != c:
        raise ValueError(f"native {name} has {arr.size} values for {c} channels")
    return arr.copy()


def _decode_values(values: np.ndarray, p: Mapping[str, np.ndarray], c: int) -> np.ndarray:
    """The float64 -> float32 map of channel ``c`` applied to ``values`` (any integer array)."""
    y = values.astype(np.float64) * p["scale"][c] + p["offset"][c]
    if np.isfinite(p["low"][c]) or np.isfinite(p["high"][c]):
        y = np.clip(y, p["low"][c], p["high"][c])
    y = (y - p["shift"][c]) / p["divisor"][c]
    return y.astype(np.float32)


def _lut(dtype: np.dtype, p: Mapping[str, np.ndarray], c: int) -> np.ndarray:
    """float32 value of every code of an 8/16-bit ``dtype`` for channel ``c``, indexed by
    the code's unsigned bit pattern; cached by dtype and parameters."""
    key = (dtype.str, *(float(p[k][c]) for k in NATIVE_PARAMS))
    lut = _LUT_CACHE.get(key)
    if lut is None:
        bits = np.dtype(f"u{dtype.itemsize}")
        codes = np.arange(2 ** (8 * dtype.itemsize), dtype=bits).view(dtype)
        lut = _decode_values(codes, p, c)
        if len(_LUT_CACHE) >= _LUT_CACHE_MAX:
            _LUT_CACHE.pop(next(iter(_LUT_CACHE)))
        _LUT_CACHE[key] = lut
    return lut


def decode_native(
    data: np.ndarray, params: Mapping[str, np.ndarray], valid: np.ndarray | None = None
) -> np.ndarray:
    """float32 ``[C, H, W]`` from a native integer array and its per-channel parameters
    (:class:`NativeImage`). 8- and 16-bit data go through a per-channel lookup table of the
    same map (identical values, a gather instead of arithmetic)."""
    c = data.shape[0]
    out = np.empty(data.shape, dtype=np.float32)
    small = data.dtype.itemsize <= 2
    for k in range(c):
        if small:
            codes = data[k].view(f"u{data.dtype.itemsize}")
            np.take(_lut(data.dtype, params, k), codes, out=out[k])
        else:
            out[k] = _decode_values(data[k], params, k)
    fill = params.get("fill")
    if fill is not None:
        if valid is None:
            raise ValueError("a native encoding with fill needs the valid mask")
        holes = ~np.asarray(valid, dtype=bool)
        for k in range(c):
            out[k][holes] = np.float32(fill[k])
    return out


@dataclass
class Sample:
    """One detection sample in canonical form.

    Attributes:
        image: float32 ``[C, H, W]``, finite, in the adapter's intensity scale (not yet
            normalised by dataset statistics).
        boxes: float32 ``[N, 4]`` xyxy pixels of ``image``; N may be 0.
        labels: int64 ``[N]`` in ``1..num_classes`` (0 is background, never stored).
        sample_id: unique id within the dataset.
        source: path of the file the pixels came from.
        split: one of ``train``, ``val``, ``test``.
        difficult: bool ``[N]`` (VOC "difficult"), all False when unknown.
        affine: float64 ``[4, 4]`` pixel -> world (see module docstring).
        valid: optional bool ``[H, W]``; False marks no-data pixels, kept out of statistics.
        meta: JSON-serialisable modality metadata (units, CRS, slice index, chip window, ...).
        crowd: bool ``[N]`` (COCO ``iscrowd``: a region of many objects), all False when
            unknown. Crowd boxes are neither positives nor negatives in training (the loss
            ignores the default boxes covering them) and ignored ground truth in evaluation.
        group: the independence unit the sample belongs to (a patient, a scene, a video
            sequence), when it is wider than ``source``: splits, training subsets and the
            study's bootstrap keep a group whole. None: the unit is ``source``.
        native: optional :class:`NativeImage` whose :meth:`~NativeImage.decode` equals
            ``image`` bit for bit: the store then keeps the integer array (smaller, faster to
            read) instead of float32. Never read by training; only the store writes it.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    sample_id: str
    source: str
    split: str
    difficult: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    valid: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    crowd: np.ndarray | None = None
    native: NativeImage | None = None
    group: str | None = None

    @property
    def unit(self) -> str:
        """The independence unit: ``group`` when set, else ``source``."""
        return self.source if self.group is None else self.group

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if self.crowd is None:
            self.crowd = np.zeros(len(self.labels), dtype=bool)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.valid is not None:
            self.valid = np.asarray(self.valid, dtype=bool)

    @property
    def num_channels(self) -> int:
        return int(self.image.shape[0])

    def validate(self, num_channels: int | None = None, num_classes: int | None = None) -> None:
        """Check the contract; raise :class:`DataError` naming the source on any breach."""

        def fail(reason: str) -> None:
            raise DataError(reason, path=self.source, sample=self.sample_id)

        if self.image.ndim != 3 or min(self.image.shape) < 1:
            fail(f"image must be [C,H,W], got shape {tuple(self.image.shape)}")
        if num_channels is not None and self.image.shape[0] != num_channels:
            fail(f"expected {num_channels} channels, got {self.image.shape[0]}")
        if not np.isfinite(self.image).all():
            fail("image holds NaN or infinite values")
        _, h, w = self.image.shape
        n = len(self.boxes)
        if len(self.labels) != n or len(self.difficult) != n or len(self.crowd) != n:
            fail(
                f"{n} boxes but {len(self.labels)} labels / {len(self.difficult)} difficult / "
                f"{len(self.crowd)} crowd flags"
            )
        if n:
            b = self.boxes
            if not np.isfinite(b).all():
                fail("boxes hold NaN or infinite values")
            if ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
                fail("a box has zero or negative width/height (inverted or degenerate)")
            if (
                (b[:, 0] < 0).any()
                or (b[:, 1] < 0).any()
                or (b[:, 2] > w).any()
                or (b[:, 3] > h).any()
            ):
                fail(f"a box lies outside the {w}x{h} image")
            if (self.labels < 1).any():
                fail("labels must be >= 1 (0 is background)")
            if num_classes is not None and (self.labels > num_classes).any():
                fail(f"a label exceeds the {num_classes} classes")
        if self.split not in SPLITS:
            fail(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.affine.shape != (4, 4) or not np.isfinite(self.affine).all():
            fail("affine must be a finite 4x4 matrix")
        if abs(np.linalg.det(self.affine)) < 1e-12:
            fail("affine is singular (pixel->world must be invertible)")
        if self.valid is not None and self.valid.shape != (h, w):
            fail(f"valid mask shape {self.valid.shape} != image {(h, w)}")
        try:
            json.dumps(self.meta)
        except TypeError as exc:
            fail(f"meta is not JSON-serialisable: {exc}")


def pixel_to_world(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Map pixel points ``[N, 2]`` (x, y) through a ``[4, 4]`` affine to world ``[N, 3]``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    homo = np.concatenate([xy, np.zeros((len(xy), 1)), np.ones((len(xy), 1))], axis=1)
    return (homo @ np.asarray(affine, dtype=np.float64).T)[:, :3]


def world_to_pixel(affine: np.ndarray, xyz: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pixel_to_world`: world ``[N, 3]`` to pixel ``[N, 3]`` (x, y, z≈0)."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    homo = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1)
    return (homo @ np.linalg.inv(np.asarray(affine, dtype=np.float64)).T)[:, :3]
