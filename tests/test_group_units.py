"""Independence units (``group_by``) of the labelled-image collection (rgb, thermal), the rgb
VOC devkit and COCO layouts, and multispectral rasters: every image or raster of a group gets
the group (``Sample.group``), the split hash is drawn on the group so a group never straddles
train/val/test, split lists stay authoritative (the prepare stage refuses a group they put in
two splits), and a path ``group_by`` does not match is refused naming the file.

Images are written with Pillow, YOLO txt and VOC XML as the tools write them, COCO with
json.dump, rasters with rasterio (GeoTIFF) and Pillow (PNG)."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.multispectral import MultispectralAdapter
from modalities.rgb.adapter import RGBAdapter
from modalities.thermal.adapter import ThermalAdapter
from pipelines.prepare import prepare

SEQS, FRAMES = 16, 4  # 16 sequences of 4 frames: a per-frame hash splits some with certainty
HASH = {"val_fraction": 0.3, "test_fraction": 0.3}


def _png(path: Path, mode: str = "RGB", size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _frames(seqs: int = SEQS, frames: int = FRAMES) -> list[str]:
    return [f"seq{s:02d}/frame_{f:04d}" for s in range(seqs) for f in range(frames)]


@pytest.fixture
def yolo_sequences(tmp_path):
    """An Ultralytics-style collection: images/<seq>/<frame>.png, labels/<seq>/<frame>.txt."""
    for name in _frames():
        _png(tmp_path / "images" / f"{name}.png")
        txt = tmp_path / "labels" / f"{name}.txt"
        txt.parent.mkdir(parents=True, exist_ok=True)
        txt.write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_text("car\n")
    return tmp_path


def _collection(root: Path, **params) -> dict[str, tuple[str, str | None]]:
    """sample id -> (split, group) of an rgb collection, read to samples."""
    adapter = RGBAdapter(root, {"format": "collection", "labels": "yolo", **HASH, **params})
    return {s.sample_id: (s.split, s.group) for r in adapter.discover() for s in adapter.read(r)}


def _splits_of(rows) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for split, group in rows:
        out[group].add(split)
    return out


def test_collection_sequences_stay_whole_where_a_per_image_hash_splits_them(yolo_sequences):
    per_image = _collection(yolo_sequences)
    assert all(group is None for _, group in per_image.values())  # the image is the unit
    by_seq = _splits_of((split, sid.split("/")[0]) for sid, (split, _) in per_image.items())
    assert any(len(v) > 1 for v in by_seq.values())  # without group_by sequences straddle

    grouped = _collection(yolo_sequences, group_by="folder")
    groups = _splits_of(grouped.values())
    assert set(groups) == {f"images/seq{s:02d}" for s in range(SEQS)}  # the folders
    assert all(len(v) == 1 for v in groups.values())  # no sequence in two splits
    assert {s for v in groups.values() for s in v} == {"train", "val", "test"}
    assert grouped["seq03/frame_0002"][1] == "images/seq03"

    by_regex = _collection(yolo_sequences, group_by=r"seq(\d+)/")
    assert {g for _, g in by_regex.values()} == {f"{s:02d}" for s in range(SEQS)}
    assert all(len(v) == 1 for v in _splits_of(by_regex.values()).values())


def test_path_without_the_group_is_refused_naming_the_file(yolo_sequences):
    _png(yolo_sequences / "images" / "extra" / "loose.png")
    params = {"format": "collection", "labels": "yolo", "group_by": r"seq(\d+)/"}
    with pytest.raises(DataError, match=r"images/extra/loose\.png.*does not match"):
        RGBAdapter(yolo_sequences, params).discover()
    log = PrepareLog(on_error="skip")
    refs = RGBAdapter(yolo_sequences, params, log=log).discover()
    assert len(refs) == SEQS * FRAMES
    assert [s["file"].endswith("loose.png") for s in log.skipped] == [True]
    with pytest.raises(DataError, match="only 2 folder level"):  # images/<seq>/<frame>
        RGBAdapter(yolo_sequences, {**params, "group_by": "folder:3"}).discover()
    for bad in ("(unclosed", "folder:0", ""):
        with pytest.raises(ConfigError, match="group_by"):
            RGBAdapter(yolo_sequences, {**params, "group_by": bad})


def test_unlisted_images_of_a_group_share_the_hash_split(yolo_sequences):
    (yolo_sequences / "train.txt").write_text("seq00/frame_0000\nseq01/frame_0000\n")
    rows = _collection(
        yolo_sequences,
        group_by="folder",
        split_files={"train": "train.txt"},
        unlisted="hash",
    )
    groups = _splits_of(rows.values())
    unlisted = {g: v for g, v in groups.items() if g not in ("images/seq00", "images/seq01")}
    assert len(unlisted) == SEQS - 2 and all(len(v) == 1 for v in unlisted.values())
    assert {s for v in unlisted.values() for s in v} == {"train", "val", "test"}


def test_split_lists_putting_one_sequence_in_two_splits_are_refused_by_prepare(yolo_sequences):
    names = _frames()
    (yolo_sequences / "train.txt").write_text("\n".join(names[: 2 * FRAMES - 1]) + "\n")
    (yolo_sequences / "test.txt").write_text("\n".join(names[2 * FRAMES - 1 :]) + "\n")
    adapter = {
        "format": "collection",
        "labels": "yolo",
        "split_files": {"train": "train.txt", "test": "test.txt"},
    }
    entry = {"modality": "rgb", "root": str(yolo_sequences), "adapter": adapter}
    out = yolo_sequences / "out"
    # Without group_by every image is its own unit: the lists are kept as they are.
    report = prepare("seqs", entry, out / "a.h5", out / "a.report.json")
    assert report["units"]["straddling"] == 0 and report["units"]["total"] == SEQS * FRAMES
    entry["adapter"] = {**adapter, "group_by": "folder"}
    with pytest.raises(DataError, match=r"images/seq01'? in train and test"):
        prepare("seqs", entry, out / "b.h5", out / "b.report.json")
    report = prepare("seqs", entry, out / "c.h5", out / "c.report.json", straddle="warn")
    assert report["units"]["straddling_units"] == ["images/seq01"]
    assert report["units"]["total"] == SEQS


def _voc_xml(path: Path, filename: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation>\n\t<folder>JPEGImages</folder>\n\t<filename>{filename}</filename>\n"
        "\t<size>\n\t\t<width>8</width>\n\t\t<height>8</height>\n\t\t<depth>3</depth>\n"
        "\t</size>\n\t<object>\n\t\t<name>car</name>\n\t\t<difficult>0</difficult>\n"
        "\t\t<bndbox>\n\t\t\t<xmin>2</xmin>\n\t\t\t<ymin>2</ymin>\n\t\t\t<xmax>6</xmax>\n"
        "\t\t\t<ymax>6</ymax>\n\t\t</bndbox>\n\t</object>\n</annotation>\n"
    )


def test_voc_devkit_val_fraction_draws_whole_groups(tmp_path):
    year = tmp_path / "VOC2007"
    ids = [f"clip{s:02d}_{f:04d}" for s in range(SEQS) for f in range(FRAMES)]
    for image_id in ids:
        _png(year / "JPEGImages" / f"{image_id}.png")
        _voc_xml(year / "Annotations" / f"{image_id}.xml", f"{image_id}.png")
    (year / "ImageSets" / "Main").mkdir(parents=True)
    (year / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    params = {
        "years": ["VOC2007"],
        "test_sets": [],
        "class_names": ["car"],
        "val_fraction": 0.4,
        "group_by": r"JPEGImages/(clip\d+)_\d+\.",
    }
    adapter = RGBAdapter(tmp_path, params)
    samples = [s for r in adapter.discover() for s in adapter.read(r)]
    groups = _splits_of((s.split, s.group) for s in samples)
    assert set(groups) == {f"clip{s:02d}" for s in range(SEQS)}
    assert all(len(v) == 1 for v in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val"}
    assert samples[0].unit == samples[0].group


def test_coco_file_name_folders_are_groups(tmp_path):
    names = [f"{n}.png" for n in _frames()]
    for name in names:
        _png(tmp_path / "train2017" / name)
    images = [{"id": i + 1, "file_name": n, "width": 8, "height": 8} for i, n in enumerate(names)]
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16,
         "iscrowd": 0}
        for i in range(len(names))
    ]  # fmt: skip
    doc = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "car"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(doc))
    params = {"format": "coco", "test_json": None, "val_fraction": 0.4, "group_by": "folder"}
    adapter = RGBAdapter(tmp_path, params)
    refs = adapter.discover()
    groups = _splits_of((r.split, r.meta["group"]) for r in refs)
    assert set(groups) == {f"train2017/seq{s:02d}" for s in range(SEQS)}
    assert all(len(v) == 1 for v in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val"}
    (sample,) = adapter.read(refs[0])
    assert sample.group == refs[0].meta["group"]


def test_thermal_frames_carry_their_sequence(tmp_path):
    for name in _frames():
        _png(tmp_path / "frames" / f"{name}.png", mode="L")
    params = {"labels": "none", "image_dir": "frames", "class_names": ["person"], **HASH}
    adapter = ThermalAdapter(tmp_path, {**params, "group_by": r"frames/(seq\d+)/"})
    samples = [s for r in adapter.discover() for s in adapter.read(r)]
    groups = _splits_of((s.split, s.group) for s in samples)
    assert set(groups) == {f"seq{s:02d}" for s in range(SEQS)}
    assert all(len(v) == 1 for v in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val", "test"}


# --- multispectral ---------------------------------------------------------------------------
TILES = [f"T{30 + k}T{'ABCDEFGHJKLM'[k]}M" for k in range(12)]
DATES = ["20230101T100021", "20230411T100031", "20230720T100031"]
MS = {
    "label_format": "yolo",
    "class_names": ["ship"],
    "raster_glob": "**/*.tif",
    "chip_size": 8,
    "overlap": 0,
    "empty_chip_rate": 1.0,
    "clip_percentiles": None,
    **HASH,
}


def _product(tile: str, date: str) -> str:
    return f"S2B_MSIL2A_{date}_N0509_R122_{tile}_{date[:8]}T120000"


def _geotiff(path: Path, size: int = 16, bands: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(path.name)).integers(1, 4000, (bands, size, size))
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(500000.0, 5000000.0, 10.0, 10.0),
    ) as dst:  # fmt: skip
        dst.write(data.astype(np.uint16))


@pytest.fixture
def s2_dates(tmp_path):
    """Sentinel-2 products of 12 tiles on 3 dates, one GeoTIFF each, in a folder per date."""
    for date in DATES:
        for tile in TILES:
            _geotiff(tmp_path / date[:8] / f"{_product(tile, date)}.tif")
    return tmp_path


def test_sentinel2_tile_on_every_date_is_one_unit(s2_dates):
    per_raster = MultispectralAdapter(s2_dates, MS).discover()
    by_tile = _splits_of((r.split, r.ref_id.split("_")[5]) for r in per_raster)
    assert any(len(v) > 1 for v in by_tile.values())  # one place in train and test

    adapter = MultispectralAdapter(s2_dates, {**MS, "group_by": r"_(T\d{2}[A-Z]{3})_"})
    refs = adapter.discover()
    groups = _splits_of((r.split, r.meta["group"]) for r in refs)
    assert set(groups) == set(TILES) and all(len(v) == 1 for v in groups.values())
    assert {s for v in groups.values() for s in v} == {"train", "val", "test"}
    for ref in refs:
        assert {c["split"] for c in ref.meta["chips"]} == {ref.split}
    chips = list(adapter.read(refs[0]))
    assert len(chips) == 4 and {c.group for c in chips} == {refs[0].meta["group"]}
    assert chips[0].unit == refs[0].meta["group"]


def test_multispectral_group_by_is_checked_and_refuses_an_unmatched_raster(s2_dates):
    with pytest.raises(ConfigError, match="group_by.*split_by: raster"):
        MultispectralAdapter(s2_dates, {**MS, "group_by": "folder", "split_by": "chip"})
    with pytest.raises(ConfigError, match="group_by"):
        MultispectralAdapter(s2_dates, {**MS, "group_by": "[T"})
    _geotiff(s2_dates / "20230101" / "mosaic.tif")
    params = {**MS, "group_by": r"_(T\d{2}[A-Z]{3})_"}
    with pytest.raises(DataError, match=r"mosaic\.tif.*does not match"):
        MultispectralAdapter(s2_dates, params).discover()
    log = PrepareLog(on_error="skip")
    refs = MultispectralAdapter(s2_dates, params, log=log).discover()
    assert len(refs) == len(TILES) * len(DATES)
    assert [Path(s["file"]).name for s in log.skipped] == ["mosaic.tif"]


def test_dota_images_grouped_by_folder(tmp_path):
    for a in range(10):
        for i in range(3):
            _png(tmp_path / f"area{a}" / f"P{a:02d}{i:02d}.png", size=16)
            (tmp_path / f"area{a}" / f"P{a:02d}{i:02d}.txt").write_text(
                "imagesource:GoogleEarth\ngsd:0.15\n2 2 9 2 9 9 2 9 plane 0\n"
            )
    params = {**MS, "label_format": "dota", "raster_glob": "**/*.png", "group_by": "folder"}
    params.pop("class_names")
    adapter = MultispectralAdapter(tmp_path, params)
    refs = adapter.discover()
    groups = _splits_of((r.split, r.meta["group"]) for r in refs)
    assert set(groups) == {f"area{a}" for a in range(10)}
    assert all(len(v) == 1 for v in groups.values())
    assert len({s for v in groups.values() for s in v}) >= 2


def test_sentinel2_band_stacks_of_one_tile_share_their_group(tmp_path):
    """SAFE products (one band file per band, in GRANULE/<granule>/IMG_DATA/R10m) of 4 tiles on
    2 dates: the scene's path under root holds the product name, hence the tile."""
    for tile in TILES[:4]:
        for date in DATES[:2]:
            granule = f"{_product(tile, date)}.SAFE/GRANULE/L2A_{tile}_A030000_{date}"
            for band in ("B04", "B08"):
                name = f"{tile}_{date}_{band}_10m.tif"
                _geotiff(tmp_path / granule / "IMG_DATA" / "R10m" / name, bands=1)
    params = {
        **MS,
        "raster_glob": "**/*.tif",
        "stack": "sentinel2",
        "bands": ["B04", "B08"],
        "boa_add_offset": -1000.0,
        "boa_quantification": 10000.0,
        "group_by": r"_(T\d{2}[A-Z]{3})_",
    }
    adapter = MultispectralAdapter(tmp_path, params)
    refs = adapter.discover()
    assert len(refs) == 8
    groups = _splits_of((r.split, r.meta["group"]) for r in refs)
    assert set(groups) == set(TILES[:4]) and all(len(v) == 1 for v in groups.values())
    assert {c.group for c in adapter.read(refs[-1])} == {refs[-1].meta["group"]}
