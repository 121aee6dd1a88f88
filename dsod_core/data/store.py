"""The HDF5 dataset store: the format between the prepare stage and training.

One file per dataset. The layout is documented in ``docs/store.md`` precisely enough to read
it with plain h5py; :class:`StoreWriter` streams samples in (never holding the dataset in
memory) and :class:`StoreReader` reads them back lazily, one open file handle per process, so
it is safe in several DataLoader workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dsod_core.data.sample import NATIVE_PARAMS, SPLITS, NativeImage, Sample, decode_native
from dsod_core.errors import DataError

FORMAT_NAME = "dsod-store"
# Version 2: images may be stored in their native integer dtype (``docs/store.md``). A store
# whose every image is float32 has exactly the version 1 layout and is written as version 1.
FORMAT_VERSION = 2
FLOAT_FORMAT_VERSION = 1
READABLE_VERSIONS = (1, 2)
# A native image up to this many bytes is one HDF5 chunk (one read, one decompression);
# larger ones are split into groups of whole channels of at most this size.
CHUNK_BYTES = 2**20


#: gzip level of native images (decoding speed does not depend on it; see docs/store.md).
NATIVE_GZIP_LEVEL = 6


def _unsigned(data: np.ndarray) -> np.ndarray:
    """The same bytes as the unsigned integer type of the same width (wrapping arithmetic)."""
    return np.ascontiguousarray(data).view(np.dtype(f"u{data.dtype.itemsize}"))


def pixel_difference(data: np.ndarray) -> np.ndarray:
    """The store's lossless predictor of native images (``predictor = "difference"``): each
    pixel minus its left neighbour (TIFF predictor 2, PNG "Sub"), then each row minus the row
    above (PNG "Up"), modulo 2**bits on the last two axes; the first row and column keep
    their values. gzip then sees the small differences of natural images: public 8-bit
    infrared frames take 0.26 bytes/pixel instead of 0.34 without it (docs/store.md)."""
    u = _unsigned(data)
    out = u.copy()
    out[..., 1:] = u[..., 1:] - u[..., :-1]  # unsigned arithmetic wraps modulo 2**bits
    out[..., 1:, :] = out[..., 1:, :] - out[..., :-1, :].copy()
    return out.view(data.dtype)


def pixel_sum(data: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pixel_difference`: running sums modulo 2**bits down the columns,
    then along the rows."""
    u = _unsigned(data)
    u = np.cumsum(u, axis=-2, dtype=u.dtype)
    return np.cumsum(u, axis=-1, dtype=u.dtype).view(data.dtype)


class _RunningStats:
    """Per-channel mean/variance over many images (Chan et al. parallel update, float64)."""

    def __init__(self, channels: int):
        self.count = np.zeros(channels, dtype=np.int64)
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def update(self, image: np.ndarray, valid: np.ndarray | None) -> None:
        c = image.shape[0]
        pixels = image.reshape(c, -1).astype(np.float64)
        if valid is not None:
            pixels = pixels[:, valid.reshape(-1)]
        n = pixels.shape[1]
        if n == 0:
            return
        mean_b = pixels.mean(axis=1)
        m2_b = ((pixels - mean_b[:, None]) ** 2).sum(axis=1)
        n_a = self.count.astype(np.float64)
        total = n_a + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta**2 * (n_a * n / total)
        self.count += n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        # A constant channel (e.g. an all-valid validity mask) would divide by zero.
        std = np.where(std < 1e-6, 1.0, std)
        return self.mean.astype(np.float32), std.astype(np.float32)


def _native_chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, int, int]:
    """Whole sample per chunk up to :data:`CHUNK_BYTES`, else groups of whole channels."""
    c, h, w = shape
    per_channel = h * w * itemsize
    return (max(1, min(c, CHUNK_BYTES // max(per_channel, 1))), h, w)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality of two float32 arrays (``-0.0 != 0.0``; same NaN bits)."""
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


class StoreWriter:
    """Stream :class:`Sample` objects into a new store, written atomically.

    Samples go into ``<path>.partial`` which is renamed onto ``path`` only by :meth:`close`
    after the statistics, splits and the ``complete`` flag are written. An exception inside the
    ``with`` block (or a killed process) leaves no file at ``path`` that looks complete: the
    partial file is removed on exceptions and never carries ``complete = 1``.

    Args:
        path: destination ``.h5`` file.
        modality: adapter name.
        class_names: names of labels 1..K.
        channel_names: names of the C channels; every sample must have C channels.
        params: the params that produced the store (JSON-serialisable), kept for provenance.
        compression: ``"gzip"`` (portable, default) or ``None``.

    A sample carrying :attr:`Sample.native` is stored as that integer array plus its
    per-channel parameters when :meth:`NativeImage.decode` reproduces ``sample.image`` bit for
    bit; otherwise (or when the encoding is malformed) it falls back to float32, counted in
    ``native_fallbacks`` with the first reason in ``fallback_reason``. Statistics are always
    computed from ``sample.image``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        modality: str,
        class_names: list[str],
        channel_names: list[str],
        params: Mapping[str, Any] | None = None,
        compression: str | None = "gzip",
        allow_no_train: bool = False,
    ):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.class_names = list(class_names)
        self.channel_names = list(channel_names)
        self.compression = compression
        self.allow_no_train = allow_no_train  # an evaluation-only store (see close)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.partial, "w", libver=("v110", "latest"))
        f = self._file
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = 0
        f.attrs["modality"] = modality
        f.attrs["class_names"] = json.dumps(self.class_names)
        f.attrs["channel_names"] = json.dumps(self.channel_names)
        f.attrs["params"] = json.dumps(dict(params or {}), default=str)
        f.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._samples = f.create_group("samples")
        self._splits: dict[str, list[int]] = {s: [] for s in SPLITS}
        self._ids: set[str] = set()
        self._stats = _RunningStats(len(self.channel_names))
        self._n = 0
        self.adapter_state: dict[str, Any] = {}
        self.units: dict[str, Any] = {}
        self._native: set[int] = set()  # indices of samples stored natively
        self.native_fallbacks = 0
        self.fallback_reason: str | None = None

    def __len__(self) -> int:
        return self._n

    def add(self, sample: Sample) -> int:
        """Validate and append one sample; returns its index."""
        sample.validate(num_channels=len(self.channel_names), num_classes=len(self.class_names))
        if sample.sample_id in self._ids:
            raise DataError(f"duplicate sample id {sample.sample_id!r}", path=sample.source)
        self._ids.add(sample.sample_id)
        idx = self._n
        g = self._samples.create_group(f"{idx:07d}")
        self._write_image(g, sample, idx)
        g.create_dataset("boxes", data=sample.boxes.astype(np.float32).reshape(-1, 4))
        g.create_dataset("labels", data=sample.labels.astype(np.int64))
        g.create_dataset("difficult", data=sample.difficult.astype(bool))
        g.create_dataset("crowd", data=sample.crowd.astype(bool))
        if sample.valid is not None:
            g.create_dataset(
                "valid", data=sample.valid.astype(np.uint8), compression=self.compression
            )
        g.attrs["sample_id"] = sample.sample_id
        g.attrs["source"] = sample.source
        if sample.group is not None:  # the independence unit, when wider than the file
            g.attrs["group"] = sample.group
        g.attrs["split"] = sample.split
        g.attrs["affine"] = sample.affine.astype(np.float64)
        g.attrs["meta"] = json.dumps(sample.meta)
        self._splits[sample.split].append(idx)
        if sample.split == "train":
            self._stats.update(sample.image, sample.valid)
        self._n += 1
        return idx

    def _native_of(self, sample: Sample) -> NativeImage | None:
        """``sample.native`` when it reproduces ``sample.image`` exactly, else None (counted)."""
        native = sample.native
        if native is None:
            return None
        reason = native.problem()
        if reason is None:
            try:
                decoded = native.decode(sample.valid)
            except ValueError as exc:
                reason = str(exc)
            else:
                if not _bits_equal(decoded, sample.image):
                    reason = "native encoding does not reproduce the float32 image exactly"
        if reason is None:
            return native
        self.native_fallbacks += 1
        if self.fallback_reason is None:
            self.fallback_reason = f"{sample.sample_id}: {reason}"
        return None

    def _write_image(self, g: h5py.Group, sample: Sample, idx: int) -> None:
        native = self._native_of(sample)
        if native is None:  # the version 1 layout
            c, h, w = sample.image.shape
            g.create_dataset(
                "image",
                data=sample.image,
                chunks=(1, h, w),
                compression=self.compression,
                shuffle=self.compression is not None,
            )
            return
        data = native.data
        compressed = self.compression is not None
        ds = g.create_dataset(
            "image",
            data=pixel_difference(data) if compressed else data,
            chunks=_native_chunks(data.shape, data.dtype.itemsize),
            compression=self.compression,
            compression_opts=NATIVE_GZIP_LEVEL if self.compression == "gzip" else None,
            shuffle=compressed and data.dtype.itemsize > 1,
        )
        ds.attrs["encoding"] = "native"
        if compressed:
            ds.attrs["predictor"] = "difference"
        for name, value in native.params().items():
            ds.attrs[name] = value
        self._native.add(idx)

    def mark(self) -> tuple[int, dict[str, int], _RunningStats]:
        """A point to :meth:`rollback` to: what has been added so far."""
        stats = _RunningStats(len(self.channel_names))
        stats.count, stats.mean, stats.m2 = (
            self._stats.count.copy(),
            self._stats.mean.copy(),
            self._stats.m2.copy(),
        )
        return self._n, {k: len(v) for k, v in self._splits.items()}, stats

    def rollback(self, mark: tuple[int, dict[str, int], _RunningStats]) -> int:
        """Remove every sample added since ``mark`` (a unit that failed half-way, skipped
        whole); returns how many were removed. Statistics and splits go back with them."""
        n, split_sizes, stats = mark
        removed = 0
        for idx in range(n, self._n):
            g = self._samples[f"{idx:07d}"]
            self._ids.discard(str(g.attrs["sample_id"]))
            del self._samples[f"{idx:07d}"]
            removed += 1
        stray = f"{self._n:07d}"  # a group that an add() failing half-way left behind
        if stray in self._samples:
            del self._samples[stray]
        for k, size in split_sizes.items():
            del self._splits[k][size:]
        self._stats = stats
        self._n = n
        self._native = {i for i in self._native if i < n}
        return removed

    def close(self) -> Path:
        """Write splits, train statistics and the ``complete`` flag, then rename into place.

        With ``allow_no_train``, a store of val/test samples only (to score a trained model on new
        data) is written too; its statistics are then mean 0, std 1 with ``pixel_count`` 0 —
        a model is scored with its own statistics, and training on it is refused."""
        f = self._file
        if not self._splits["train"] and not (self.allow_no_train and self._n):
            self.abort()
            raise DataError("no training samples were written", path=self.path)
        splits = f.create_group("splits")
        for name, idx in self._splits.items():
            splits.create_dataset(name, data=np.asarray(idx, dtype=np.int64))
        # What evaluation needs of the adapter and the units, so it never re-reads raw data:
        # JSON text in scalar datasets (attributes are limited to 64 kB).
        text = h5py.string_dtype("utf-8")
        f.create_dataset("adapter_state", data=json.dumps(self.adapter_state), dtype=text)
        f.create_dataset("units", data=json.dumps(self.units), dtype=text)
        mean, std = self._stats.result()
        stats = f.create_group("stats")
        stats.create_dataset("mean", data=mean)
        stats.create_dataset("std", data=std)
        stats.create_dataset("pixel_count", data=self._stats.count)
        f.attrs["num_samples"] = self._n
        f.attrs["native_samples"] = len(self._native)
        f.attrs["format_version"] = FORMAT_VERSION if self._native else FLOAT_FORMAT_VERSION
        f.attrs["complete"] = 1
        f.flush()
        f.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        """Discard the partial file."""
        try:
            self._file.close()
        finally:
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _json_dataset(f: h5py.File, name: str) -> dict[str, Any]:
    """A JSON text dataset of the store (``{}`` when absent)."""
    if name not in f:
        return {}
    raw = f[name][()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


class StoreReader:
    """Read a store lazily; picklable, one h5py handle per process.

    Attributes (read once at construction): ``modality``, ``class_names``, ``channel_names``,
    ``params``, ``mean``/``std`` (float32 ``[C]``, train split only), ``splits``,
    ``adapter_state`` (what the adapter learnt from the data: ``ModalityAdapter.state``) and
    ``units`` (unit id -> the adapter's ``unit_record``, world-level ground truth).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("store not found", path=self.path)
        try:
            with h5py.File(self.path, "r") as f:
                attrs = dict(f.attrs)
                if attrs.get("format") != FORMAT_NAME:
                    raise DataError("not a dsod-store HDF5 file", path=self.path)
                version = int(attrs.get("format_version", -1))
                if version not in READABLE_VERSIONS:
                    raise DataError(
                        f"unsupported store format version {version} (this code reads "
                        f"versions {', '.join(map(str, READABLE_VERSIONS))}); re-run the "
                        "prepare stage",
                        path=self.path,
                    )
                if int(attrs.get("complete", 0)) != 1:
                    raise DataError("store is incomplete (interrupted write)", path=self.path)
                self.modality = str(attrs["modality"])
                self.class_names = json.loads(attrs["class_names"])
                self.channel_names = json.loads(attrs["channel_names"])
                self.params = json.loads(attrs["params"])
                self.num_samples = int(attrs["num_samples"])
                self.mean = f["stats/mean"][()].astype(np.float32)
                self.std = f["stats/std"][()].astype(np.float32)
                self.splits = {s: f[f"splits/{s}"][()].astype(np.int64) for s in SPLITS}
                self.adapter_state = _json_dataset(f, "adapter_state")
                self.units = _json_dataset(f, "units")
        except OSError as exc:
            raise DataError(f"cannot read HDF5 store ({exc})", path=self.path) from exc
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.num_samples

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def require_training(self, split: str = "train") -> StoreReader:
        """Refuse a store with no samples in ``split`` (a test-only store) for training."""
        if not len(self.split_indices(split)):
            raise DataError(
                f"store has no {split!r} samples (an evaluation-only store): score a trained "
                "model on it with the evaluate stage; it cannot be trained on",
                path=self.path,
            )
        return self

    def split_indices(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; known: {list(self.splits)}", self.path)
        return self.splits[split]

    def _handle(self) -> h5py.File:
        # A handle opened before fork must not be shared by workers: reopen per process.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def read_targets(self, index: int) -> dict[str, Any]:
        """Boxes, labels, difficult and crowd flags and attributes of sample ``index`` without
        its pixels. ``crowd`` is all False for a store written before that dataset existed."""
        g = self._handle()[f"samples/{index:07d}"]
        labels = g["labels"][()]
        crowd = g["crowd"][()].astype(bool) if "crowd" in g else np.zeros(len(labels), bool)
        return {
            "boxes": g["boxes"][()].reshape(-1, 4),
            "labels": labels,
            "difficult": g["difficult"][()].astype(bool),
            "crowd": crowd,
            "shape": tuple(g["image"].shape),
            "sample_id": str(g.attrs["sample_id"]),
            "source": str(g.attrs["source"]),
            "unit": str(g.attrs.get("group", g.attrs["source"])),
            "split": str(g.attrs["split"]),
            "affine": np.asarray(g.attrs["affine"], dtype=np.float64),
            "meta": json.loads(g.attrs["meta"]),
        }

    def sources(self, indices: Sequence[int]) -> list[str]:
        """The ``source`` attribute (the file the pixels came from) of each sample in
        ``indices``, without reading pixels or boxes."""
        samples = self._handle()["samples"]
        return [str(samples[f"{int(i):07d}"].attrs["source"]) for i in indices]

    def unit_keys(self, indices: Sequence[int]) -> list[str]:
        """The independence unit of each sample in ``indices`` (its ``group`` attribute: a
        patient, a scene, a sequence; else its ``source``): what splits, training subsets and
        the study's bootstrap keep whole."""
        samples = self._handle()["samples"]
        out = []
        for i in indices:
            attrs = samples[f"{int(i):07d}"].attrs
            out.append(str(attrs.get("group", attrs["source"])))
        return out

    def read_image(self, index: int) -> np.ndarray:
        """The stored (un-normalised) float32 ``[C, H, W]`` image of sample ``index``: a
        native image decoded (bit for bit the adapter's float32 image)."""
        g = self._handle()[f"samples/{index:07d}"]
        ds = g["image"]
        data = ds[()]
        if data.dtype == np.float32:
            return data
        attrs = ds.attrs
        if attrs.get("predictor") == "difference":
            data = pixel_sum(data)
        params = {name: attrs[name] for name in NATIVE_PARAMS}
        valid = None
        if "fill" in attrs:
            params["fill"] = attrs["fill"]
            valid = g["valid"][()].astype(bool)
        return decode_native(data, params, valid)

    def get(self, index: int) -> Sample:
        """Sample ``index`` as a :class:`Sample` (un-normalised image)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        t = self.read_targets(index)
        g = self._handle()[f"samples/{index:07d}"]
        valid = g["valid"][()].astype(bool) if "valid" in g else None
        return Sample(
            image=self.read_image(index),
            boxes=t["boxes"],
            labels=t["labels"],
            difficult=t["difficult"],
            crowd=t["crowd"],
            sample_id=t["sample_id"],
            source=t["source"],
            group=t["unit"] if t["unit"] != t["source"] else None,
            split=t["split"],
            affine=t["affine"],
            valid=valid,
            meta=t["meta"],
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
