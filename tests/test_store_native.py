"""Native-dtype images in the store (format version 2): the integer array plus per-channel
parameters reproduce the adapter's float32 image bit for bit, fall back to float32 when they
do not, make the store smaller, and older float32 stores still read."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dsod_core.data.sample import NativeImage, Sample
from dsod_core.data.store import StoreReader, StoreWriter
from dsod_core.errors import DataError
from modalities import get_adapter

WINDOW = dict(low=-1000.0, high=400.0, shift=-1000.0, divisor=1400.0)


def _sample(image, i=0, native=None, valid=None, split="train"):
    return Sample(
        image, np.zeros((0, 4)), [], f"s{i}", f"s{i}.png", split, native=native, valid=valid
    )


def _write(path, samples, channels, **kw):
    names = [f"c{k}" for k in range(channels)]
    with StoreWriter(path, modality="t", class_names=["a"], channel_names=names, **kw) as w:
        for s in samples:
            w.add(s)
    return w


def _bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def _every_code(dtype, shape):
    """Every value of a 8/16-bit dtype, laid out as ``shape`` (wrapping around)."""
    info = np.iinfo(dtype)
    codes = np.arange(info.min, info.max + 1, dtype=np.int64)
    return np.resize(codes, shape).astype(dtype)


@pytest.mark.parametrize(
    "dtype, params, reference",
    [
        (np.uint8, {"divisor": 255.0}, lambda x: x.astype(np.float32) / 255.0),
        (np.uint16, {"scale": 0.001}, lambda x: (x.astype(np.float64) * 0.001).astype(np.float32)),
        (
            np.int16,
            WINDOW,
            lambda x: np.clip((x.astype(np.float64) + 1000.0) / 1400.0, 0, 1).astype(np.float32),
        ),
    ],
    ids=["uint8/255", "uint16 mm->m", "int16 HU window"],
)
def test_every_code_round_trips_bit_for_bit(tmp_path, dtype, params, reference):
    """All 256 / 65536 values, written by the adapters' own arithmetic, read back exactly."""
    codes = _every_code(dtype, (1, 256, 256))
    image = reference(codes)
    w = _write(tmp_path / "s.h5", [_sample(image, native=NativeImage(codes, **params))], 1)
    assert w.native_fallbacks == 0
    r = StoreReader(tmp_path / "s.h5")
    np.testing.assert_array_equal(_bits(r.read_image(0)), _bits(image))
    np.testing.assert_array_equal(_bits(r.get(0).image), _bits(image))
    with h5py.File(r.path, "r") as f:
        assert f.attrs["format_version"] == 2 and f.attrs["native_samples"] == 1
        ds = f["samples/0000000/image"]
        assert ds.dtype == dtype and ds.attrs["encoding"] == "native"
        assert ds.attrs["predictor"] == "difference"
        stored = ds[()]
        assert not np.array_equal(stored, codes)  # the predictor's differences are stored
        # Plain h5py + numpy, following docs/store.md: running sums down the columns, then
        # along the rows (modulo 2**bits), then float32 of the float64 formula.
        u = stored.view(np.dtype(f"u{stored.dtype.itemsize}"))
        x = np.cumsum(np.cumsum(u, axis=-2, dtype=u.dtype), axis=-1, dtype=u.dtype)
        x = x.view(stored.dtype)
        np.testing.assert_array_equal(x, codes)
        a = {k: ds.attrs[k][:, None, None] for k in ("scale", "offset", "low", "high")}
        y = np.clip(x.astype(np.float64) * a["scale"] + a["offset"], a["low"], a["high"])
        y = (y - ds.attrs["shift"][:, None, None]) / ds.attrs["divisor"][:, None, None]
        np.testing.assert_array_equal(_bits(y.astype(np.float32)), _bits(image))


def test_statistics_identical_to_float_store(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (4, 2, 16, 16)).astype(np.uint8)
    samples = [_sample(c.astype(np.float32) / 255.0, i) for i, c in enumerate(codes)]
    _write(tmp_path / "f.h5", samples, 2)
    for s, c in zip(samples, codes):
        s.native = NativeImage(c, divisor=255.0)
    _write(tmp_path / "n.h5", samples, 2)
    f, n = StoreReader(tmp_path / "f.h5"), StoreReader(tmp_path / "n.h5")
    np.testing.assert_array_equal(f.mean, n.mean)
    np.testing.assert_array_equal(f.std, n.std)
    for i in range(4):
        np.testing.assert_array_equal(_bits(f.read_image(i)), _bits(n.read_image(i)))


def test_mismatch_falls_back_to_float32(tmp_path):
    codes = _every_code(np.uint8, (1, 16, 16))
    image = codes.astype(np.float32) / 255.0
    bad = [
        _sample(image, 0, NativeImage(codes, divisor=254.0)),  # wrong map
        _sample(image, 1, NativeImage(codes.astype(np.float32))),  # not an integer dtype
        _sample(image, 2, NativeImage(codes[:, :8], divisor=255.0)),  # wrong shape
    ]
    w = _write(tmp_path / "s.h5", bad, 1)
    assert w.native_fallbacks == 3
    assert w.fallback_reason.startswith("s0: native encoding does not reproduce")
    r = StoreReader(tmp_path / "s.h5")
    with h5py.File(r.path, "r") as f:
        assert f.attrs["format_version"] == 1  # float32 only: exactly the version 1 layout
        assert f["samples/0000000/image"].dtype == np.float32
    for i in range(3):
        np.testing.assert_array_equal(_bits(r.read_image(i)), _bits(image))


def test_fill_of_no_data_pixels_and_from_image(tmp_path):
    """A raster chip: DN * scale + offset, clipped, rescaled, no-data pixels filled."""
    rng = np.random.default_rng(1)
    dn = rng.integers(0, 4000, (2, 24, 24)).astype(np.uint16)
    valid = rng.random((24, 24)) > 0.2
    lo, hi = np.array([0.05, 0.02]), np.array([0.3, 0.35])
    span, fill = hi - lo, np.array([0.4, 0.6])
    phys = np.clip(
        dn * np.array([1e-4, 1e-4])[:, None, None] - 0.1, lo[:, None, None], hi[:, None, None]
    )
    image = np.where(
        valid[None], (phys - lo[:, None, None]) / span[:, None, None], fill[:, None, None]
    )
    image = image.astype(np.float32)
    params = dict(scale=1e-4, offset=-0.1, low=lo, high=hi, shift=lo, divisor=span, fill=fill)
    fitted = NativeImage.from_image(image, np.uint16, valid=valid, **params)
    assert fitted is not None
    w = _write(tmp_path / "s.h5", [_sample(image, native=fitted, valid=valid)], 2)
    assert w.native_fallbacks == 0, w.fallback_reason
    got = StoreReader(tmp_path / "s.h5").read_image(0)
    np.testing.assert_array_equal(_bits(got), _bits(image))
    assert NativeImage.from_image(image * 1e6, np.uint8, divisor=255.0) is None  # out of range


def test_native_store_is_smaller(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    grey = (xx * 3 + yy * 2 + np.random.default_rng(2).integers(0, 8, (64, 64))) % 256
    grey = grey.astype(np.uint8)
    rgb = np.repeat(grey[None], 3, 0)
    today = [_sample(rgb.astype(np.float32) / 255.0, i) for i in range(6)]
    native = [
        _sample(grey[None].astype(np.float32) / 255.0, i, NativeImage(grey, divisor=255.0))
        for i in range(6)
    ]
    _write(tmp_path / "today.h5", today, 3)
    _write(tmp_path / "native.h5", native, 1)

    def image_bytes(path):  # what the pixels take on disk (the rest is per-group metadata)
        with h5py.File(path, "r") as f:
            return sum(f[f"samples/{i:07d}/image"].id.get_storage_size() for i in range(6))

    ratio = image_bytes(tmp_path / "native.h5") / image_bytes(tmp_path / "today.h5")
    assert ratio < 0.2, ratio
    assert (tmp_path / "native.h5").stat().st_size < (tmp_path / "today.h5").stat().st_size


def test_old_float_store_reads_and_unknown_version_refused(tmp_path):
    image = np.random.default_rng(3).random((2, 8, 8)).astype(np.float32)
    _write(tmp_path / "old.h5", [_sample(image)], 2)
    with h5py.File(tmp_path / "old.h5", "a") as f:  # as version 1 code wrote it
        del f.attrs["native_samples"]
        assert f.attrs["format_version"] == 1
    np.testing.assert_array_equal(StoreReader(tmp_path / "old.h5").read_image(0), image)
    with h5py.File(tmp_path / "old.h5", "a") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(DataError, match=r"old\.h5: unsupported store format version 3.*re-run"):
        StoreReader(tmp_path / "old.h5")


def test_rollback_forgets_native_samples(tmp_path):
    codes = _every_code(np.uint8, (1, 8, 8))
    image = codes.astype(np.float32) / 255.0
    with StoreWriter(tmp_path / "s.h5", modality="t", class_names=["a"], channel_names=["g"]) as w:
        w.add(_sample(image, 0))
        mark = w.mark()
        w.add(_sample(image, 1, NativeImage(codes, divisor=255.0)))
        assert w.rollback(mark) == 1
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format_version"] == 1 and f.attrs["native_samples"] == 0


# --- the adapters hand the store their native encoding ---------------------------------------


def _adapter_samples(root: Path, name: str, **override):
    cls = get_adapter(name)
    params = {**cls.write_demo(root, num_images=6, image_size=32, seed=0), **override}
    if override.get("encoding") == "rgbd":  # aligned colour images, written by Pillow
        (root / "rgb").mkdir()
        rng = np.random.default_rng(4)
        for png in sorted((root / "depth").glob("*.png")):
            w, h = Image.open(png).size
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "rgb" / png.name
            )
    adapter = cls(root, params)
    samples = [s for ref in adapter.discover() for s in adapter.read(ref)]
    return adapter, samples


@pytest.mark.parametrize(
    "name, override, dtype",
    [
        ("rgb", {}, np.uint8),
        ("depth", {"encoding": "depth"}, np.uint16),
        ("depth", {"encoding": "depth", "validity_channel": True}, np.uint16),
        ("depth", {"encoding": "rgbd"}, np.uint16),
        ("medical", {}, np.int16),
    ],
    ids=["rgb", "depth", "depth+valid", "rgbd", "medical-ct"],
)
def test_adapter_samples_stored_natively_read_back_exactly(tmp_path, name, override, dtype):
    adapter, samples = _adapter_samples(tmp_path, name, **override)
    assert samples and all(s.native is not None for s in samples)
    path = tmp_path / "store.h5"
    with StoreWriter(
        path, modality=name, class_names=adapter.class_names, channel_names=adapter.channel_names
    ) as w:
        for s in samples:
            w.add(s)
    assert w.native_fallbacks == 0, w.fallback_reason
    r = StoreReader(path)
    for i, s in enumerate(samples):
        np.testing.assert_array_equal(_bits(r.read_image(i)), _bits(s.image))
    with h5py.File(path, "r") as f:
        assert f["samples/0000000/image"].dtype == dtype
        assert json.loads(f.attrs["channel_names"]) == adapter.channel_names


def test_depth_computed_encoding_stays_float32(tmp_path):
    _, samples = _adapter_samples(tmp_path, "depth")  # the demo's hha encoding
    assert samples and all(s.native is None for s in samples)
