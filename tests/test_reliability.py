"""Reliability: the bad-input catalogue of ``docs/errors.md``, untrusted files, no partial outputs.

Every catalogue entry runs the REAL stage script (``python -m pipelines.prepare`` / ``evaluate``
/ ``train``) as a subprocess on a small tree written here in the modality's native format, with
``cwd`` a temporary folder holding the params file. Each asserts: exit status 1, stderr exactly
one line naming the file and the problem, no store written, the input tree byte-for-byte
unchanged; and, with ``prepare.on_error: skip``, either the sample listed with its reason in
``<dataset>.report.json`` and the store written without it (per-sample faults), or the same
one-line failure (faults found while listing the dataset, which no sample can be blamed for).
Entry ids (E01...) are those of ``docs/errors.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from rasterio.transform import from_origin

from dsod_core.data.store import StoreReader
from dsod_core.engine.checkpoint import latest_checkpoint, load_checkpoint, save_atomic
from dsod_core.engine.weights import WEIGHTS_FORMAT, load_trained_model
from dsod_core.errors import CheckpointError, ConfigError
from dsod_core.model import build_model
from modalities.registry import available, get_adapter
from tests.synthetic import write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
DATASET = "d"


# --- running the stage scripts ------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    env.pop("COLUMNS", None)
    return env


def start_stage(module: str, *args: str, cwd: Path) -> subprocess.Popen:
    """Start ``python -m <module> args`` in ``cwd`` (stdout/stderr captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_stage(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return finish(start_stage(module, *args, cwd=cwd))


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 1 and stderr exactly ``error: <one line>`` holding every needle."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def tree_digest(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), keyed by path."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    assert out, paths
    return out


def full_params(
    entry: dict[str, Any] | None = None, on_error: str = "error", compression: str | None = None
) -> dict[str, Any]:
    """The project's params.yaml with one dataset ``DATASET`` (every stage validates the whole
    file first)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    entry = dict(entry or {"modality": "rgb", "root": "data", "adapter": {}})
    modality = entry.get("modality")
    if isinstance(modality, str) and (ROOT / "modalities" / modality).is_dir():
        entry.setdefault("code", str(ROOT / "modalities" / modality))
    params["datasets"] = {DATASET: entry}
    params["sources"] = [DATASET]
    params["targets"] = [DATASET]
    params["comparison"]["primary"].update(target=DATASET, source=DATASET)
    params["prepare"] = {"on_error": on_error, "compression": compression}
    return params


def write_params(
    cwd: Path, entry: dict[str, Any], on_error: str = "error", name: str = "params.yaml"
) -> Path:
    path = cwd / name
    path.write_text(yaml.safe_dump(full_params(entry, on_error)))
    return path


def prep_args(out: str | Path) -> list[str]:
    """The prepare stage's path arguments, as dvc.yaml passes them."""
    return ["--out", f"{out}/{DATASET}.h5", "--report", f"{out}/{DATASET}.report.json"]


# --- native trees -------------------------------------------------------------------------------
RGB_CLASSES = ["circle", "square"]


def voc_xml(filename: str, objects: list[tuple[str, list[float]]], size=(32, 24)) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]:g}</xmin>"
        f"<ymin>{b[1]:g}</ymin><xmax>{b[2]:g}</xmax><ymax>{b[3]:g}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>\n"
    )


def rgb_tree(root: Path, n: int = 4, size=(32, 24), seed: int = 0) -> dict[str, Any]:
    """A VOC-layout folder (``years: ["."]``) of ``n`` 8-bit PNGs ``im<i>``, all train."""
    rng = np.random.default_rng(seed)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"im{i}" for i in range(n)]
    for iid in ids:
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{iid}.png")
        (root / "Annotations" / f"{iid}.xml").write_text(
            voc_xml(f"{iid}.png", [("circle", [3, 3, 12, 10])], size)
        )
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    return {
        "modality": "rgb",
        "root": root.name,
        "adapter": {
            "format": "voc",
            "years": ["."],
            "train_sets": ["train"],
            "val_sets": [],
            "test_sets": [],
            "class_names": list(RGB_CLASSES),
        },
    }


def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A tiny PNG whose IHDR declares ``width x height`` (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def depth_tree(root: Path, n: int = 4, size=(32, 24), seed: int = 0) -> dict[str, Any]:
    """VOC-layout depth set: ``depth/d<i>.png`` 16-bit millimetres + ``Annotations/d<i>.xml``."""
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(exist_ok=True)
    for i in range(n):
        mm = rng.integers(800, 4000, (size[1], size[0])).astype(np.uint16)
        Image.fromarray(mm).save(root / "depth" / f"d{i}.png")
        (root / "Annotations" / f"d{i}.xml").write_text(
            voc_xml(f"d{i}.png", [("box", [4, 4, 14, 12])], size)
        )
    return {
        "modality": "depth",
        "root": root.name,
        "adapter": {
            "layout": "voc",
            "class_names": ["box"],
            "val_fraction": 0.0,
            "test_fraction": 0.0,
        },
    }


def write_nifti(path: Path, vol: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))


def medical_tree(root: Path, n: int = 3, seed: int = 0) -> dict[str, Any]:
    """``vol<i>.nii.gz`` (16x16x8 HU, 1 mm, identity affine) + a MONAI datalist, RAS mm boxes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        vol = rng.normal(-700, 50, (16, 16, 8)).astype(np.int16)
        write_nifti(root / f"vol{i}.nii.gz", vol)
        entries.append(
            {"image": f"vol{i}.nii.gz", "box": [[8.0, 8.0, 4.0, 6.0, 6.0, 3.0]], "label": [0]}
        )
    (root / "datalist.json").write_text(json.dumps({"training": entries}))
    return {
        "modality": "medical",
        "root": root.name,
        "adapter": {
            "datalist": "datalist.json",
            "world_frame": "RAS",
            "class_names": ["nodule"],
            "val_fraction": 0.0,
            "test_fraction": 0.0,
            "negative_slice_rate": 0.0,
        },
    }


def multispectral_tree(root: Path, bands: int = 4) -> dict[str, Any]:
    """One 64x64 GeoTIFF (UTM 33N, 10 m) with ``bands`` uint16 bands + a GeoJSON label in UTM."""
    root.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(100, 5000, (bands, 64, 64)).astype(np.uint16)
    x0, y0 = 500000.0, 5000000.0
    with rasterio.open(
        root / "a.tif",
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=bands,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(x0, y0, 10.0, 10.0),
    ) as dst:
        dst.write(data)
    ring = [[x0 + 100, y0 - 300], [x0 + 300, y0 - 300], [x0 + 300, y0 - 100], [x0 + 100, y0 - 100]]
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}},
        "features": [
            {
                "type": "Feature",
                "properties": {"class": "field"},
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            }
        ],
    }
    (root / "a.geojson").write_text(json.dumps(doc))
    return {
        "modality": "multispectral",
        "root": root.name,
        "adapter": {"chip_size": 32, "overlap": 0, "val_fraction": 0.0, "test_fraction": 0.0},
    }


# --- the prepare-stage catalogue ----------------------------------------------------------------
@dataclass
class Case:
    """A dataset with one bad unit. ``build(root)`` writes it and returns the dataset entry;
    ``needles`` must appear in the one-line message; ``bad_ref`` is the unit that skip mode
    lists (``None``: the fault is found while listing the dataset, fatal in both modes); ``units``
    names every unit of the dataset, all of which but ``bad_ref`` skip mode must store."""

    build: Callable[[Path], dict[str, Any]]
    needles: tuple[str, ...]
    bad_ref: str | None
    units: tuple[str, ...] = ()  # every unit of the dataset (skip mode stores all but bad_ref)
    kept: tuple[str, ...] | None = None  # what skip mode stores, when not units - {bad_ref}


def _truncated_rgb(root: Path) -> dict:
    entry = rgb_tree(root)
    f = root / "JPEGImages/im2.png"
    f.write_bytes(f.read_bytes()[:80])
    return entry


def _not_an_image_rgb(root: Path) -> dict:
    entry = rgb_tree(root)
    (root / "JPEGImages/im1.png").write_text("this is a text file, not a picture\n")
    return entry


def _truncated_depth(root: Path) -> dict:
    entry = depth_tree(root)
    f = root / "depth/d1.png"
    f.write_bytes(f.read_bytes()[:100])
    return entry


def _rgb_png_as_depth(root: Path) -> dict:
    entry = depth_tree(root)
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "depth/d2.png")
    return entry


def _multispectral_band_count(root: Path) -> dict:
    entry = multispectral_tree(root, bands=4)
    entry["adapter"]["bands"] = [1, 2, 3, 4, 5]
    return entry


def _depth_all_nan(root: Path) -> dict:
    entry = depth_tree(root)
    (root / "depth/d3.png").unlink()
    arr = np.full((24, 32), np.nan, np.float32)
    arr[0, :4] = np.inf
    np.save(root / "depth/d3.npy", arr)
    return entry


def _medical_nan(root: Path) -> dict:
    entry = medical_tree(root)
    vol = np.full((16, 16, 8), -700.0, np.float32)
    vol[3, 5, :] = np.nan  # one NaN voxel in every slice
    vol[4, 5, :] = np.inf
    write_nifti(root / "vol1.nii.gz", vol)
    return entry


def _medical_truncated(root: Path) -> dict:
    entry = medical_tree(root)
    f = root / "vol2.nii.gz"
    f.write_bytes(f.read_bytes()[:200])
    return entry


def _medical_cut_late(root: Path) -> dict:
    """A volume whose gzip stream ends after its first slices: the slices the adapter keeps
    (around the lesion, early in the file) decode, the rest of the volume does not."""
    entry = medical_tree(root)
    vol = np.random.default_rng(1).normal(-700, 50, (16, 16, 64)).astype(np.int16)
    write_nifti(root / "vol1.nii.gz", vol)
    doc = json.loads((root / "datalist.json").read_text())
    doc["training"][1]["box"] = [[8.0, 8.0, 3.0, 6.0, 6.0, 3.0]]
    (root / "datalist.json").write_text(json.dumps(doc))
    f = root / "vol1.nii.gz"
    f.write_bytes(f.read_bytes()[: int(f.stat().st_size * 0.7)])
    return entry


def _two_rasters(root: Path) -> dict:
    entry = multispectral_tree(root)
    for suffix in ("tif", "geojson"):
        (root / f"b.{suffix}").write_bytes((root / f"a.{suffix}").read_bytes())
    return entry


def _multispectral_huge_header(root: Path) -> dict:
    """A sparse tiled GeoTIFF declaring 200,000 x 200,000 px (a few MB on disk)."""
    entry = _two_rasters(root)
    profile = dict(
        driver="GTiff", width=200_000, height=200_000, count=4, dtype="uint16",
        crs="EPSG:32633", transform=from_origin(500000.0, 5000000.0, 10.0, 10.0),
        tiled=True, blockxsize=512, blockysize=512, compress="deflate", sparse_ok=True,
        BIGTIFF="YES",
    )  # fmt: skip
    with rasterio.open(root / "b.tif", "w", **profile) as dst:
        dst.write(np.ones((4, 16, 16), np.uint16), window=rasterio.windows.Window(0, 0, 16, 16))
    return entry


def _multispectral_corrupt_tile(root: Path) -> dict:
    """A tiled raster one of whose middle tiles holds garbage instead of deflate data."""
    entry = _two_rasters(root)
    data = np.random.default_rng(2).integers(100, 5000, (4, 64, 64)).astype(np.uint16)
    profile = dict(
        driver="GTiff", width=64, height=64, count=4, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000.0, 5000000.0, 10.0, 10.0), tiled=True, blockxsize=16,
        blockysize=16, compress="deflate", interleave="band",
    )  # fmt: skip
    with rasterio.open(root / "b.tif", "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(root / "b.tif") as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=2))
        size = int(src.get_tag_item("BLOCK_SIZE_2_1", "TIFF", bidx=2))
    blob = bytearray((root / "b.tif").read_bytes())
    blob[offset : offset + size] = b"\xff" * size
    (root / "b.tif").write_bytes(bytes(blob))
    return entry


def _rgb_inverted_box(root: Path) -> dict:
    entry = rgb_tree(root)
    (root / "Annotations/im1.xml").write_text(voc_xml("im1.png", [("circle", [20, 3, 10, 10])]))
    return entry


def _depth_empty_box(root: Path) -> dict:
    entry = depth_tree(root)
    # VOC 1-based inclusive: xmax = xmin - 1 covers no pixel column (zero width).
    (root / "Annotations/d2.xml").write_text(voc_xml("d2.png", [("box", [9, 4, 8, 12])]))
    return entry


def _rgb_box_outside(root: Path) -> dict:
    entry = rgb_tree(root)
    (root / "Annotations/im3.xml").write_text(voc_xml("im3.png", [("circle", [20, 5, 45, 12])]))
    return entry


def _rgb_unknown_class(root: Path) -> dict:
    entry = rgb_tree(root)
    (root / "Annotations/im2.xml").write_text(voc_xml("im2.png", [("dragon", [3, 3, 9, 9])]))
    return entry


def _coco_duplicate_ids(root: Path) -> dict:
    (root / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(root / "images" / name)
    doc = {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 32, "height": 24},
            {"id": 7, "file_name": "b.png", "width": 32, "height": 24},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "circle"}],
    }
    (root / "train.json").write_text(json.dumps(doc))
    return {
        "modality": "rgb",
        "root": root.name,
        "adapter": {
            "format": "coco",
            "train_json": "train.json",
            "test_json": None,
            "image_dirs": {"train": "images"},
        },
    }


def _depth_duplicate_sample_ids(root: Path) -> dict:
    """Two COCO images whose file names share a stem name the same depth map and sample id."""
    (root / "depth").mkdir(parents=True)
    Image.fromarray(np.full((24, 32), 1500, np.uint16)).save(root / "depth/x.png")
    Image.fromarray(np.full((24, 32), 2500, np.uint16)).save(root / "depth/y.png")
    doc = {
        "images": [
            {"id": 1, "file_name": "a/x.png"},
            {"id": 2, "file_name": "b/x.png"},
            {"id": 3, "file_name": "y.png"},
        ],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8]} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return {
        "modality": "depth",
        "root": root.name,
        "adapter": {"layout": "coco", "val_fraction": 0.0, "test_fraction": 0.0},
    }


def _rgb_path_escape(root: Path) -> dict:
    entry = rgb_tree(root)
    (root.parent / "secret.png").write_bytes(b"not yours")
    (root / "Annotations/im0.xml").write_text(
        voc_xml("../../secret.png", [("circle", [3, 3, 9, 9])])
    )
    return entry


def _rgb_bomb_header(root: Path) -> dict:
    entry = rgb_tree(root)
    # 9000 x 9000 = 81 Mpx: above the default max_pixels (50e6), below Pillow's own limits.
    (root / "JPEGImages/im1.png").write_bytes(png_header_only(9000, 9000))
    return entry


def _rgb_configured_limit(root: Path) -> dict:
    entry = rgb_tree(root, n=3)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "JPEGImages/im2.png")
    (root / "Annotations/im2.xml").write_text(
        voc_xml("im2.png", [("circle", [3, 3, 9, 9])], (40, 40))
    )
    entry["adapter"]["max_pixels"] = 1000  # 32x24 = 768 passes, 40x40 = 1600 does not
    return entry


RGB4 = ("im0", "im1", "im2", "im3")
RASTERS2 = ("a", "b")
DEPTH4 = ("d0", "d1", "d2", "d3")
MED3 = ("vol0", "vol1", "vol2")

CASES: dict[str, Case] = {
    "E01-rgb-truncated-image": Case(
        _truncated_rgb, ("JPEGImages/im2.png", "cannot decode image", "truncated"), "im2", RGB4
    ),
    "E02-rgb-not-an-image": Case(
        _not_an_image_rgb,
        ("JPEGImages/im1.png", "cannot decode image", "cannot identify"),
        "im1",
        RGB4,
    ),
    "E03-depth-truncated-png": Case(
        _truncated_depth, ("depth/d1.png", "cannot read depth image"), "d1", DEPTH4
    ),
    "E04-depth-wrong-channel-count": Case(
        _rgb_png_as_depth, ("depth/d2.png", "not a depth file", "'RGB'"), "d2", DEPTH4
    ),
    "E05-multispectral-wrong-band-count": Case(
        _multispectral_band_count, ("a.tif", "band 5 requested", "only 4 band(s)"), None
    ),
    "E06-depth-nan-inf-only": Case(
        _depth_all_nan, ("depth/d3.npy", "no valid depth reading"), "d3", DEPTH4
    ),
    "E07-medical-nan-inf-voxels": Case(
        _medical_nan, ("vol1.nii.gz", "NaN or infinite values"), "vol1", MED3
    ),
    "E08-medical-truncated-volume": Case(_medical_truncated, ("vol2.nii.gz",), "vol2", MED3),
    "E08-medical-volume-cut-after-kept-slices": Case(
        _medical_cut_late, ("vol1.nii.gz", "truncated or corrupt gzip stream"), "vol1", MED3
    ),
    "E09-rgb-inverted-box": Case(
        _rgb_inverted_box, ("Annotations/im1.xml", "inverted box"), "im1", RGB4
    ),
    "E10-depth-empty-box": Case(
        _depth_empty_box, ("Annotations/d2.xml", "inverted box of 'box'"), "d2", DEPTH4
    ),
    "E11-rgb-box-outside-image": Case(
        _rgb_box_outside,
        ("Annotations/im3.xml", "sample im3", "outside the 32x24 image"),
        "im3",
        RGB4,
    ),
    "E12-rgb-unknown-class": Case(
        _rgb_unknown_class, ("Annotations/im2.xml", "unknown class 'dragon'"), "im2", RGB4
    ),
    "E13-rgb-coco-duplicate-image-id": Case(
        _coco_duplicate_ids, ("train.json", "duplicate image id 7"), None
    ),
    # The second image naming depth map x is left out; the first keeps the id.
    "E13-depth-duplicate-sample-id": Case(
        _depth_duplicate_sample_ids,
        ("depth/x.png", "duplicate sample id 'x'"),
        "x",
        ("x", "y"),
        kept=("x", "y"),
    ),
    "E14-annotation-path-escapes-root": Case(
        _rgb_path_escape, ("Annotations/im0.xml", "escapes the dataset root"), "im0", RGB4
    ),
    "E15-rgb-decompression-bomb-header": Case(
        _rgb_bomb_header,
        ("JPEGImages/im1.png", "9000 x 9000 px", "max_pixels=50,000,000"),
        "im1",
        RGB4,
    ),
    "E29-multispectral-declared-size-over-limit": Case(
        _multispectral_huge_header,
        ("b.tif", "200000 x 200000", "max_pixels"),
        "b",
        RASTERS2,
    ),
    "E30-multispectral-corrupt-tile": Case(_multispectral_corrupt_tile, ("b.tif",), "b", RASTERS2),
    "E16-rgb-configured-pixel-limit": Case(
        _rgb_configured_limit,
        ("JPEGImages/im2.png", "40 x 40 px = 1,600", "max_pixels=1,000"),
        "im2",
        RGB4[:3],
    ),
}


def _skip_names(record: dict[str, Any]) -> set[str]:
    """What a skip record names: its unit, its sample and its file's stem."""
    names = {record.get("unit"), record.get("sample"), Path(record["file"]).name.split(".")[0]}
    return {n for n in names if n}


def _store_ids(path: Path) -> set[str]:
    reader = StoreReader(path)
    try:
        return {reader.read_targets(i)["sample_id"] for i in range(len(reader))}
    finally:
        reader.close()


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_catalogue(case_id: str, tmp_path: Path) -> None:
    case = CASES[case_id]
    entry = case.build(tmp_path / "data")
    write_params(tmp_path, entry, "error", "params.yaml")
    write_params(tmp_path, entry, "skip", "skip.yaml")
    before = tree_digest(tmp_path / "data", tmp_path / "params.yaml", tmp_path / "skip.yaml")

    # Both modes at once: two processes on a shared machine still finish sooner than in a row.
    err_proc = start_stage("pipelines.prepare", DATASET, *prep_args("out_error"), cwd=tmp_path)
    skip_proc = start_stage(
        "pipelines.prepare", DATASET, "--params", "skip.yaml", *prep_args("out_skip"), cwd=tmp_path
    )
    err, skip = finish(err_proc), finish(skip_proc)

    line = assert_one_line_error(err, *case.needles)
    out_error = tmp_path / "out_error"
    leftovers = sorted(out_error.glob("*")) if out_error.exists() else []
    assert leftovers == [], leftovers  # no store, no .partial, no report

    if case.bad_ref is None:  # found while listing the dataset: no sample to blame, fatal
        assert_one_line_error(skip, *case.needles)
        assert not (tmp_path / "out_skip" / f"{DATASET}.h5").exists()
    else:
        assert skip.returncode == 0, skip.stderr
        assert skip.stderr == "", skip.stderr
        report = json.loads((tmp_path / "out_skip" / f"{DATASET}.report.json").read_text())
        assert len(report["skipped"]) == 1, report["skipped"]
        assert case.bad_ref in _skip_names(report["skipped"][0]), report["skipped"]
        reason = report["skipped"][0]["reason"]
        for needle in case.needles:
            assert needle in reason, (needle, reason)
        assert reason in line  # the same message as the error mode's line
        store = tmp_path / "out_skip" / f"{DATASET}.h5"
        ids = _store_ids(store)
        # Medical samples are slices ``<volume>_k<index>``, multispectral ones chips
        # ``<raster>_c<col>_r<row>``; the others are one per unit.
        units = {re.sub(r"(_k\d{4}|_c\d+_r\d+)$", "", i) for i in ids}
        expected = set(case.kept) if case.kept is not None else set(case.units) - {case.bad_ref}
        assert units == expected, (units, case.units)
        assert sum(report["samples"].values()) == len(ids)
        assert not list((tmp_path / "out_skip").glob("*.partial"))

    assert (
        tree_digest(tmp_path / "data", tmp_path / "params.yaml", tmp_path / "skip.yaml") == before
    )


def test_skip_mode_with_nothing_left_names_the_cause(tmp_path: Path) -> None:
    """The only raster has a corrupt tile: skip mode still fails (no sample at all), but the
    line names the raster and why, and the skips are written beside the (absent) store."""
    entry = _multispectral_corrupt_tile(tmp_path / "data")
    for suffix in ("tif", "geojson"):
        (tmp_path / f"data/a.{suffix}").unlink()
    write_params(tmp_path, entry, "skip")
    before = tree_digest(tmp_path / "data")
    proc = run_stage("pipelines.prepare", DATASET, *prep_args("out"), cwd=tmp_path)
    line = assert_one_line_error(proc, "no samples were written", "b.tif", "1 unit(s)")
    assert "GDAL" in line or "IReadBlock" in line or "decode" in line, line
    failed = json.loads((tmp_path / f"out/{DATASET}.failed.json").read_text())
    assert failed["status"] == "failed" and failed["skipped"][0]["file"].endswith("b.tif")
    assert not (tmp_path / f"out/{DATASET}.h5").exists()
    assert not (tmp_path / f"out/{DATASET}.report.json").exists()
    assert tree_digest(tmp_path / "data") == before


def test_depth_decompression_bomb_is_a_one_line_error(tmp_path: Path) -> None:
    entry = depth_tree(tmp_path / "data")
    # 20000 x 20000 16-bit grey: above Pillow's hard limit (2 x MAX_IMAGE_PIXELS).
    (tmp_path / "data/depth/d1.png").write_bytes(png_header_only(20000, 20000, 16, 0))
    write_params(tmp_path, entry)
    before = tree_digest(tmp_path / "data")
    proc = run_stage("pipelines.prepare", DATASET, *prep_args("out"), cwd=tmp_path)
    assert tree_digest(tmp_path / "data") == before
    assert_one_line_error(proc, "depth/d1.png", "pixels")


# --- params files -------------------------------------------------------------------------------
PARAM_CASES = {
    # E18: unknown key in a section
    "E18-unknown-key": (
        {"prepare": {"on_eror": "skip"}},
        ("params.yaml", "unknown key prepare.'on_eror'", "did you mean 'on_error'?"),
    ),
    "E18-unknown-adapter-param": (
        {"datasets": {DATASET: {"modality": "rgb", "root": "data", "adapter": {"classes": []}}}},
        ("params.yaml", f"datasets.{DATASET}.adapter", "'classes'", "did you mean 'class_names'?"),
    ),
    "E18-unknown-variant": (
        {"model": {"variant": "dsod_tinyy", "input_size": 48, "overrides": {}}},
        ("params.yaml", "model.variant 'dsod_tinyy'", "did you mean 'dsod_tiny'?"),
    ),
    "E18-target-not-a-dataset": (
        {"targets": [DATASET, "nope"]},
        ("params.yaml", "targets: 'nope' is not in datasets"),
    ),
    "E18-wrong-adapter-code": (
        {
            "datasets": {
                DATASET: {
                    "modality": "rgb",
                    "root": "data",
                    "code": "modalities/depth",
                    "adapter": {},
                }
            }
        },
        ("params.yaml", f"datasets.{DATASET}.code", "'rgb' adapter's code is"),
    ),
    # E19: wrong types
    "E19-wrong-type-root": (
        {"datasets": {DATASET: {"modality": "rgb", "root": 5}}},
        ("params.yaml", f"datasets.{DATASET}.root must be a non-empty string"),
    ),
    "E19-wrong-value-on-error": (
        {"prepare": {"on_error": "ignore"}},
        ("params.yaml", "prepare.on_error must be 'error' or 'skip'"),
    ),
    # E20: a YAML tag that would construct a Python object
    "E20-python-object-tag": (
        "!!python/object/apply:os.system ['touch MARKER']",
        ("params.yaml", "not valid YAML", "python/object"),
    ),
    # E21: an adapter name that is not in the registry
    "E21-modality-os": (
        {"datasets": {DATASET: {"modality": "os", "root": "data", "code": "x", "adapter": {}}}},
        ("unknown modality 'os'", "known modalities: depth, medical, multispectral, rgb"),
    ),
    "E21-modality-subprocess-popen": (
        {
            "datasets": {
                DATASET: {
                    "modality": "subprocess:Popen",
                    "root": "data",
                    "code": "x",
                    "adapter": {},
                }
            }
        },
        ("unknown modality 'subprocess:Popen'", "known modalities: depth, medical, "),
    ),
}


@pytest.mark.parametrize("case_id", sorted(PARAM_CASES))
def test_bad_params_file(case_id: str, tmp_path: Path) -> None:
    patch, needles = PARAM_CASES[case_id]
    entry = rgb_tree(tmp_path / "data", n=2)
    params = full_params(entry)
    if isinstance(patch, str):
        text = patch + "\n"
    else:
        for key, value in patch.items():
            params[key] = value
        for e in (params.get("datasets") or {}).values():
            if (
                isinstance(e.get("modality"), str)
                and (ROOT / "modalities" / e["modality"]).is_dir()
            ):
                e.setdefault("code", str(ROOT / "modalities" / e["modality"]))
        text = yaml.safe_dump(params)
    (tmp_path / "params.yaml").write_text(text)
    before = tree_digest(tmp_path / "data", tmp_path / "params.yaml")
    proc = run_stage("pipelines.prepare", DATASET, *prep_args("data/prepared"), cwd=tmp_path)
    assert_one_line_error(proc, *needles)
    assert not (tmp_path / "MARKER").exists()
    assert not (tmp_path / "data/prepared").exists()
    assert tree_digest(tmp_path / "data", tmp_path / "params.yaml") == before


def test_registry_resolves_only_registered_names() -> None:
    known = available()
    assert set(known) >= {"rgb", "depth", "medical", "multispectral"}
    for name in ("os", "subprocess:Popen", "modalities.rgb:RGBAdapter", "builtins:eval"):
        with pytest.raises(ConfigError) as info:
            get_adapter(name)
        assert f"unknown modality {name!r}" in str(info.value)
        assert ", ".join(sorted(known)) in str(info.value)
    assert get_adapter("rgb").__module__ == "modalities.rgb.adapter"


def test_engine_config_python_tag_refused_in_one_line(tmp_path: Path, capsys) -> None:
    """``python -m dsod_core.engine CONFIG`` reads YAML with safe_load: the tag never runs."""
    from dsod_core.engine.__main__ import main

    marker = tmp_path / "MARKER"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    before = tree_digest(cfg)
    assert main([str(cfg)]) == 1
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cfg}: cannot read config")
    assert "python/object" in err
    assert tree_digest(cfg) == before


def test_engine_config_yaml_error_is_one_line(tmp_path: Path, capsys) -> None:
    from dsod_core.engine.__main__ import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("!!python/object/apply:os.system ['true']\n")
    assert main([str(cfg)]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_train_config_unknown_key_and_wrong_type() -> None:
    from dsod_core.engine import TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"batch_sise": 8}, source="p.yaml")
    assert str(info.value).startswith("p.yaml: unknown train key(s) ['batch_sise']")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"batch_size": "16"}, source="p.yaml")
    assert str(info.value) == "p.yaml: train.batch_size must be a positive integer, got '16'"


# --- checkpoints: foreign, corrupt, unsafe, mismatched ------------------------------------------
def _weights(in_channels: int, class_names: list[str]) -> dict[str, Any]:
    """A run's ``model.pt`` content (as ``trainer.weights_dict`` writes it)."""
    torch.manual_seed(0)
    model = build_model(
        "dsod_tiny", in_channels=in_channels, num_classes=len(class_names), input_size=48
    )
    return {
        "format": WEIGHTS_FORMAT,
        "version": 1,
        "model": model.state_dict(),
        "variant": "dsod_tiny",
        "input_size": 48,
        "model_overrides": {},
        "in_channels": in_channels,
        "num_classes": len(class_names),
        "class_names": class_names,
        "channel_names": [f"c{i}" for i in range(in_channels)],
        "modality": "synthetic",
        "mean": torch.zeros(in_channels),
        "std": torch.ones(in_channels),
        "history": [],
    }


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a harmless stand-in for running code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _eval_run(cwd: Path, run: str, weights_file_bytes: bytes, store: Path) -> None:
    run_dir = cwd / "models" / run
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(weights_file_bytes)
    (run_dir / "config.json").write_text(
        json.dumps({"dataset": DATASET, "init": "scratch", "store": str(store)})
    )


def _saved_bytes(obj: Any, path: Path) -> bytes:
    save_atomic(obj, path)
    return path.read_bytes()


def run_stage_in_process(main: Callable, args: list[str], cwd: Path, monkeypatch, capsys):
    """The stage's own ``main`` (the ``stage_main`` wrapper the subprocess runs) in this
    process, for stages that import torch: a subprocess would spend seconds importing it."""
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, info.value.code, captured.out, captured.err)


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("eval") / "store.h5", n=12, channels=2)


def _eval_dir(base: Path, model_pt: bytes, store: Path) -> Path:
    cwd = base / "stage"
    cwd.mkdir()
    (cwd / "params.yaml").write_text(yaml.safe_dump(full_params()))
    _eval_run(cwd, "r", model_pt, store)
    return cwd


def eval_args(store: Path) -> list[str]:
    return ["--run-dir", "models/r", "--store", str(store), "--out", "reports/runs/r"]


def test_checkpoint_channels_do_not_fit_the_data(eval_store: Path, tmp_path: Path) -> None:
    """E22, through a real ``python -m pipelines.evaluate`` subprocess."""
    good = _saved_bytes(_weights(3, ["square", "disc"]), tmp_path / "w3.pt")
    cwd = _eval_dir(tmp_path, good, eval_store)
    before = tree_digest(cwd, eval_store)
    proc = run_stage("pipelines.evaluate", *eval_args(eval_store), cwd=cwd)
    assert_one_line_error(proc, "models/r/model.pt", "model expects 3 channels", "has 2")
    assert tree_digest(cwd, eval_store) == before
    assert not (cwd / "reports").exists()


@pytest.mark.parametrize(
    "kind,needle",
    [("truncated", "corrupt or unreadable checkpoint"), ("foreign", "not a dsod-weights file")],
)
def test_bad_checkpoint_refused_by_evaluate(
    kind: str, needle: str, eval_store: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """E23 / E24 through the evaluate stage's main."""
    from pipelines.evaluate import main

    if kind == "truncated":
        good = _saved_bytes(_weights(2, ["square", "disc"]), tmp_path / "w.pt")
        blob = good[: len(good) // 2]
    else:
        blob = _saved_bytes({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "f.pt")
    cwd = _eval_dir(tmp_path, blob, eval_store)
    before = tree_digest(cwd, eval_store)
    proc = run_stage_in_process(main, eval_args(eval_store), cwd, monkeypatch, capsys)
    assert_one_line_error(proc, "models/r/model.pt", needle)
    assert tree_digest(cwd, eval_store) == before
    assert not (cwd / "reports").exists()


@pytest.mark.parametrize(
    "train,needle",
    [
        ({"batch_sise": 4}, "unknown key train.'batch_sise'; did you mean 'batch_size'?"),
        ({"batch_size": "16"}, "train.batch_size must be a positive integer, got '16'"),
        ({"lr_steps": "0.5"}, "train.lr_steps must be a list of fractions"),
    ],
)
def test_train_stage_bad_params(
    train: dict, needle: str, eval_store: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """E18 / E19 for the train stage's section."""
    from pipelines.train import main

    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / f"data/prepared/{DATASET}.h5").write_bytes(eval_store.read_bytes())
    params = full_params()
    params["train"].update(train)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    before = tree_digest(tmp_path)
    args = [DATASET, "--store", f"data/prepared/{DATASET}.h5", "--out-dir", "models/r"]
    proc = run_stage_in_process(main, args, tmp_path, monkeypatch, capsys)
    assert_one_line_error(proc, "params.yaml", needle)
    assert tree_digest(tmp_path) == before
    assert not (tmp_path / "models").exists()


def test_evaluate_untrained_run_is_a_one_line_error(tmp_path: Path, monkeypatch, capsys) -> None:
    from pipelines.evaluate import main

    (tmp_path / "models/r").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full_params()))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["--run-dir", "models/r", "--store", "x.h5", "--out", "reports/runs/r"])
    assert info.value.code == 1
    assert "models/r" in capsys.readouterr().err


def test_code_running_pickle_refused_without_running(tmp_path: Path) -> None:
    # The payload is live: plain pickle does run it (so the refusal below means something).
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()

    marker = tmp_path / "MARKER"
    evil = tmp_path / "model.pt"
    torch.save({"format": WEIGHTS_FORMAT, "model": {"w": _Payload(marker)}}, evil)
    before = tree_digest(evil)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(evil)
    msg = str(info.value)
    assert msg.startswith(f"{evil}: refused: not a plain checkpoint")
    assert "\n" not in msg
    with pytest.raises(CheckpointError):
        load_trained_model(evil)
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "ckpt_epoch0001.pt").write_bytes(evil.read_bytes())
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        latest_checkpoint(ckpt_dir)
    assert not marker.exists()
    assert tree_digest(evil) == before


def test_refused_pickle_is_exactly_one_line_saying_why(eval_store: Path, tmp_path: Path) -> None:
    """E25 through a real ``python -m pipelines.evaluate``: no torch warning lines before the
    project's one line, and the line keeps the reason (the global that was refused)."""
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    torch.save({"format": WEIGHTS_FORMAT, "model": {"w": _Payload(marker)}}, evil)
    cwd = _eval_dir(tmp_path, evil.read_bytes(), eval_store)
    proc = run_stage("pipelines.evaluate", *eval_args(eval_store), cwd=cwd)
    line = assert_one_line_error(proc, "models/r/model.pt", "refused", "could run code")
    assert "Unsupported global: GLOBAL io.open" in line, line
    assert not marker.exists()


def test_foreign_and_truncated_checkpoints_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, foreign)
    with pytest.raises(CheckpointError, match="not a dsod-weights file"):
        load_trained_model(foreign)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.ones(3)], not_a_dict)
    with pytest.raises(CheckpointError, match="expected a dict, found list"):
        load_checkpoint(not_a_dict)

    good = tmp_path / "good.pt"
    save_atomic(_weights(2, ["a"]), good)
    model, meta = load_trained_model(good)
    assert meta["in_channels"] == 2 and not model.training
    blob = good.read_bytes()
    rng = np.random.default_rng(0)
    for cut in [0, 10, *rng.integers(20, len(blob) - 1, 4).tolist()]:
        bad = tmp_path / f"cut{cut}.pt"
        bad.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError) as info:
            load_trained_model(bad)
        assert str(info.value).startswith(str(bad))
    # Wrong shapes for the declared architecture: refused, not silently half-loaded.
    w = _weights(2, ["a"])
    w["in_channels"] = 4
    save_atomic(w, tmp_path / "lies.pt")
    with pytest.raises(CheckpointError, match="weights do not fit the model"):
        load_trained_model(tmp_path / "lies.pt")


def test_weights_that_do_not_fit_give_one_line(tmp_path: Path) -> None:
    w = _weights(2, ["a"])
    w["in_channels"] = 4
    save_atomic(w, tmp_path / "lies.pt")
    with pytest.raises(CheckpointError) as info:
        load_trained_model(tmp_path / "lies.pt")
    assert "\n" not in str(info.value)


def test_latest_checkpoint_falls_back_when_newest_is_corrupt(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    for epoch in (2, 3):
        state = {"epoch": epoch, "w": torch.full((2,), epoch)}
        save_atomic(state, ckpt / f"ckpt_epoch{epoch:04d}.pt")
    newest = ckpt / "ckpt_epoch0003.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # as a crash mid-copy would leave it
    state = latest_checkpoint(ckpt)
    assert state["epoch"] == 2
    torch.testing.assert_close(state["w"], torch.full((2,), 2))
    (ckpt / "ckpt_epoch0002.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError) as info:
        latest_checkpoint(ckpt)
    assert "ckpt_epoch0003.pt" in str(info.value) and "ckpt_epoch0002.pt" in str(info.value)


def test_weights_only_forced_in_ci() -> None:
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD=1" in test_recipe
    assert "make test" in (ROOT / ".ci/run").read_text()


# --- no partial outputs -------------------------------------------------------------------------
def _slow_rgb_tree(root: Path, n: int = 160, side: int = 192) -> dict[str, Any]:
    """Enough noise images that gzip-compressing them into the store takes a second or more."""
    entry = rgb_tree(root, n=n, size=(side, side))
    return entry


def _kill_mid_write(cwd: Path, out: Path) -> None:
    proc = start_stage("pipelines.prepare", DATASET, *prep_args(out), cwd=cwd)
    partial = out / f"{DATASET}.h5.partial"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if partial.exists() and partial.stat().st_size > 200_000:
                break
            assert proc.poll() is None, "prepare finished before it could be killed"
            time.sleep(0.01)
        else:
            pytest.fail("no growing .partial store appeared")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def slow_dataset(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("kill")
    entry = _slow_rgb_tree(cwd / "data")
    params = full_params(entry, "error", "gzip")
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    return cwd


def test_killed_prepare_leaves_no_store(slow_dataset: Path) -> None:
    out = slow_dataset / "fresh"
    before = tree_digest(slow_dataset / "data")
    _kill_mid_write(slow_dataset, out)
    assert not (out / f"{DATASET}.h5").exists()
    assert not (out / f"{DATASET}.report.json").exists()
    # What is left is marked incomplete: a reader refuses it rather than reading half a store.
    partial = out / f"{DATASET}.h5.partial"
    if partial.exists():
        with pytest.raises(Exception) as info:
            StoreReader(partial)
        assert "incomplete" in str(info.value) or "cannot read HDF5" in str(info.value)
    assert tree_digest(slow_dataset / "data") == before


def test_killed_prepare_keeps_previous_store_byte_identical(slow_dataset: Path) -> None:
    out = slow_dataset / "prepared"
    done = run_stage("pipelines.prepare", DATASET, *prep_args(out), cwd=slow_dataset)
    assert done.returncode == 0, done.stderr
    previous = tree_digest(out / f"{DATASET}.h5", out / f"{DATASET}.report.json")
    _kill_mid_write(slow_dataset, out)
    assert tree_digest(out / f"{DATASET}.h5", out / f"{DATASET}.report.json") == previous
    reader = StoreReader(out / f"{DATASET}.h5")
    assert len(reader) == 160
    reader.close()
