"""Multispectral data as datasets ship it: DOTA PNGs without a CRS (a real excerpt of the DOTA
devkit's example), Sentinel-2 band files whose NODATA is only in MTD_MSIL2A.xml, a band stack
whose bands disagree in CRS, COCO (one file, every box iscrowd, dangling image ids, a category
named otherwise) and YOLO labels, explicit split files, background counts, and GDAL's warnings
kept off stderr.

Rasters are written with rasterio/Pillow, label and metadata files with json and the standard
library in their published layouts; expectations are computed here independently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from dsod_core.errors import DataError
from modalities.base import PrepareLog
from modalities.multispectral import MultispectralAdapter, scene

DOTA = Path(__file__).parent / "data" / "dota"
UTM = "EPSG:32633"
X0, Y0 = 500000.0, 5000000.0
S2_IDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
FAST = {"stats_size": 64, "overlap": 0, "val_fraction": 0.0, "test_fraction": 0.0}


def dota_corners():
    """The enclosing pixel box of every object of the excerpt, read here with numpy."""
    rows = [line.split() for line in (DOTA / "labelTxt/P1888.txt").read_text().splitlines()[2:]]
    pts = np.array([[float(v) for v in r[:8]] for r in rows]).reshape(-1, 4, 2)
    return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1), [r[8] for r in rows]


def test_dota_as_released_png_without_crs(tmp_path, capfd):
    shutil.copytree(DOTA, tmp_path / "dota")
    params = {
        **FAST,
        "raster_glob": "images/*.png",
        "label_format": "dota",
        "label_pattern": "../labelTxt/{stem}.txt",
        "chip_size": 128,
        "empty_chip_rate": 1.0,
    }
    ad = MultispectralAdapter(tmp_path / "dota", params, log=PrepareLog("error"))
    refs = ad.discover()
    samples = [s for r in refs for s in ad.read(r)]
    boxes, names = dota_corners()
    assert ad.class_names == sorted(set(names)) == ["large-vehicle"]
    assert ad.channel_names == ["band_1", "band_2", "band_3"]
    # 256 x 128 px in 128-px chips: two chips; every object whole in one of them or cut by
    # the chip edge and kept by min_visible; the boxes are the quadrilaterals' bounds.
    assert [s.meta["window"] for s in samples] == [[0, 0, 128, 128], [128, 0, 128, 128]]
    got = np.concatenate([s.boxes + [s.meta["window"][0], 0] * 2 for s in samples])
    for b in boxes:
        assert np.isclose(got, b, atol=1e-4).all(axis=1).any() or b[0] < 128 < b[2]
    assert all(s.meta["crs"] is None for s in samples)
    assert np.allclose(samples[1].affine[:2, 3], [128, 0])  # pixel affine: a shift only
    out = capfd.readouterr()
    assert "Warning" not in out.err and "CPLE" not in out.err, out.err
    assert not [w for w in ad.warnings if "GDAL" in w["reason"]]
    # Outputs of a pixel-only raster are in pixels and say so.
    unit = {
        "unit": "images/P1888.png",
        "source": "P1888.png",
        "crs": None,
        "transform": [1, 0, 0, 0, 1, 0],
        "detections": {"boxes": boxes[:1], "scores": np.array([0.9]), "labels": np.array([1])},
    }
    (path,) = scene.write_scene(unit, ad.class_names, tmp_path / "out", "P1888", wgs84=True)
    doc = json.loads(path.read_text())
    assert "crs" not in doc and doc["units"] == "pixel"
    ring = np.array(doc["features"][0]["geometry"]["coordinates"][0])
    assert np.allclose(ring.min(0), boxes[0][:2]) and np.allclose(ring.max(0), boxes[0][2:])
    assert doc["features"][0]["properties"]["units"] == "pixel"


def test_png_without_crs_and_geojson_labels_is_refused_naming_the_file(tmp_path, capfd):
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    ad = MultispectralAdapter(tmp_path, {"raster_glob": "*.png"})
    with pytest.raises(DataError, match=r"a\.png: raster has no CRS.*pixels"):
        ad.discover()
    assert "NotGeoreferenced" not in capfd.readouterr().err


# --- Sentinel-2 L2A as ESA ships it --------------------------------------------------------------
def write_band(path: Path, data: np.ndarray, *, crs=UTM, driver="GTiff") -> Path:
    """A single-band file with NO nodata tag (as ESA's JPEG 2000 bands are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(
        path, "w", driver=driver, width=data.shape[1], height=data.shape[0], count=1,
        dtype=data.dtype, crs=crs, transform=from_origin(X0, Y0, 10.0, 10.0), **opts,
    ) as dst:  # fmt: skip
        dst.write(data, 1)
    return path


def write_mtd(path: Path) -> Path:
    """MTD_MSIL2A.xml in ESA's element layout (processing baseline 04.00 and later):
    General_Info/Product_Image_Characteristics with Special_Values (NODATA 0, SATURATED
    65535), QUANTIFICATION_VALUES_LIST and BOA_ADD_OFFSET_VALUES_LIST (-1000 each band)."""
    spectral = "".join(
        f'<Spectral_Information bandId="{i}" physicalBand="{b}"><RESOLUTION>10</RESOLUTION>'
        "</Spectral_Information>"
        for i, b in enumerate(S2_IDS)
    )
    offsets = "".join(
        f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(len(S2_IDS))
    )
    path.write_text(
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-2A.xsd"><n1:General_Info><Product_Info>'
        "<PROCESSING_BASELINE>05.09</PROCESSING_BASELINE></Product_Info>"
        "<Product_Image_Characteristics>"
        "<Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>"
        "<SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>"
        "<Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>"
        "<SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>"
        "<QUANTIFICATION_VALUES_LIST>"
        '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
        "</QUANTIFICATION_VALUES_LIST>"
        f"<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>"
        f"<Spectral_Information_List>{spectral}</Spectral_Information_List>"
        "</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>"
    )
    return path


SAFE = "S2A_MSIL2A_20240101T100021_N0510_R122_T33TWM_20240101T120000.SAFE"
SCENE = "T33TWM_20240101T100021"


def s2_product(root: Path, driver: str, mtd: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    img = root / SAFE / "GRANULE" / "L2A_T33TWM_A1_20240101T100021" / "IMG_DATA" / "R10m"
    bands = {}
    suffix = "jp2" if driver == "JP2OpenJPEG" else "tif"
    for b in ("B04", "B08"):
        data = rng.integers(1500, 6000, (32, 32)).astype(np.uint16)
        data[:, :8] = 0  # the swath edge: no data
        write_band(img / f"{SCENE}_{b}_10m.{suffix}", data, driver=driver)
        bands[b] = data
    if mtd:
        write_mtd(root / SAFE / "MTD_MSIL2A.xml")
    return bands


S2_PARAMS = {
    **FAST, "stack": "sentinel2", "bands": ["B04", "B08"], "label_format": "yolo",
    "class_names": ["ship"], "chip_size": 32, "empty_chip_rate": 1.0,
    "clip_percentiles": None, "rescale": False,
}  # fmt: skip


@pytest.mark.parametrize("driver", ["JP2OpenJPEG", "GTiff"])
def test_s2_nodata_from_mtd_is_invalid_not_minus_point_one(tmp_path, driver):
    bands = s2_product(tmp_path, driver, mtd=True)
    ad = MultispectralAdapter(tmp_path, S2_PARAMS)
    (s,) = [s for r in ad.discover() for s in ad.read(r)]
    assert not s.valid[:, :8].any() and s.valid[:, 8:].all()
    want = (bands["B04"][:, 8:].astype(float) - 1000) / 10000
    assert np.allclose(s.image[0][:, 8:], want, atol=1e-6)
    # the statistics never saw DN 0: the minimum is that of the valid pixels, not -0.1
    assert s.image[0].min() >= want.min() - 1e-6 > -0.1 + 0.05


def test_s2_without_mtd_uses_the_nodata_param(tmp_path):
    s2_product(tmp_path, "GTiff", mtd=False)
    base = {**S2_PARAMS, "boa_add_offset": -1000, "boa_quantification": 10000}
    (s,) = [s for a in [MultispectralAdapter(tmp_path, base)] for r in a.discover()
            for s in a.read(r)]  # fmt: skip
    assert s.valid.all() and np.isclose(s.image[0][0, 0], -0.1)  # DN 0 read as data
    ad = MultispectralAdapter(tmp_path, {**base, "nodata": 0})
    (s,) = [s for r in ad.discover() for s in ad.read(r)]
    assert not s.valid[:, :8].any() and s.valid[:, 8:].all()


def test_band_stack_crs_disagreement_names_the_band_that_differs(tmp_path):
    data = np.full((16, 16), 2000, np.uint16)
    write_band(tmp_path / "sc_red.tif", data)
    write_band(tmp_path / "sc_nir.tif", data, crs="EPSG:32634")
    params = {**FAST, "stack": "pattern", "band_files": "{scene}_{band}.tif",
              "bands": ["red", "nir"], "label_format": "yolo", "class_names": ["ship"]}  # fmt: skip
    with pytest.raises(DataError, match=r"sc_nir\.tif: band nir is in EPSG:32634.*sc_red\.tif"):
        MultispectralAdapter(tmp_path, params).discover()


# --- COCO ship boxes over scenes, YOLO, split files, background counts ---------------------------
def scenes(root: Path, n: int = 3) -> None:
    rng = np.random.default_rng(2)
    for k in range(1, n + 1):
        for band in ("B02", "B03", "B04"):
            data = rng.integers(500, 3000, (48, 48)).astype(np.uint16)
            write_band(root / f"scene_0{k}" / f"scene_0{k}-{band}.tif", data)


def coco_doc() -> dict:
    """A ship-detection COCO file as such sets ship: every box iscrowd 1, an annotation of an
    image id no image has, the category called 'boat' where the docs say 'ship', an image
    naming a TCI export of its scene, and an image of no scene here."""
    images = [
        {"id": 1, "file_name": "scene_01.tif", "width": 48, "height": 48},
        {"id": 2, "file_name": "scene_02_TCI.png", "width": 48, "height": 48},
        {"id": 3, "file_name": "scene_03.tif", "width": 48, "height": 48},
        {"id": 9, "file_name": "scene_99.tif", "width": 48, "height": 48},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [4, 6, 10, 8], "iscrowd": 1},
        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [30, 2, 6, 12], "iscrowd": 1},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [10, 30, 5, 5], "iscrowd": 1},
        {"id": 4, "image_id": 7, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 1},
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "boat"}]}


COCO = {
    **FAST, "stack": "pattern", "band_files": "{scene}-{band}.tif",
    "bands": ["B02", "B03", "B04"], "label_format": "coco", "label_pattern": "ships.json",
    "class_map": {"boat": "ship"}, "chip_size": 48, "empty_chip_rate": 1.0,
}  # fmt: skip


def test_coco_ship_boxes_over_scenes_with_the_quirks_reported(tmp_path):
    scenes(tmp_path)
    (tmp_path / "ships.json").write_text(json.dumps(coco_doc()))
    ad = MultispectralAdapter(tmp_path, COCO, log=PrepareLog("error"))
    by_scene = {r.ref_id: r.meta["chips"][0] for r in ad.discover()}
    assert ad.class_names == ["ship"]
    assert by_scene["scene_01/scene_01"]["boxes"] == [[4.0, 6.0, 14.0, 14.0]]
    assert sorted(by_scene["scene_02/scene_02"]["boxes"]) == [[10, 30, 15, 35], [30, 2, 36, 14]]
    assert by_scene["scene_03/scene_03"]["boxes"] == []  # a background scene
    text = " | ".join(w["reason"] for w in ad.warnings)
    assert "every one of the 3 boxes is iscrowd: read as objects" in text
    assert "1 annotation(s) refer to image ids the file does not list" in text
    assert "1 of 4 COCO image(s) match no raster or scene" in text and "scene_99" in text
    assert ad.log.counts["multispectral_background_units"] == 1
    assert ad.log.counts["multispectral_units"] == 3
    strict = MultispectralAdapter(tmp_path, {**COCO, "unmatched": "error"})
    with pytest.raises(DataError, match=r"ships\.json: annotation 4 refers to image id 7"):
        strict.discover()
    ignore = MultispectralAdapter(tmp_path, {**COCO, "crowd": "ignore"})
    with pytest.raises(DataError, match="no labelled features"):
        ignore.discover()  # COCO's own rule: every box an ignore region, no objects left


def test_yolo_on_png_and_split_files_replace_the_hash(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for k in range(4):
        Image.fromarray(np.full((40, 60, 3), 40 * k, np.uint8)).save(tmp_path / f"images/t{k}.png")
    (tmp_path / "labels/t0.txt").write_text("0 0.5 0.5 0.2 0.5\n")
    (tmp_path / "labels/t1.txt").write_text("1 0.25 0.25 0.1 0.1\n")
    (tmp_path / "data.yaml").write_text("names: [car, ship]\n")
    (tmp_path / "train.txt").write_text("t0.png\n# a comment\nt1\n")
    (tmp_path / "val.txt").write_text("images/t2.png\nmissing.png\n")
    params = {
        **FAST, "raster_glob": "images/*.png", "label_format": "yolo",
        "label_pattern": "../labels/{stem}.txt", "yolo_names": "data.yaml", "chip_size": 64,
        "empty_chip_rate": 1.0, "split_files": {"train": "train.txt", "val": "val.txt"},
    }  # fmt: skip
    ad = MultispectralAdapter(tmp_path, params)
    refs = {r.ref_id: r for r in ad.discover()}
    assert {k: r.split for k, r in refs.items()} == {
        "images/t0": "train", "images/t1": "train", "images/t2": "val"
    }  # fmt: skip
    assert ad.class_names == ["car", "ship"]
    assert refs["images/t0"].meta["chips"][0]["boxes"] == [[24.0, 10.0, 36.0, 30.0]]
    assert refs["images/t1"].meta["chips"][0]["labels"] == [2]
    text = " | ".join(w["reason"] for w in ad.warnings)
    assert "1 of 4 rasters/scenes are in no split list" in text and "t3" in text
    assert "1 listed name(s) match no raster or scene (first: 'missing.png'" in text
    assert ad.log.counts["multispectral_background_units"] == 1


# --- pattern stacks whose scene ids hold the separator (Sentinel-2 style names) -------------------
def test_pattern_stack_scene_ids_may_contain_the_separator(tmp_path):
    from modalities.multispectral import bandstack

    ids = ["T33UUP_20230101T100000", "T33UUP_20230111T100000"]
    for k, sid in enumerate(ids):
        for band in ("B02", "B08", "B8A"):
            write_band(tmp_path / f"{sid}_{band}_10m.tif", np.full((16, 16), 1000 + k, np.uint16))
    (tmp_path / f"{ids[0]}_SCL_10m.tif").write_bytes(b"")  # a band not configured: not read
    params = {**FAST, "stack": "pattern", "band_files": "{scene}_{band}_10m.tif",
              "bands": ["B02", "B08", "B8A"], "label_format": "yolo", "class_names": ["ship"],
              "chip_size": 16, "empty_chip_rate": 1.0}  # fmt: skip
    ad = MultispectralAdapter(tmp_path, params)
    refs = ad.discover()
    assert [r.ref_id for r in refs] == ids  # not "T33UUP" with band "20230101T100000_B02"
    assert refs[1].meta["stack"]["files"] == {
        b: f"{ids[1]}_{b}_10m.tif" for b in ("B02", "B08", "B8A")
    }
    (s,) = ad.read(refs[1])
    assert s.image.shape == (3, 16, 16) and s.valid.all()
    # the regex alone: bands anchored at the end, the scene id non-greedy before them
    m = bandstack.pattern_regex("{scene}_{band}.tif", ["B02", "B8A"]).match("scene_01_B8A.tif")
    assert (m["scene"], m["band"]) == ("scene_01", "B8A")
    assert bandstack.pattern_regex("{scene}_{band}.tif", ["B02"]).match("scene_01_B03.tif") is None
