"""Multispectral formats: band stacks (Sentinel-2 L2A granules, Landsat Collection 2), xView and
DOTA labels, one label file for several rasters.

Band files are written with rasterio (GTiff and JP2OpenJPEG, lossless), metadata and label
files with the standard library in their published layouts; every expectation (block averages,
bilinear interpolation, reflectance, pixel boxes) is computed here independently with numpy and
scipy, never by the adapter's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy.ndimage import map_coordinates

from dsod_core.errors import ConfigError, DataError
from modalities.multispectral import MultispectralAdapter
from modalities.multispectral.bandstack import BandStack

UTM = "EPSG:32633"
X0, Y0 = 500000.0, 5000000.0
TILE, DT = "T33TWM", "20230101T100021"
SCENE = f"{TILE}_{DT}"
SAFE = "S2B_MSIL2A_20230101T100021_N0509_R122_T33TWM_20230101T120000.SAFE"
GRANULE = f"{SAFE}/GRANULE/L2A_T33TWM_A030000_20230101T100021"
S2_IDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def write_band(path: Path, data: np.ndarray, pix: float, *, driver="GTiff", nodata=0) -> Path:
    """One single-band file of ``data`` [H, W] on the UTM grid at (X0, Y0), ``pix`` metres."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=UTM,
        transform=from_origin(X0, Y0, pix, pix),
        nodata=nodata,
        **opts,
    ) as dst:
        dst.write(data, 1)
    return path


def write_mtd(path: Path, offsets: dict[str, int] | None, quant: int = 10000) -> Path:
    """An MTD_MSIL2A.xml with the published element layout (General_Info /
    Product_Image_Characteristics); ``offsets`` physical band -> BOA_ADD_OFFSET, or None for a
    product before processing baseline 04.00 (no offsets list)."""
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b}"/>' for i, b in enumerate(S2_IDS)
    )
    offs = ""
    if offsets is not None:
        offs = "<BOA_ADD_OFFSET_VALUES_LIST>" + "".join(
            f'<BOA_ADD_OFFSET band_id="{i}">{offsets.get(b, -1000)}</BOA_ADD_OFFSET>'
            for i, b in enumerate(S2_IDS)
        )
        offs += "</BOA_ADD_OFFSET_VALUES_LIST>"
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-2A.xsd"><n1:General_Info><Product_Image_Characteristics>'
        "<QUANTIFICATION_VALUES_LIST>"
        f'<BOA_QUANTIFICATION_VALUE unit="none">{quant}</BOA_QUANTIFICATION_VALUE>'
        '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
        "</QUANTIFICATION_VALUES_LIST>"
        f"{offs}<Spectral_Information_List>{spectral}</Spectral_Information_List>"
        "</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"
    )
    return path


def utm_box_geojson(path: Path, boxes_px: list[tuple[str, list[float]]], pix: float) -> Path:
    """GeoJSON (legacy crs member, UTM) of pixel boxes of the ``pix`` grid at (X0, Y0)."""
    feats = []
    for cls, (c1, r1, c2, r2) in boxes_px:
        xs = [X0 + c * pix for c in (c1, c2, c2, c1, c1)]
        ys = [Y0 - r * pix for r in (r2, r2, r1, r1, r2)]
        feats.append(
            {
                "type": "Feature",
                "properties": {"class": cls},
                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in zip(xs, ys)]]},
            }
        )
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": feats,
    }
    path.write_text(json.dumps(doc))
    return path


RAW = {"clip_percentiles": None, "rescale": False, "empty_chip_rate": 1.0, "overlap": 0}


def read_all(adapter):
    return [s for ref in adapter.discover() for s in adapter.read(ref)]


@pytest.fixture
def s2(tmp_path):
    """A Sentinel-2 L2A product: B04, B08 at 10 m (JPEG 2000), B11 at 20 m (JPEG 2000) and
    B04 also at 20 m (the adapter must use the 10 m one), plus B8A at 20 m as a GeoTIFF."""
    rng = np.random.default_rng(0)
    img = tmp_path / GRANULE / "IMG_DATA"
    b04 = rng.integers(1000, 6000, (40, 40)).astype(np.uint16)
    b04[0, :3] = 0  # nodata
    b08 = rng.integers(1000, 6000, (40, 40)).astype(np.uint16)
    b11 = rng.integers(1000, 6000, (20, 20)).astype(np.uint16)
    b8a = rng.integers(1000, 6000, (20, 20)).astype(np.uint16)
    jp2 = "JP2OpenJPEG"
    write_band(img / "R10m" / f"{SCENE}_B04_10m.jp2", b04, 10.0, driver=jp2)
    write_band(img / "R10m" / f"{SCENE}_B08_10m.jp2", b08, 10.0, driver=jp2)
    write_band(img / "R20m" / f"{SCENE}_B11_20m.jp2", b11, 20.0, driver=jp2)
    write_band(img / "R20m" / f"{SCENE}_B04_20m.jp2", b04[::2, ::2].copy(), 20.0, driver=jp2)
    write_band(img / "R20m" / f"{SCENE}_B8A_20m.tif", b8a, 20.0)
    write_mtd(tmp_path / SAFE / "MTD_MSIL2A.xml", {"B11": -1100})
    boxes = [("ship", [4.0, 6.0, 14.0, 12.5]), ("plane", [22.0, 20.0, 35.0, 31.0])]
    utm_box_geojson(tmp_path / GRANULE / f"{SCENE}.geojson", boxes, 10.0)
    return tmp_path, {"B04": b04, "B08": b08, "B11": b11, "B8A": b8a}, boxes


def bilinear_truth(src: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Source pixel centres at index i (continuous i + 0.5); a destination pixel centre
    (c + 0.5) / factor in source pixels -> index (c + 0.5) / factor - 0.5."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    coords = [(rows + 0.5) / factor - 0.5, (cols + 0.5) / factor - 0.5]
    return map_coordinates(src.astype(np.float64), coords, order=1, mode="nearest")


def test_s2_stack_resampled_onto_10m_grid_with_offset_and_boxes(s2):
    root, raw, boxes = s2
    params = {**RAW, "stack": "sentinel2", "bands": ["B04", "B08", "B11"], "chip_size": 40}
    ad = MultispectralAdapter(root, params)
    (sample,) = read_all(ad)
    assert ad.channel_names == ["B04", "B08", "B11"]
    assert sample.image.shape == (3, 40, 40)
    assert sample.source.endswith(f"R10m/{SCENE}_B04_10m.jp2")  # the 10 m B04, not the 20 m
    valid = raw["B04"] > 0
    np.testing.assert_array_equal(sample.valid, valid)  # DN 0 stays no-data
    # 10 m bands: (DN + BOA_ADD_OFFSET) / BOA_QUANTIFICATION_VALUE, offset -1000.
    np.testing.assert_allclose(
        sample.image[0][valid], (raw["B04"][valid] - 1000.0) / 1e4, atol=1e-6
    )
    np.testing.assert_allclose(
        sample.image[1][valid], (raw["B08"][valid] - 1000.0) / 1e4, atol=1e-6
    )
    # 20 m B11 upsampled bilinearly (uint16 result: within 0.5 DN), offset of band_id 11.
    truth = (bilinear_truth(raw["B11"], 2, (40, 40)) - 1100.0) / 1e4
    np.testing.assert_allclose(sample.image[2][valid], truth[valid], atol=0.51e-4)
    # Boxes on the 10 m grid, in classes sorted by name.
    assert ad.class_names == ["plane", "ship"]
    got = {ad.class_names[lab - 1]: box for box, lab in zip(sample.boxes, sample.labels)}
    for cls, box in boxes:
        np.testing.assert_allclose(got[cls], box, atol=0.5)


def test_s2_reference_20m_averages_10m_bands(s2):
    root, raw, _ = s2
    params = {
        **RAW,
        "stack": "sentinel2",
        "bands": ["B08", "B8A"],
        "stack_reference": "B8A",
        "chip_size": 20,
    }
    ad = MultispectralAdapter(root, params)
    (sample,) = read_all(ad)
    assert sample.image.shape == (2, 20, 20)
    block = raw["B08"].astype(np.float64).reshape(20, 2, 20, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(sample.image[0], (block - 1000.0) / 1e4, atol=0.51e-4)
    np.testing.assert_allclose(sample.image[1], (raw["B8A"] - 1000.0) / 1e4, atol=1e-6)
    # The GTiff 20 m band is the reference: the boxes are on the 20 m grid (half the 10 m px).
    assert sample.source.endswith(f"{SCENE}_B8A_20m.tif")
    np.testing.assert_allclose(
        sorted(sample.boxes.tolist()), [[2, 3, 7, 6.25], [11, 10, 17.5, 15.5]], atol=0.5
    )


def test_bandstack_reads_like_a_dataset(s2):
    root, raw, _ = s2
    img = root / GRANULE / "IMG_DATA"
    files = {
        "B11": img / "R20m" / f"{SCENE}_B11_20m.jp2",
        "B04": img / "R10m" / f"{SCENE}_B04_10m.jp2",
    }
    with BandStack(files) as ds:
        assert (ds.count, ds.width, ds.height, ds.reference) == (2, 40, 40, "B04")
        win = rasterio.windows.Window(10, 8, 12, 6)
        got = ds.read([1, 2], window=win)
        truth = bilinear_truth(raw["B11"], 2, (40, 40))[8:14, 10:22]
        np.testing.assert_allclose(got[0], truth, atol=0.51)
        np.testing.assert_array_equal(got[1], raw["B04"][8:14, 10:22])
        masks = ds.read_masks([2])
        np.testing.assert_array_equal(masks[0] > 0, raw["B04"] > 0)


def test_s2_without_metadata_needs_params(s2):
    root, raw, _ = s2
    (root / SAFE / "MTD_MSIL2A.xml").unlink()
    params = {**RAW, "stack": "sentinel2", "bands": ["B08"], "chip_size": 40}
    with pytest.raises(DataError, match=r"no MTD_MSIL2A\.xml.*boa_add_offset"):
        read_all(MultispectralAdapter(root, params))
    extra = {"boa_add_offset": -1000, "boa_quantification": 10000}
    (sample,) = read_all(MultispectralAdapter(root, {**params, **extra}))
    np.testing.assert_allclose(sample.image[0], (raw["B08"] - 1000.0) / 1e4, atol=1e-6)
    with pytest.raises(ConfigError, match="boa_add_offset"):
        MultispectralAdapter(root, {**params, "boa_add_offset": -1000})


def test_s2_pre_baseline_04_has_no_offset(s2):
    root, raw, _ = s2
    write_mtd(root / SAFE / "MTD_MSIL2A.xml", None)
    params = {**RAW, "stack": "sentinel2", "bands": ["B08"], "chip_size": 40}
    (sample,) = read_all(MultispectralAdapter(root, params))
    np.testing.assert_allclose(sample.image[0], raw["B08"] / 1e4, atol=1e-6)


def test_s2_missing_band_names_the_scene(s2):
    root, _, _ = s2
    params = {**RAW, "stack": "sentinel2", "bands": ["B04", "B12"], "chip_size": 40}
    with pytest.raises(DataError, match=r"L2A_T33TWM.*no band file for \['B12'\]"):
        MultispectralAdapter(root, params).discover()


def test_landsat_stack_two_scenes_with_ndvi(tmp_path):
    rng = np.random.default_rng(3)
    truth = {}
    for k, ids in enumerate(["190029_20230601_20230610", "190029_20230617_20230625"]):
        sid = f"LC08_L2SP_{ids}_02_T1"
        red = rng.integers(7000, 12000, (24, 32)).astype(np.uint16)
        nir = rng.integers(12000, 30000, (24, 32)).astype(np.uint16)
        write_band(tmp_path / f"scene{k}" / f"{sid}_SR_B4.TIF", red, 30.0)
        write_band(tmp_path / f"scene{k}" / f"{sid}_SR_B5.TIF", nir, 30.0)
        write_band(tmp_path / f"scene{k}" / f"{sid}_QA_PIXEL.TIF", red, 30.0)  # not asked for
        box = [3.0 + k, 2.0, 11.5 + k, 9.0]
        utm_box_geojson(tmp_path / f"scene{k}" / f"{sid}.geojson", [("field", box)], 30.0)
        truth[f"scene{k}/{sid}"] = (red, nir, box)
    params = {
        **RAW,
        "stack": "landsat",
        "bands": ["SR_B4", "SR_B5"],
        "derived": ["ndvi"],
        "band_roles": {"red": "SR_B4", "nir": "SR_B5"},
        "chip_size": 32,
    }
    ad = MultispectralAdapter(tmp_path, params)
    samples = read_all(ad)
    assert ad.channel_names == ["SR_B4", "SR_B5", "ndvi"]
    assert sorted(s.meta["raster"] for s in samples) == sorted(truth)
    for s in samples:
        red, nir, box = truth[s.meta["raster"]]
        np.testing.assert_allclose(s.image[0, :24], red, atol=1e-3)  # no scale tags: DN
        ndvi = (nir - red.astype(np.float64)) / (nir + red.astype(np.float64) + 1e-6)
        np.testing.assert_allclose(s.image[2, :24], ndvi, atol=1e-5)
        np.testing.assert_allclose(s.boxes[0], box, atol=0.5)


def write_rgb(path: Path, h=48, w=64) -> Path:
    data = np.random.default_rng(5).integers(1, 255, (3, h, w)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8",
        crs=UTM, transform=from_origin(X0, Y0, 0.3, 0.3),
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def test_xview_one_file_two_images(tmp_path):
    write_rgb(tmp_path / "train_images" / "1036.tif")
    write_rgb(tmp_path / "train_images" / "1040.tif")
    rows = [
        ("1036.tif", 73, "10,12,30,25"),
        ("1036.tif", 18, "40,5,52,20"),
        ("1040.tif", 73, "2,30,20,44"),
        ("2000.tif", 18, "1,1,5,5"),  # an image not in this dataset
    ]
    feats = [
        {
            "type": "Feature",
            # A lon/lat polygon far from the raster: the pixel boxes are the truth.
            "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [1, 2], [2, 2], [1, 1]]]},
            "properties": {"bounds_imcoords": b, "type_id": t, "image_id": i, "cat_id": n},
        }
        for n, (i, t, b) in enumerate(rows)
    ]
    (tmp_path / "xView_train.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": feats})
    )
    params = {**RAW, "label_format": "xview", "chip_size": 64, "raster_glob": "train_images/*.tif"}
    ad = MultispectralAdapter(tmp_path, params)
    samples = {s.meta["raster"]: s for s in read_all(ad)}
    assert ad.class_names == ["18", "73"]
    a, b = samples["train_images/1036.tif"], samples["train_images/1040.tif"]
    order = np.argsort(a.boxes[:, 0])
    np.testing.assert_allclose(a.boxes[order], [[10, 12, 30, 25], [40, 5, 52, 20]], atol=0.5)
    assert [ad.class_names[i - 1] for i in a.labels[order]] == ["73", "18"]
    np.testing.assert_allclose(b.boxes, [[2, 30, 20, 44]], atol=0.5)
    bad = dict(feats[0], properties={**feats[0]["properties"], "bounds_imcoords": "1,2,3"})
    (tmp_path / "xView_train.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [bad]})
    )
    with pytest.raises(DataError, match=r"xView_train\.geojson.*feature 0.*bounds_imcoords"):
        MultispectralAdapter(tmp_path, params).discover()


DOTA_TXT = """imagesource:GoogleEarth
gsd:0.146343590398
{rot} plane 0
50 4 60 4 60 14 50 14 small-vehicle 1
"""


def rotated_quad(cx, cy, w, h, deg):
    t = np.deg2rad(deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2.0
    return corners @ rot.T + [cx, cy]


def test_dota_oriented_boxes_and_difficult(tmp_path):
    write_rgb(tmp_path / "images" / "P0001.tif")
    quad = rotated_quad(22.0, 20.0, 20.0, 8.0, 30.0)
    rot = " ".join(f"{v:.3f}" for v in quad.reshape(-1))
    (tmp_path / "labelTxt").mkdir()
    (tmp_path / "labelTxt" / "P0001.txt").write_text(DOTA_TXT.format(rot=rot))
    params = {
        **RAW,
        "label_format": "dota",
        "label_pattern": "../labelTxt/{stem}.txt",
        "raster_glob": "images/*.tif",
        "chip_size": 64,
    }
    ad = MultispectralAdapter(tmp_path, params)
    (s,) = read_all(ad)
    assert ad.class_names == ["plane", "small-vehicle"]
    by_cls = {
        ad.class_names[lab - 1]: (box, d) for box, lab, d in zip(s.boxes, s.labels, s.difficult)
    }
    enclosing = [*quad.min(axis=0), *quad.max(axis=0)]
    np.testing.assert_allclose(by_cls["plane"][0], enclosing, atol=0.5)
    assert not by_cls["plane"][1]
    np.testing.assert_allclose(by_cls["small-vehicle"][0], [50, 4, 60, 14], atol=0.5)
    assert by_cls["small-vehicle"][1]
    # keep_difficult: false drops the difficult object.
    names = {"class_names": ["plane", "small-vehicle"]}
    (s2,) = read_all(MultispectralAdapter(tmp_path, {**params, **names, "keep_difficult": False}))
    assert s2.labels.tolist() == [1] and not s2.difficult.any()


def test_dota_malformed_line_is_one_line_error(tmp_path):
    write_rgb(tmp_path / "P0002.tif")
    (tmp_path / "P0002.txt").write_text(
        "imagesource:GoogleEarth\ngsd:None\n1 1 9 1 9 9 1 9 ship 0\n1 1 9 1 9 plane 0\n"
    )
    params = {**RAW, "label_format": "dota", "chip_size": 64}
    with pytest.raises(DataError) as exc:
        MultispectralAdapter(tmp_path, params).discover()
    msg = str(exc.value)
    assert "\n" not in msg and "P0002.txt" in msg and "line 4" in msg
    with pytest.raises(ConfigError, match="DOTA"):
        MultispectralAdapter(tmp_path, {"label_format": "dota", "label_pattern": "all.txt"})


def test_one_geojson_for_two_rasters(tmp_path):
    write_rgb(tmp_path / "a.tif")
    write_rgb(tmp_path / "sub" / "b.tif")
    px = {"a.tif": [5.0, 6.0, 20.0, 18.0], "sub/b.tif": [30.0, 10.0, 44.0, 30.0]}
    feats = []
    for image, (c1, r1, c2, r2) in px.items():
        xs = [X0 + c * 0.3 for c in (c1, c2, c2, c1, c1)]
        ys = [Y0 - r * 0.3 for r in (r2, r2, r1, r1, r2)]
        feats.append(
            {
                "type": "Feature",
                "properties": {"class": "car", "image": image},
                "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in zip(xs, ys)]]},
            }
        )
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": feats,
    }
    (tmp_path / "labels.geojson").write_text(json.dumps(doc))
    base = {**RAW, "label_pattern": "labels.geojson", "chip_size": 64}
    with pytest.raises(ConfigError, match="image_property"):
        MultispectralAdapter(tmp_path, base)
    ad = MultispectralAdapter(tmp_path, {**base, "image_property": "image"})
    samples = {s.meta["raster"]: s for s in read_all(ad)}
    assert set(samples) == set(px)
    for rel, box in px.items():
        np.testing.assert_allclose(samples[rel].boxes, [box], atol=0.5)
