"""Multispectral adapter: GeoTIFF bands, tiling, GeoJSON labels in any CRS, GeoJSON export.

Rasters and label files are written by hand here with rasterio/json (not by the demo writer),
and every expectation is computed independently (rasterio.warp.transform of corners, numpy).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from dsod_core.data.store import StoreReader, StoreWriter
from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.multispectral import (
    MultispectralAdapter,
    MultispectralParams,
    chip_starts,
    chip_windows,
    geojson,
    geotiff,
)
from modalities.multispectral import adapter as adapter_module
from modalities.registry import get_adapter

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)  # upper-left corner, metres in UTM 33N (~15 E, 45.15 N)
PIX = 10.0
NAMES4 = ["blue", "green", "red", "nir"]


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    nodata=None,
    names=None,
    scales=None,
    offsets=None,
    crs=UTM,
    origin=ORIGIN,
    block: int = 32,
) -> Path:
    """A tiled, compressed GeoTIFF of ``data`` [B, H, W] (north-up, PIX metres)."""
    b, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=w,
        height=h,
        count=b,
        dtype=data.dtype,
        crs=crs,
        transform=from_origin(*origin, PIX, PIX),
        nodata=nodata,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
    ) as dst:
        dst.write(data)
        if names:
            dst.descriptions = tuple(names)
        if scales:
            dst.scales = tuple(scales)
        if offsets:
            dst.offsets = tuple(offsets)
    return path


def write_labels(
    path: Path, features: list[tuple[str, list]], crs_name: str | None = None, kind: str = "Polygon"
) -> Path:
    """GeoJSON with one feature per (class, ring) ``ring`` = list of [x, y]."""
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"class": c},
                "geometry": {"type": kind, "coordinates": [ring] if kind == "Polygon" else ring},
            }
            for c, ring in features
        ],
    }
    if crs_name:
        doc["crs"] = {"type": "name", "properties": {"name": crs_name}}
    path.write_text(json.dumps(doc))
    return path


def utm_to_px(x, y):
    return (np.asarray(x) - ORIGIN[0]) / PIX, (ORIGIN[1] - np.asarray(y)) / PIX


def px_to_utm(c, r):
    return ORIGIN[0] + np.asarray(c) * PIX, ORIGIN[1] - np.asarray(r) * PIX


def lonlat_ring(px_box):
    """A WGS84 ring whose corners are the UTM images of a pixel box's corners."""
    c1, r1, c2, r2 = px_box
    xs, ys = px_to_utm([c1, c2, c2, c1], [r2, r2, r1, r1])
    lon, lat = warp_transform(UTM, "EPSG:4326", xs, ys)
    ring = [[a, b] for a, b in zip(lon, lat)]
    return ring + [ring[0]]


def expected_px_box(ring, src="EPSG:4326"):
    """Independent expectation: transform the ring's corners, take the pixel bbox."""
    xs, ys = warp_transform(src, UTM, [p[0] for p in ring], [p[1] for p in ring])
    c, r = utm_to_px(xs, ys)
    return np.array([c.min(), r.min(), c.max(), r.max()])


def random_raster(rng, bands=4, h=150, w=200):
    return rng.integers(100, 5000, size=(bands, h, w)).astype(np.uint16)


def read_all(adapter):
    return [s for ref in adapter.discover() for s in adapter.read(ref)]


# --- labels: WGS84 (and other CRSs) to the raster's pixels ------------------------------------
@pytest.mark.parametrize(
    "label_crs", [None, "urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:EPSG::3857"]
)
def test_feature_in_map_coordinates_lands_on_expected_pixel_box(tmp_path, label_crs):
    rng = np.random.default_rng(1)
    write_raster(tmp_path / "a.tif", random_raster(rng), names=NAMES4)
    rings, expected = [], []
    for _ in range(5):
        c1, r1 = rng.uniform(5, 120), rng.uniform(5, 90)
        ring = lonlat_ring([c1, r1, c1 + rng.uniform(8, 60), r1 + rng.uniform(8, 50)])
        # Bend the ring a little so it is not a reprojected rectangle any more.
        ring[1] = [ring[1][0] + 1e-5, ring[1][1] - 2e-5]
        if label_crs and label_crs.endswith("3857"):
            xs, ys = warp_transform("EPSG:4326", "EPSG:3857", *zip(*ring))
            expected.append(expected_px_box(list(zip(xs, ys)), "EPSG:3857"))
            ring = [[a, b] for a, b in zip(xs, ys)]
        else:
            expected.append(expected_px_box(ring))
        rings.append(("car", ring))
    write_labels(tmp_path / "a.geojson", rings, crs_name=label_crs)
    # One chip larger than the raster: chip pixels == raster pixels.
    ad = MultispectralAdapter(tmp_path, {"chip_size": 256, "overlap": 0, "min_visible": 0.0})
    (sample,) = read_all(ad)
    order = np.lexsort((sample.boxes[:, 1], sample.boxes[:, 0]))
    exp = np.array(expected)
    exp = exp[np.lexsort((exp[:, 1], exp[:, 0]))]
    np.testing.assert_allclose(sample.boxes[order], exp, atol=1e-3)
    assert sample.meta["crs"] == UTM
    # The sample's affine maps the box corners back to the same UTM coordinates.
    world = sample.affine @ np.array([exp[0, 0], exp[0, 1], 0.0, 1.0])
    np.testing.assert_allclose(world[:2], px_to_utm(exp[0, 0], exp[0, 1]), atol=1e-6)


# --- tiling --------------------------------------------------------------------------------
def test_chip_windows_cover_raster_exactly_with_overlap():
    rng = np.random.default_rng(2)
    for _ in range(40):
        chip = int(rng.integers(8, 40))
        overlap = int(rng.integers(0, chip))
        w, h = (int(v) for v in rng.integers(chip + 1, 5 * chip, 2))
        wins = chip_windows(w, h, chip, overlap)
        count = np.zeros((h, w), dtype=int)
        for win in wins:
            c, r = int(win.col_off), int(win.row_off)
            assert win.width == win.height == chip
            assert 0 <= c and c + chip <= w and 0 <= r and r + chip <= h
            count[r : r + chip, c : c + chip] += 1
        assert (count >= 1).all()
        for length in (w, h):
            starts = chip_starts(length, chip, overlap)
            gaps = np.diff(starts)
            # Every step is chip - overlap, except the last (aligned to the edge), shorter.
            assert (gaps[:-1] == chip - overlap).all()
            assert 0 < gaps[-1] <= chip - overlap
            assert starts[-1] + chip == length
        assert len(wins) == len(chip_starts(w, chip, overlap)) * len(chip_starts(h, chip, overlap))
    assert chip_starts(10, 16, 4) == [0]


def test_chips_read_by_window_reassemble_the_raster(tmp_path):
    rng = np.random.default_rng(3)
    data = random_raster(rng, bands=3, h=170, w=250)
    write_raster(
        tmp_path / "big.tif",
        data,
        names=["b1", "b2", "b3"],
        scales=[1e-4] * 3,
        offsets=[0.01, 0.0, -0.02],
    )
    write_labels(tmp_path / "big.geojson", [("x", lonlat_ring([10, 10, 40, 40]))])
    ad = MultispectralAdapter(
        tmp_path,
        {
            "chip_size": 64,
            "overlap": 16,
            "empty_chip_rate": 1.0,
            "clip_percentiles": None,
            "rescale": False,
        },
    )
    samples = read_all(ad)
    assert len(samples) == len(chip_starts(250, 64, 16)) * len(chip_starts(170, 64, 16)) == 20
    canvas = np.full(data.shape, np.nan)
    for s in samples:
        c, r, w, h = s.meta["window"]
        assert s.image.shape == (3, 64, 64) and s.valid.all()
        canvas[:, r : r + h, c : c + w] = s.image
    expected = data * 1e-4 + np.array([0.01, 0.0, -0.02])[:, None, None]
    np.testing.assert_allclose(canvas, expected, rtol=1e-6, atol=1e-7)


def test_box_cut_by_chip_edge_kept_by_min_visible(tmp_path):
    rng = np.random.default_rng(4)
    write_raster(tmp_path / "a.tif", random_raster(rng, h=64, w=128), names=NAMES4)
    # Chips at x 0..64 and 64..128 (overlap 0); box x 40..80: 24/40 = 60 % in chip 0, 40 % in 1.
    write_labels(tmp_path / "a.geojson", [("car", lonlat_ring([40, 10, 80, 30]))])
    for min_visible, n_left, n_right in ((0.5, 1, 0), (0.3, 1, 1), (0.7, 0, 0)):
        ad = MultispectralAdapter(
            tmp_path,
            {"chip_size": 64, "overlap": 0, "empty_chip_rate": 1.0, "min_visible": min_visible},
        )
        by_col = {s.meta["window"][0]: s for s in read_all(ad)}
        assert len(by_col[0].boxes) == n_left and len(by_col[64].boxes) == n_right
        if n_left:
            np.testing.assert_allclose(by_col[0].boxes[0], [40, 10, 64, 30], atol=1e-3)
        if n_right:
            np.testing.assert_allclose(by_col[64].boxes[0], [0, 10, 16, 30], atol=1e-3)


def test_empty_chips_kept_at_configured_rate_deterministically(tmp_path):
    rng = np.random.default_rng(5)
    write_raster(tmp_path / "a.tif", random_raster(rng, bands=1, h=400, w=400))
    write_labels(tmp_path / "a.geojson", [("x", lonlat_ring([2, 2, 20, 20]))])
    counts = []
    for rate in (0.0, 0.3, 1.0):
        ad = MultispectralAdapter(
            tmp_path, {"chip_size": 16, "overlap": 0, "empty_chip_rate": rate}
        )
        (ref,) = ad.discover()  # one ref per raster, listing its kept chips
        empty = [c for c in ref.meta["chips"] if not c["boxes"]]
        counts.append(len(empty))
        assert [c["id"] for c in ref.meta["chips"]] == [
            c["id"] for c in ad.discover()[0].meta["chips"]
        ]
    # 25 x 25 chips; the box (2..20 px) is 60 % inside chip (0, 0), < 50 % in the others.
    assert counts[0] == 0
    assert counts[2] == 25 * 25 - 1
    assert 0.2 * counts[2] < counts[1] < 0.4 * counts[2]


# --- bands, scale/offset, derived channels, dtypes ----------------------------------------
def test_band_selection_by_name_and_index_scale_offset_and_ndvi(tmp_path):
    rng = np.random.default_rng(6)
    data = rng.uniform(0.01, 0.6, size=(4, 40, 50)).astype(np.float32)
    write_raster(
        tmp_path / "f.tif", data, names=NAMES4, scales=[2.0] * 4, offsets=[0.0, 0.0, 0.1, -0.05]
    )
    write_labels(tmp_path / "f.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    base = {"chip_size": 64, "clip_percentiles": None, "rescale": False}
    by_name = MultispectralAdapter(
        tmp_path, {**base, "bands": ["nir", "red"], "derived": ["ndvi", "ndwi"]}
    )
    (s,) = read_all(by_name)
    assert by_name.channel_names == ["nir", "red", "ndvi", "ndwi"]
    phys = data.astype(np.float64) * 2.0 + np.array([0, 0, 0.1, -0.05])[:, None, None]
    blue, green, red, nir = phys
    np.testing.assert_allclose(s.image[0, :40, :50], nir, rtol=1e-6)
    np.testing.assert_allclose(s.image[1, :40, :50], red, rtol=1e-6)
    # Offsets can make reflectance negative; the indices are documented as clipped to [-1, 1].
    ndvi = np.clip((nir - red) / (nir + red + 1e-6), -1, 1)
    ndwi = np.clip((green - nir) / (green + nir + 1e-6), -1, 1)
    np.testing.assert_allclose(s.image[2, :40, :50], ndvi, atol=1e-6)
    np.testing.assert_allclose(s.image[3, :40, :50], ndwi, atol=1e-6)
    # The 64x64 chip of a 50x40 raster is padded with no-data.
    assert s.valid[:40, :50].all() and not s.valid[40:].any() and not s.valid[:, 50:].any()
    by_index = MultispectralAdapter(tmp_path, {**base, "bands": [4, 3]})
    (t,) = read_all(by_index)
    np.testing.assert_array_equal(t.image, s.image[:2])
    assert by_index.channel_names == ["nir", "red"]


def test_percentile_clip_and_rescale_per_band(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(0, 10000, size=(2, 64, 64)).astype(np.uint16)
    data[0, 0, :5] = 60000  # outliers to clip
    write_raster(tmp_path / "a.tif", data)
    write_labels(tmp_path / "a.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    ad = MultispectralAdapter(
        tmp_path, {"chip_size": 64, "clip_percentiles": [2, 98], "stats_size": 64}
    )
    (s,) = read_all(ad)
    for b in range(2):
        lo, hi = np.percentile(data[b].astype(np.float64), [2, 98])
        expected = (np.clip(data[b], lo, hi) - lo) / (hi - lo)
        np.testing.assert_allclose(s.image[b], expected, atol=1e-5)
    assert s.image.min() == 0.0 and s.image.max() == 1.0


@pytest.mark.parametrize("dtype,nodata", [("uint16", 65535), ("float32", float("nan"))])
def test_nodata_never_leaks_into_statistics(tmp_path, dtype, nodata):
    rng = np.random.default_rng(8)
    data = rng.uniform(100, 3000, size=(3, 96, 96)).astype(dtype)
    hole = np.zeros((96, 96), dtype=bool)
    hole[:30, :50] = True
    hole[70:, 80:] = True
    data[:, hole] = nodata
    write_raster(tmp_path / "n.tif", data, nodata=nodata, scales=[1e-4] * 3)
    write_labels(tmp_path / "n.geojson", [("x", lonlat_ring([55, 40, 80, 60]))])
    ad = MultispectralAdapter(
        tmp_path,
        {
            "chip_size": 48,
            "overlap": 0,
            "empty_chip_rate": 1.0,
            "clip_percentiles": [0, 100],
            "rescale": False,
            "val_fraction": 0.0,
            "test_fraction": 0.0,
        },
    )
    samples = read_all(ad)
    store_path = tmp_path / "s.h5"
    with StoreWriter(
        store_path,
        modality="multispectral",
        class_names=ad.class_names,
        channel_names=ad.channel_names,
    ) as w:
        for s in samples:
            c, r, cw, ch = s.meta["window"]
            np.testing.assert_array_equal(s.valid, ~hole[r : r + ch, c : c + cw])
            # Filled no-data is neutral: inside the valid range, never the no-data value.
            assert np.isfinite(s.image).all()
            valid_vals = data[:, ~hole].astype(np.float64) * 1e-4
            assert s.image.max() <= valid_vals.max() + 1e-6
            assert s.image.min() >= valid_vals.min() - 1e-6
            w.add(s)
    store = StoreReader(store_path)
    expected = data[:, ~hole].astype(np.float64) * 1e-4
    np.testing.assert_allclose(store.mean, expected.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(store.std, expected.std(axis=1), rtol=1e-4)


# --- back to the map -----------------------------------------------------------------------
def test_chip_predictions_merge_and_map_back_to_features(tmp_path):
    rng = np.random.default_rng(9)
    write_raster(tmp_path / "m.tif", random_raster(rng, h=120, w=160), names=NAMES4)
    truth = [
        ("car", [20.0, 30.0, 50.0, 45.0]),
        ("car", [52.0, 60.0, 80.0, 90.0]),
        ("truck", [100.0, 10.0, 140.0, 40.0]),
    ]
    rings = [(c, lonlat_ring(b)) for c, b in truth]
    write_labels(tmp_path / "m.geojson", rings)
    ad = MultispectralAdapter(
        tmp_path,
        {
            "chip_size": 64,
            "overlap": 24,
            "min_visible": 0.3,
            "empty_chip_rate": 1.0,
            "merge_iou": 0.3,
        },
    )
    samples = read_all(ad)
    assert ad.class_names == ["car", "truck"]
    items = []
    for s in samples:
        # A detector that finds every visible part, scored by how complete it is, plus noise.
        area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
        boxes = s.boxes + rng.uniform(-0.3, 0.3, s.boxes.shape)
        items.append(
            {
                "sample_id": s.sample_id,
                "source": s.source,
                "meta": s.meta,
                "affine": s.affine,
                "detections": {"boxes": boxes, "scores": area / 2000.0, "labels": s.labels},
            }
        )
    paths = ad.export_predictions(items, tmp_path / "out")
    assert [p.name for p in paths] == ["m.geojson", "m.wgs84.geojson"]
    utm_doc = json.loads(paths[0].read_text())
    wgs_doc = json.loads(paths[1].read_text())
    assert utm_doc["type"] == "FeatureCollection"
    assert utm_doc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert "crs" not in wgs_doc
    assert len(utm_doc["features"]) == len(truth) == len(wgs_doc["features"])
    for cls, box in truth:
        exp_x, exp_y = px_to_utm([box[0], box[2]], [box[3], box[1]])
        matches = []
        for f in utm_doc["features"]:
            ring = np.array(f["geometry"]["coordinates"][0])
            assert f["geometry"]["type"] == "Polygon" and len(ring) == 5
            np.testing.assert_array_equal(ring[0], ring[-1])
            got = [ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()]
            if np.allclose(got, [exp_x[0], exp_y[0], exp_x[1], exp_y[1]], atol=PIX):
                matches.append(f)
        assert len(matches) == 1, (cls, box)
        props = matches[0]["properties"]
        assert props["class"] == cls and props["source"].endswith("m.tif")
        assert 0 < props["score"]
    # GDAL burns the exported polygons onto the raster grid exactly where the truth boxes are
    # (predictions jitter < 0.5 px, so the same pixel centres fall inside).
    burnt = rasterize(
        [(f["geometry"], 1) for f in utm_doc["features"]],
        out_shape=(120, 160),
        transform=from_origin(*ORIGIN, PIX, PIX),
    )
    expected = np.zeros((120, 160), dtype=burnt.dtype)
    for _, (x1, y1, x2, y2) in truth:
        expected[int(y1) : int(y2), int(x1) : int(x2)] = 1
    np.testing.assert_array_equal(burnt, expected)
    for f in wgs_doc["features"]:
        ring = np.array(f["geometry"]["coordinates"][0])
        xs, ys = warp_transform("EPSG:4326", UTM, ring[:, 0], ring[:, 1])
        c, r = utm_to_px(xs, ys)
        # Some truth box matches this WGS84 polygon within a pixel.
        d = [np.abs(np.array([c.min(), r.min(), c.max(), r.max()]) - b).max() for _, b in truth]
        assert min(d) < 1.0
        # RFC 7946: exterior rings counter-clockwise (positive shoelace area in lon/lat).
        area2 = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area2 > 0


def test_fewer_bands_than_requested(tmp_path):
    rng = np.random.default_rng(11)
    write_raster(tmp_path / "four.tif", random_raster(rng), names=NAMES4)
    write_labels(tmp_path / "four.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    with pytest.raises(DataError, match=r"four\.tif.*band 6 requested.*only 4"):
        MultispectralAdapter(tmp_path, {"bands": [1, 6]}).discover()
    with pytest.raises(DataError, match=r"four\.tif.*no band described 'swir1'"):
        MultispectralAdapter(tmp_path, {"bands": ["red", "swir1"]}).discover()
    with pytest.raises(DataError, match=r"four\.tif.*'swir1'"):
        MultispectralAdapter(tmp_path, {"derived": ["ndbi"]}).discover()


def test_corrupt_tile_names_the_file(tmp_path):
    rng = np.random.default_rng(12)
    path = write_raster(tmp_path / "broken.tif", random_raster(rng, h=128, w=128), block=32)
    write_labels(tmp_path / "broken.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    size = path.stat().st_size
    ad = MultispectralAdapter(tmp_path, {"chip_size": 32, "overlap": 0, "empty_chip_rate": 1.0})
    (ref,) = ad.discover()
    assert len(list(ad.read(ref))) == 16  # intact
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.5))
    # Tiles are gone: the raster is refused whole, before its first chip.
    with pytest.raises(DataError, match=r"broken\.tif: corrupt or truncated tile .*TIFF"):
        next(iter(ad.read(ref)))
    # The windowed and the decimated reads name the file, the window and GDAL's reason too.
    info = ad._rasters["broken.tif"]
    with geotiff.open_raster(path) as ds:
        with pytest.raises(DataError, match=r"broken\.tif: cannot read window .*corrupt.*TIFF"):
            geotiff.read_window(ds, info, Window(96, 96, 32, 32))
        with pytest.raises(DataError, match=r"broken\.tif: cannot read the raster.*truncated"):
            geotiff.raster_stats(ds, info, [], 32, None)
    # Truncated into the header: refused when opened.
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(DataError, match=r"broken\.tif: cannot open GeoTIFF"):
        MultispectralAdapter(tmp_path).discover()


def test_geojson_without_crs_compatible_geometry(tmp_path):
    rng = np.random.default_rng(13)
    write_raster(tmp_path / "a.tif", random_raster(rng), names=NAMES4)
    # UTM metres written without a crs member (RFC 7946 says lon/lat): impossible coordinates.
    xs, ys = px_to_utm([5, 20, 20, 5, 5], [5, 5, 20, 20, 5])
    write_labels(tmp_path / "a.geojson", [("x", [[a, b] for a, b in zip(xs, ys)])])
    with pytest.raises(DataError, match=r"a\.geojson.*outside longitude/latitude.*crs"):
        MultispectralAdapter(tmp_path).discover()
    # The same coordinates with their crs member are fine.
    write_labels(
        tmp_path / "a.geojson",
        [("x", [[a, b] for a, b in zip(xs, ys)])],
        crs_name="urn:ogc:def:crs:EPSG::32633",
    )
    (s,) = read_all(MultispectralAdapter(tmp_path, {"chip_size": 256}))
    np.testing.assert_allclose(s.boxes[0], [5, 5, 20, 20], atol=1e-6)
    # Point geometries cannot make boxes; an unknown CRS name is refused.
    write_labels(tmp_path / "a.geojson", [("x", [15.01, 45.15])], kind="Point")
    with pytest.raises(DataError, match=r"a\.geojson.*feature 0 has geometry 'Point'"):
        MultispectralAdapter(tmp_path).discover()
    write_labels(
        tmp_path / "a.geojson",
        [("x", lonlat_ring([5, 5, 20, 20]))],
        crs_name="urn:ogc:def:crs:EPSG::999999",
    )
    with pytest.raises(DataError, match=r"a\.geojson.*crs"):
        MultispectralAdapter(tmp_path).discover()


def test_labels_missing_the_raster(tmp_path):
    rng = np.random.default_rng(14)
    write_raster(tmp_path / "a.tif", random_raster(rng), names=NAMES4)
    far = lonlat_ring([5000, 5000, 5020, 5020])  # 50 km away
    write_labels(tmp_path / "a.geojson", [("x", far), ("x", far)])
    with pytest.raises(DataError, match=r"a\.geojson.*none of the 2 label features overlaps"):
        MultispectralAdapter(tmp_path).discover()
    # The user can say the misses are expected: then it is a recorded warning.
    ad = MultispectralAdapter(
        tmp_path, {"labels_outside": "warn", "class_names": ["x"], "empty_chip_rate": 1.0}
    )
    refs = ad.discover()
    chips = [c for r in refs for c in r.meta["chips"]]
    assert chips and all(not c["boxes"] for c in chips)
    assert len(ad.warnings) == 1 and ad.warnings[0]["file"].endswith("a.geojson")
    assert "none of the 2 label features overlaps" in ad.warnings[0]["reason"]
    assert ad.log.counts["multispectral_background_units"] == 1  # a count, not a warning
    # Some features outside, some inside: always a warning, the inside ones are used.
    write_labels(tmp_path / "a.geojson", [("x", far), ("x", lonlat_ring([5, 5, 20, 20]))])
    ad = MultispectralAdapter(tmp_path, {"chip_size": 256})
    (s,) = read_all(ad)
    assert len(s.boxes) == 1 and "1 of 2 features lie outside" in ad.warnings[0]["reason"]
    assert ad.warnings[0]["file"].endswith("a.geojson")


def test_unknown_class_missing_labels_and_bad_params(tmp_path):
    rng = np.random.default_rng(15)
    write_raster(tmp_path / "a.tif", random_raster(rng), names=NAMES4)
    write_labels(
        tmp_path / "a.geojson",
        [("car", lonlat_ring([5, 5, 20, 20])), ("boat", lonlat_ring([30, 30, 50, 50]))],
    )
    with pytest.raises(DataError, match=r"a\.geojson.*class 'boat'"):
        MultispectralAdapter(tmp_path, {"class_names": ["car"]}).discover()
    ad = MultispectralAdapter(
        tmp_path, {"class_names": ["car"], "unknown_class": "skip", "chip_size": 256}
    )
    (s,) = read_all(ad)
    assert s.labels.tolist() == [1] and "boat" in ad.warnings[0]["reason"]
    assert ad.warnings[0]["file"].endswith("a.geojson")
    (tmp_path / "a.geojson").unlink()
    with pytest.raises(DataError, match=r"a\.tif.*a\.geojson not found"):
        MultispectralAdapter(tmp_path).discover()
    for bad in (
        {"overlap": 96},
        {"bands": [0]},
        {"derived": ["evi"]},
        {"split_by": "tile"},
        {"clip_percentiles": [99, 1]},
        {"clip_percentiles": ["a", 2]},
        {"min_visible": "half"},
        {"empty_chip_rate": 1.5},
        {"nope": 1},
        {"max_pixels": 0},
        {"band_roles": {"nri": "B8"}},
        {"class_names": ["a", "a"]},
        {"val_fraction": 0.6, "test_fraction": 0.5},
        {"label_pattern": "labels.geojson"},
    ):
        with pytest.raises(ConfigError):
            MultispectralAdapter(tmp_path, bad)
    # The old name of class_names is pointed at.
    with pytest.raises(ConfigError, match=r"'classes'; did you mean 'class_names'"):
        MultispectralAdapter(tmp_path, {"classes": ["car"]})


# --- declared size, whole-raster integrity, per-raster units -------------------------------
def write_sparse_raster(path: Path, width: int, height: int) -> Path:
    """A tiled, deflate GeoTIFF declaring ``width x height`` px with only one tiny window
    written (GDAL's sparse files: unwritten tiles take no bytes)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=1,
        dtype="uint8",
        crs=UTM,
        transform=from_origin(*ORIGIN, PIX, PIX),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        sparse_ok=True,
    ) as dst:
        dst.write(np.ones((1, 16, 16), np.uint8), window=Window(0, 0, 16, 16))
    return path


def test_declared_size_is_refused_from_the_header_before_any_window(tmp_path, monkeypatch):
    rng = np.random.default_rng(16)
    bomb = write_sparse_raster(tmp_path / "bomb.tif", 200_000, 200_000)
    assert bomb.stat().st_size < 10_000_000  # a few MB on disk, 4e10 px declared
    write_labels(tmp_path / "bomb.geojson", [("x", lonlat_ring([2, 2, 12, 12]))])
    write_raster(tmp_path / "good.tif", random_raster(rng, bands=1, h=64, w=64))
    write_labels(tmp_path / "good.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    built = []
    real = adapter_module.chip_windows

    def spy(width, height, *args):
        built.append((width, height))
        return real(width, height, *args)

    monkeypatch.setattr(adapter_module, "chip_windows", spy)
    with pytest.raises(
        DataError, match=r"bomb\.tif: declares 200000 x 200000 px = 40,000,000,000.*'max_pixels'"
    ):
        MultispectralAdapter(tmp_path, {"chip_size": 32}).discover()
    assert built == []  # refused before a single chip window was built
    # Skip mode (the prepare stage's on_error): the bomb is one refused raster, the rest reads.
    log = PrepareLog(on_error="skip")
    params = {"chip_size": 32, "overlap": 0, "empty_chip_rate": 1.0}
    ad = MultispectralAdapter(tmp_path, params, log=log)
    (ref,) = ad.discover()
    assert ref.meta["raster"] == "good.tif" and built == [(64, 64)]
    (skip,) = log.skipped
    assert skip["file"].endswith("bomb.tif") and skip["unit"] == "raster"
    assert "max_pixels=1,000,000,000" in skip["reason"]
    assert len(list(ad.read(ref))) == 4
    # The limit is a param: raised, the header passes (the chips are then listed).
    monkeypatch.setattr(adapter_module, "chip_windows", lambda *a: [])
    refs = MultispectralAdapter(tmp_path, {"max_pixels": 5e10, "empty_chip_rate": 0.0}).discover()
    assert refs == []  # no chip kept (patched), but the bomb was not refused


def test_sentinel2_tile_passes_the_default_size_limit(tmp_path):
    # A Sentinel-2 10 m tile: 10980 x 10980 = 1.2e8 px; the header is all discover reads.
    write_sparse_raster(tmp_path / "T33TWM.tif", 10980, 10980)
    params = {"require_labels": False, "class_names": ["ship"], "empty_chip_rate": 0.01}
    assert MultispectralParams.parse(params).max_pixels >= 10980 * 10980
    (ref,) = MultispectralAdapter(tmp_path, params).discover()
    assert ref.meta["chips"] and ref.meta["chips"][-1]["window"][:2] != [0, 0]
    with pytest.raises(DataError, match=r"T33TWM\.tif: declares 10980 x 10980 px"):
        MultispectralAdapter(tmp_path, {**params, "max_pixels": 1e8}).discover()


def _corrupt_block(path: Path, x: int, y: int) -> None:
    """Overwrite the compressed bytes of internal block (x, y) with garbage, found through
    GDAL's TIFF metadata (BLOCK_OFFSET_x_y / BLOCK_SIZE_x_y)."""
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * size)


def test_corrupt_tile_where_no_chip_reads_refuses_the_raster_whole(tmp_path, monkeypatch):
    rng = np.random.default_rng(17)
    bad = write_raster(tmp_path / "bad.tif", random_raster(rng, bands=3, h=128, w=128), block=32)
    good = write_raster(tmp_path / "good.tif", random_raster(rng, bands=3, h=128, w=128))
    for p in (bad, good):
        write_labels(p.with_suffix(".geojson"), [("x", lonlat_ring([3, 3, 20, 20]))])
    _corrupt_block(bad, 2, 1)  # the tile at px x 64..96, y 32..64: no kept chip covers it
    params = {"chip_size": 32, "overlap": 0, "empty_chip_rate": 0.0}
    ad = MultispectralAdapter(tmp_path, params)
    refs = {r.ref_id: r for r in ad.discover()}
    assert [c["window"] for c in refs["bad"].meta["chips"]] == [[0, 0, 32, 32]]
    with rasterio.open(bad) as ds:  # the one chip alone still decodes
        ds.read(window=Window(0, 0, 32, 32))
    with pytest.raises(
        DataError,
        match=r"bad\.tif: corrupt or truncated tile in window col=0 row=0 128x128: "
        r"the raster cannot be read whole.*IReadBlock failed at X offset 2, Y offset 1",
    ):
        list(ad.read(refs["bad"]))
    # Larger rasters are checked by runs of block rows (or of blocks), memory bounded: the
    # message then narrows the window down.
    for budget, window in ((128 * 32 * 3 * 2, "col=0 row=32 128x32"), (1, "col=64 row=32 32x32")):
        monkeypatch.setattr(geotiff, "_VERIFY_BYTES", budget)
        with pytest.raises(DataError, match=rf"bad\.tif: corrupt .* window {window}: "):
            next(iter(ad.read(refs["bad"])))
    # What the prepare stage does in skip mode: the bad raster adds nothing, the good one all.
    stored, skipped = [], []
    for ref in refs.values():
        try:
            samples = list(ad.read(ref))
        except DataError as exc:
            skipped.append((ref.ref_id, exc.path))
            continue
        stored += samples
    assert skipped == [("bad", str(bad))]
    assert [s.sample_id for s in stored] == ["good_c0_r0"]


def test_bad_label_file_or_header_among_many_is_one_refused_raster(tmp_path):
    rng = np.random.default_rng(18)
    for name in ("a", "b", "c", "d"):
        write_raster(tmp_path / f"{name}.tif", random_raster(rng, bands=2, h=64, w=64))
        write_labels(tmp_path / f"{name}.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    (tmp_path / "b.geojson").write_text('{"type": "FeatureCollection", "features": [')
    (tmp_path / "c.tif").write_bytes((tmp_path / "c.tif").read_bytes()[:100])
    params = {"chip_size": 64}
    with pytest.raises(DataError, match=r"b\.geojson: cannot read GeoJSON labels"):
        MultispectralAdapter(tmp_path, params).discover()
    log = PrepareLog(on_error="skip")
    ad = MultispectralAdapter(tmp_path, params, log=log)
    assert [r.ref_id for r in ad.discover()] == ["a", "d"]
    assert [(Path(s["file"]).name, s["unit"], s["stage"]) for s in log.skipped] == [
        ("b.geojson", "raster", "discover"),
        ("c.tif", "raster", "discover"),
    ]
    assert "cannot read GeoJSON labels" in log.skipped[0]["reason"]
    assert "cannot open GeoTIFF" in log.skipped[1]["reason"]
    # A raster whose bands differ from the first raster's is one refused unit as well.
    (tmp_path / "c.tif").unlink()
    write_raster(tmp_path / "c.tif", random_raster(rng, bands=3, h=64, w=64))
    log = PrepareLog(on_error="skip")
    assert [r.ref_id for r in MultispectralAdapter(tmp_path, params, log=log).discover()] == [
        "a",
        "d",
    ]
    assert "band layout" in log.skipped[1]["reason"] and log.skipped[1]["file"].endswith("c.tif")


def test_every_raster_refused_is_an_error_with_the_first_reason(tmp_path):
    rng = np.random.default_rng(19)
    write_raster(tmp_path / "only.tif", random_raster(rng), names=NAMES4)
    write_labels(tmp_path / "only.geojson", [("x", lonlat_ring([5, 5, 20, 20]))])
    log = PrepareLog(on_error="skip")
    with pytest.raises(
        DataError, match=r"only\.tif: every raster .* was refused \(1\).*band 5 requested.*only 4"
    ):
        MultispectralAdapter(tmp_path, {"bands": [1, 5]}, log=log).discover()
    assert len(log.skipped) == 1


def test_params_dataclass_documents_every_param():
    rows = MultispectralParams.describe()
    assert {r["name"] for r in rows} >= {"class_names", "unknown_class", "seed", "max_pixels"}
    assert all(r["doc"] for r in rows)
    defaults = MultispectralParams()
    assert defaults.roles["nir"] == "nir" and defaults.clip_percentiles == [1.0, 99.0]
    p = MultispectralParams.parse({"band_roles": {"nir": "B8"}, "max_pixels": "2e9"})
    assert p.roles["nir"] == "B8" and p.roles["red"] == "red" and p.max_pixels == 2_000_000_000
    with pytest.raises(ConfigError, match=r"'overlap'.*chip_size=32"):
        MultispectralParams.parse({"chip_size": 32, "overlap": 32})


def test_prediction_geojson_refuses_nan(tmp_path):
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        "properties": {"score": float("nan")},
    }
    with pytest.raises(ValueError):
        geojson.write_feature_collection(tmp_path / "p.geojson", [feature], geojson.WGS84, "p")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


# --- demo, ablation, render ----------------------------------------------------------------
def test_demo_round_trip_and_band_ablation(tmp_path):
    t0 = time.perf_counter()
    params = MultispectralAdapter.write_demo(tmp_path, num_images=24, image_size=64, seed=3)
    assert time.perf_counter() - t0 < 10
    labels_doc = json.loads(next(tmp_path.glob("*.geojson")).read_text())
    assert "crs" not in labels_doc  # WGS84 labels: reprojection to UTM runs on every read
    with rasterio.open(next(tmp_path.glob("*.tif"))) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.count == 8 and ds.dtypes[0] == "uint16"
        assert ds.scales[0] == pytest.approx(1e-4) and ds.nodata == 0
        assert ds.profile["tiled"] and ds.compression is not None
    ad = get_adapter("multispectral")(tmp_path, params)
    samples = read_all(ad)
    assert len(samples) >= 24 and {s.split for s in samples} == {"train", "val", "test"}
    # split by scene: every chip of a raster in its raster's split
    assert params["split_by"] == "raster"
    assert len({(s.meta["raster"], s.split) for s in samples}) == len(
        {s.meta["raster"] for s in samples}
    )
    assert len(ad.channel_names) == 8 and ad.class_names == [
        "green_roof",
        "painted_roof",
        "bare_roof",
    ]
    assert any(not s.valid.all() for s in samples)  # the no-data corner
    # green vs painted roofs: same visible reflectance, different NIR.
    ch = {n: i for i, n in enumerate(ad.channel_names)}
    raw = MultispectralAdapter(tmp_path, {**params, "clip_percentiles": None, "rescale": False})
    means = {1: [], 2: []}
    for s in read_all(raw):
        for b, lab in zip(s.boxes.astype(int), s.labels):
            if lab in means:
                means[lab].append(s.image[:, b[1] + 2 : b[3] - 2, b[0] + 2 : b[2] - 2].mean((1, 2)))
    g, p = np.mean(means[1], 0), np.mean(means[2], 0)
    for band in ("blue", "green", "red"):
        assert abs(g[ch[band]] - p[ch[band]]) < 0.01
    assert g[ch["nir"]] - p[ch["nir"]] > 0.3
    visible = MultispectralAdapter(tmp_path, {**params, "bands": ["blue", "green", "red"]})
    vs = read_all(visible)
    assert visible.channel_names == ["blue", "green", "red"] and vs[0].image.shape[0] == 3
    for s in vs:
        s.validate(num_channels=3, num_classes=3)


def test_render_false_colour_and_fallbacks(tmp_path):
    MultispectralAdapter.write_demo(tmp_path, num_images=1, image_size=32)
    ad = MultispectralAdapter(tmp_path, {"chip_size": 32})
    ad.discover()
    img = np.zeros((8, 10, 12), dtype=np.float32)
    img[5] = np.arange(12)[None, :]  # nir varies along x
    img[3] = np.arange(10)[:, None]  # red varies along y
    out = ad.render(img)
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all() and out[0, -1, 0] == 255
    assert (out[0, :, 1] == out[0, 0, 1]).all() and out[-1, 0, 1] == 255
    assert (out[..., 2] == 0).all()  # green constant
    grey = ad.render(np.arange(20, dtype=np.float32).reshape(1, 4, 5))
    assert (grey[..., 0] == grey[..., 2]).all() and grey.max() == 255
