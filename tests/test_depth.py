"""Tests of the depth adapter: formats read back from real files, encodings against analytic
geometry, NYU-style .mat boxes against brute-force references, and the error paths."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageFile

from dsod_core.data.store import StoreReader, StoreWriter
from dsod_core.errors import ConfigError, DataError
from modalities import get_adapter
from modalities.base import PrepareLog
from modalities.depth import DepthAdapter, DepthParams
from modalities.depth.demo import CLASSES
from modalities.depth.encodings import ENCODING_CHANNELS, Intrinsics, backproject
from modalities.depth.png import read_depth

K = {"fx": 40.0, "fy": 44.0, "cx": 15.5, "cy": 11.0}


# --- helpers writing native files by hand -------------------------------------------------------
def write_voc(path: Path, filename: str, objects: list[tuple[str, list[float]]], size=(32, 24)):
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{objs}</annotation>"
    )


def write_png16(path: Path, mm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mm.astype(np.uint16)).save(path)


def voc_dataset(root: Path, depths: dict[str, np.ndarray], rgb: bool = False) -> None:
    """VOC layout with one object per image; depth arrays: uint16 -> PNG mm, float -> .npy m."""
    for stem, d in depths.items():
        if d.dtype == np.uint16:
            write_png16(root / "depth" / f"{stem}.png", d)
        else:
            (root / "depth").mkdir(parents=True, exist_ok=True)
            np.save(root / "depth" / f"{stem}.npy", d)
        h, w = d.shape
        write_voc(
            root / "Annotations" / f"{stem}.xml",
            f"{stem}.png",
            [("chair", [3, 4, 10, 12])],
            size=(w, h),
        )
        if rgb:
            (root / "rgb").mkdir(exist_ok=True)
            col = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(col).save(root / "rgb" / f"{stem}.png")


def read_all(root: Path, params: dict) -> list:
    a = DepthAdapter(root, params)
    return [s for ref in a.discover() for s in a.read(ref)]


def plane_depth(n: np.ndarray, dist: float, h: int, w: int, k: dict) -> np.ndarray:
    """Camera z of the plane {P : n.P = -dist} (n unit, facing the camera), analytic."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.stack([(u - k["cx"]) / k["fx"], (v - k["cy"]) / k["fy"], np.ones_like(u)], -1)
    return -dist / (r @ n)


# --- reading -----------------------------------------------------------------------------------
def test_png16_round_trip_exact_mm(tmp_path):
    rng = np.random.default_rng(1)
    mm = rng.integers(1, 65536, (24, 32)).astype(np.uint16)
    mm[rng.random(mm.shape) < 0.2] = 0  # no reading
    mm[0, 0], mm[0, 1] = 1, 65535
    voc_dataset(tmp_path, {"a": mm})
    raw, unit = read_depth(tmp_path / "depth" / "a.png")
    assert unit == "mm"
    np.testing.assert_array_equal(raw, mm.astype(np.float64))  # every millimetre exact

    (s,) = read_all(
        tmp_path, {"min_depth_m": 0.001, "max_depth_m": 65.535, "validity_channel": True}
    )
    valid = mm > 0
    np.testing.assert_array_equal(s.image[1], valid.astype(np.float32))
    np.testing.assert_array_equal(s.valid, valid)
    np.testing.assert_allclose(s.image[0][valid], mm[valid] / 1000.0, rtol=1e-7)
    # Holes take the depth of a nearest valid pixel (brute force over all valid pixels).
    vy, vx = np.nonzero(valid)
    for y, x in zip(*np.nonzero(~valid)):
        d2 = (vy - y) ** 2 + (vx - x) ** 2
        candidates = mm[vy[d2 == d2.min()], vx[d2 == d2.min()]] / 1000.0
        assert np.isclose(candidates, s.image[0, y, x], rtol=1e-6).any()


def test_unit_scale_and_range_params(tmp_path):
    mm = np.full((24, 32), 2000, np.uint16)
    mm[5, 5] = 9000
    voc_dataset(tmp_path, {"a": mm})
    (s,) = read_all(tmp_path, {"depth_scale": 0.5, "max_depth_m": 4.0, "validity_channel": True})
    assert s.image[0, 0, 0] == pytest.approx(1.0)  # 2000 mm * 0.5
    assert s.image[1, 5, 5] == 0.0  # 4.5 m is beyond max_depth_m: invalid, filled
    assert s.image[0, 5, 5] == pytest.approx(1.0)
    (s,) = read_all(tmp_path, {"depth_unit": "m", "min_depth_m": 0.5, "max_depth_m": 1e5})
    assert s.image[0, 0, 0] == pytest.approx(2000.0)


@pytest.mark.parametrize("fmt", ["npy", "tif"])
def test_float_metres(tmp_path, fmt):
    rng = np.random.default_rng(2)
    m = rng.uniform(0.5, 8.0, (24, 32)).astype(np.float32)
    m[3, 4] = np.nan if fmt == "npy" else 0.0
    (tmp_path / "depth").mkdir()
    if fmt == "npy":
        np.save(tmp_path / "depth" / "a.npy", m)
    else:
        Image.fromarray(m).save(tmp_path / "depth" / "a.tif")
    write_voc(tmp_path / "Annotations" / "a.xml", "a.jpg", [("chair", [1, 1, 5, 5])])
    (s,) = read_all(tmp_path, {"validity_channel": True})
    ok = np.ones_like(m, dtype=bool)
    ok[3, 4] = False
    np.testing.assert_array_equal(s.image[0][ok], m[ok])
    assert s.image[1, 3, 4] == 0 and np.isfinite(s.image).all()


def test_voc_boxes_and_coco_pairing(tmp_path):
    mm = np.full((24, 32), 1500, np.uint16)
    write_png16(tmp_path / "depth" / "frame7.png", mm)
    write_voc(
        tmp_path / "Annotations" / "frame7.xml",
        "frame7.jpg",
        [("chair", [3, 4, 10, 12]), ("table", [1, 1, 32, 24])],
    )
    (s,) = read_all(tmp_path, {})
    np.testing.assert_array_equal(s.boxes, [[2, 3, 10, 12], [0, 0, 32, 24]])  # VOC 1-based
    np.testing.assert_array_equal(s.labels, [1, 2])
    coco = {
        "images": [{"id": 3, "file_name": "frame7.jpg", "width": 32, "height": 24}],
        "categories": [{"id": 5, "name": "table"}, {"id": 2, "name": "sofa"}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [2.5, 3, 7, 8.5]}],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    a = DepthAdapter(tmp_path, {"layout": "coco", "coco_file": "c.json"})
    (ref,) = a.discover()
    (s,) = a.read(ref)
    assert a.class_names == ["sofa", "table"]  # category id order
    np.testing.assert_array_equal(s.boxes, [[2.5, 3, 9.5, 11.5]])
    np.testing.assert_array_equal(s.labels, [2])
    # a COCO crowd region is flagged crowd (ignored in training and eval), not difficult
    coco["annotations"].append(
        {"id": 2, "image_id": 3, "category_id": 2, "bbox": [10, 10, 8, 8], "iscrowd": 1}
    )
    (tmp_path / "c.json").write_text(json.dumps(coco))
    a = DepthAdapter(tmp_path, {"layout": "coco", "coco_file": "c.json"})
    (s,) = a.read(a.discover()[0])
    assert s.crowd.tolist() == [False, True] and s.difficult.tolist() == [False, False]


# --- NYU Depth v2 -----------------------------------------------------------------------------
def write_nyu(path: Path, depths, labels, instances, names, images=None) -> None:
    """Write arrays given in image order ([N, H, W], [N, H, W, 3]) the way MATLAB v7.3 stores
    them as h5py sees them: every array with its axes reversed per image ([N, W, H],
    [N, 3, W, H]); names as a [1, C] array of references to uint16 [len, 1] char arrays."""
    with h5py.File(path, "w") as f:
        f["depths"] = np.asarray(depths, np.float32).transpose(0, 2, 1)
        f["labels"] = np.asarray(labels, np.uint16).transpose(0, 2, 1)
        f["instances"] = np.asarray(instances, np.uint8).transpose(0, 2, 1)
        if images is not None:
            f["images"] = np.asarray(images, np.uint8).transpose(0, 3, 2, 1)
        grp = f.create_group("#refs#")
        refs = []
        for i, name in enumerate(names):
            ds = grp.create_dataset(f"n{i}", data=np.array([[ord(c)] for c in name], np.uint16))
            refs.append(ds.ref)
        f.create_dataset("names", data=np.array([refs], dtype=h5py.ref_dtype))


def test_nyu_mat_boxes_from_instance_masks(tmp_path):
    rng = np.random.default_rng(3)
    n, h, w = 3, 18, 26  # h != w so a transposition mistake cannot pass
    names = ["chair", "table", "lamp"]
    depths = rng.uniform(0.5, 5.0, (n, h, w))
    labels = np.zeros((n, h, w), np.int64)
    inst = np.zeros((n, h, w), np.int64)
    for i in range(n):
        for _ in range(5):  # random blobs, later ones overwrite (occlude) earlier ones
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            blob = rng.random((rng.integers(2, 9), rng.integers(2, 12))) < 0.7
            hh, ww = min(blob.shape[0], h - y), min(blob.shape[1], w - x)
            lab, k = rng.integers(1, 4), rng.integers(0, 3)  # instance 0 = unlabelled
            labels[i, y : y + hh, x : x + ww][blob[:hh, :ww]] = lab
            inst[i, y : y + hh, x : x + ww][blob[:hh, :ww]] = k
    images = rng.integers(0, 256, (n, h, w, 3))
    write_nyu(tmp_path / "nyu_depth_v2_labeled.mat", depths, labels, inst, names, images)

    classes = ["table", "chair"]  # "lamp" is not asked for: its instances are skipped
    a = DepthAdapter(tmp_path, {"class_names": classes, "encoding": "rgbd"})
    refs = a.discover()
    assert len(refs) == n and a.class_names == classes
    for i, ref in enumerate(refs):
        (s,) = a.read(ref)
        np.testing.assert_allclose(s.image[3], depths[i].astype(np.float32))
        np.testing.assert_allclose(s.image[0], images[i, :, :, 0] / 255.0, rtol=1e-6)
        expected = []
        for lab in (1, 2):
            for k in range(1, 3):
                ys, xs = [], []
                for y in range(h):
                    for x in range(w):
                        if labels[i, y, x] == lab and inst[i, y, x] == k:
                            ys.append(y)
                            xs.append(x)
                if ys:
                    expected.append(
                        (
                            classes.index(names[lab - 1]) + 1,
                            (min(xs), min(ys), max(xs) + 1, max(ys) + 1),
                        )
                    )
        got = sorted(zip(s.labels.tolist(), map(tuple, s.boxes.tolist())))
        assert got == sorted(expected)
    # The left-out "lamp" instances: one warning per frame that had any, with their count.
    lamps = {
        ref.ref_id: len({int(k) for k in inst[i][(labels[i] == 3) & (inst[i] > 0)]})
        for i, ref in enumerate(refs)
    }
    lamps = {r: c for r, c in lamps.items() if c}
    assert lamps, "the random scene should hold at least one lamp instance"
    assert {w["sample"]: w["reason"] for w in a.warnings} == {
        r: f"left out {c} object(s) of classes not in class_names: 'lamp' x{c}"
        for r, c in lamps.items()
    }
    assert all(w["file"].endswith("nyu_depth_v2_labeled.mat") for w in a.warnings)


def test_nyu_mat_missing_datasets(tmp_path):
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["depths"] = np.ones((1, 8, 6), np.float32)
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat.*missing dataset"):
        DepthAdapter(tmp_path, {}).discover()
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat"):
        DepthAdapter(tmp_path, {}).discover()


# --- encodings ---------------------------------------------------------------------------------
def floor_scene(pitch_deg: float, cam_h: float, h=24, w=32, with_wall: float | None = None):
    """Camera pitched down ``pitch_deg`` at height ``cam_h`` over a floor (and a wall facing the
    camera at horizontal distance ``with_wall``). Returns depth and the camera-frame up."""
    t = np.deg2rad(pitch_deg)
    up = np.array([0.0, -np.cos(t), -np.sin(t)])  # world up seen from the pitched camera
    depth = plane_depth(up, cam_h, h, w, K)
    depth = np.where(depth > 0, depth, np.inf)
    if with_wall is not None:
        fwd = np.array([0.0, np.sin(t), -np.cos(t)])  # wall normal: horizontal, towards camera
        wall = plane_depth(fwd, with_wall, h, w, K)
        depth = np.minimum(depth, np.where(wall > 0, wall, np.inf))
    assert np.isfinite(depth).all()
    return depth.astype(np.float32), up


def test_normals_of_planes_point_the_right_way(tmp_path):
    depth, up = floor_scene(35.0, 1.3)
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "floor.npy", depth)
    np.save(tmp_path / "depth" / "wall.npy", np.full((24, 32), 2.0, np.float32))
    for stem in ("floor", "wall"):
        write_voc(tmp_path / "Annotations" / f"{stem}.xml", f"{stem}.png", [("x", [1, 1, 4, 4])])
    params = {"encoding": "normals", "normal_smoothing_px": 0.0, **K}
    by_id = {s.sample_id: s for s in read_all(tmp_path, params)}
    inner = (slice(None), slice(2, -2), slice(2, -2))
    # The floor's normal is world-up in the camera frame: -y (up in the image), -z (towards us).
    got = by_id["floor"].image[inner].reshape(3, -1).T
    np.testing.assert_allclose(got, np.broadcast_to(up, got.shape), atol=2e-3)
    # A wall facing the camera: (0, 0, -1) everywhere, borders included.
    wall = by_id["wall"].image.reshape(3, -1).T
    np.testing.assert_allclose(wall, np.broadcast_to([0, 0, -1], wall.shape), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(by_id["floor"].image, axis=0), 1.0, atol=1e-5)


def test_hha_ground_height_zero_and_gravity(tmp_path):
    depth, up = floor_scene(15.0, 1.2, with_wall=4.0)
    rng = np.random.default_rng(4)
    noisy = depth + rng.normal(size=depth.shape).astype(np.float32) * 0.002
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a.npy", noisy)
    write_voc(tmp_path / "Annotations" / "a.xml", "a.png", [("x", [1, 1, 4, 4])])
    # Per-sample intrinsics from a SUN RGB-D style 3x3 K text file rather than params.
    (tmp_path / "intrinsics").mkdir()
    (tmp_path / "intrinsics" / "a.txt").write_text(
        f"{K['fx']} 0 {K['cx']}\n0 {K['fy']} {K['cy']}\n0 0 1\n"
    )
    (s,) = read_all(tmp_path, {"encoding": "hha"})
    est = np.asarray(s.meta["up_camera_frame"])
    assert np.degrees(np.arccos(np.clip(est @ up, -1, 1))) < 1.0  # refined from the -y guess
    pts = backproject(depth.astype(np.float64), Intrinsics(**K))
    height = pts @ up + 1.2  # true height above the floor of every pixel
    floor = height < 0.01
    assert floor.sum() > 100 and (~floor).sum() > 100
    np.testing.assert_allclose(s.image[1][floor], 0.0, atol=0.03)  # ground ~ 0
    inner = np.zeros_like(floor)
    inner[2:-2, 2:-2] = True
    wall = ~floor & inner & (height > 0.1)
    np.testing.assert_allclose(s.image[1][wall], height[wall], atol=0.05)
    np.testing.assert_allclose(s.image[0], 1.0 / noisy, rtol=1e-5)
    far_from_edge = inner & (np.abs(height - 0.0) < 0.01)
    assert np.median(s.image[2][far_from_edge]) < 5.0  # floor: normal along up
    assert abs(np.median(s.image[2][wall]) - 90.0) < 5.0  # wall: perpendicular to up


@pytest.mark.parametrize("encoding", sorted(ENCODING_CHANNELS))
@pytest.mark.parametrize("validity", [False, True])
def test_every_encoding_channel_count_and_finite_in_store(tmp_path, encoding, validity):
    rng = np.random.default_rng(5)
    mm = rng.integers(500, 6000, (24, 32)).astype(np.uint16)
    mm[rng.random(mm.shape) < 0.3] = 0
    mm[:, :3] = 0  # a whole band without readings
    mm[10, 10] = 60000  # beyond max_depth_m
    voc_dataset(tmp_path, {"a": mm, "b": np.full((24, 32), 1200, np.uint16)}, rgb=True)
    params = {"encoding": encoding, "validity_channel": validity, **K}
    a = DepthAdapter(tmp_path, params)
    refs = a.discover()
    channels = ENCODING_CHANNELS[encoding] + (["depth_valid"] if validity else [])
    assert a.channel_names == channels
    with StoreWriter(
        tmp_path / "s.h5",
        modality="depth",
        class_names=a.class_names,
        channel_names=a.channel_names,
        params=params,
    ) as w:
        for ref in refs:
            for s in a.read(ref):
                assert s.image.shape == (len(channels), 24, 32)
                w.add(s)
    r = StoreReader(tmp_path / "s.h5")
    for i in range(len(r)):
        assert np.isfinite(r.get(i).image).all()
    assert np.isfinite(r.mean).all() and np.isfinite(r.std).all()


# --- errors ------------------------------------------------------------------------------------
def test_truncated_png(tmp_path):
    voc_dataset(
        tmp_path, {"a": np.random.default_rng(6).integers(1, 9000, (24, 32)).astype(np.uint16)}
    )
    png = tmp_path / "depth" / "a.png"
    png.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    a = DepthAdapter(tmp_path, {})
    (ref,) = a.discover()
    with pytest.raises(DataError, match=r"a\.png.*cannot read depth image"):
        list(a.read(ref))


def test_8bit_rgb_png_is_not_a_depth_file(tmp_path):
    voc_dataset(tmp_path, {"a": np.full((24, 32), 1000, np.uint16)})
    Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / "depth" / "a.png")
    a = DepthAdapter(tmp_path, {})
    (ref,) = a.discover()
    with pytest.raises(DataError, match=r"a\.png.*not a depth file.*8-bit colour"):
        list(a.read(ref))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "depth" / "a.png")
    with pytest.raises(DataError, match=r"a\.png.*not a depth file.*8-bit greyscale"):
        list(a.read(ref))


def test_annotation_naming_missing_depth_file(tmp_path):
    voc_dataset(tmp_path, {"a": np.full((24, 32), 1000, np.uint16)})
    write_voc(tmp_path / "Annotations" / "ghost.xml", "ghost.jpg", [("chair", [1, 1, 4, 4])])
    with pytest.raises(DataError, match=r"ghost\.xml.*'ghost'.*depth[/\\]ghost"):
        DepthAdapter(tmp_path, {}).discover()


def test_depth_dir_escaping_root_refused(tmp_path):
    voc_dataset(tmp_path / "ds", {"a": np.full((24, 32), 1000, np.uint16)})
    with pytest.raises(DataError, match="escapes the dataset root"):
        DepthAdapter(tmp_path / "ds", {"depth_dir": "../elsewhere"}).discover()


def test_missing_intrinsics_and_rgb_named(tmp_path):
    voc_dataset(tmp_path, {"a": np.full((24, 32), 1000, np.uint16)})
    for enc, what in (("hha", "intrinsics"), ("rgbd", "colour image")):
        a = DepthAdapter(tmp_path, {"encoding": enc})
        (ref,) = a.discover()
        with pytest.raises(DataError, match=rf"a\.png.*{what}"):
            list(a.read(ref))


@pytest.mark.parametrize(
    "params",
    [
        {"encoding": "rgb"},
        {"fx": 10.0},
        {"min_depth_m": 0.0},
        {"depth_unit": "cm"},
        {"class_names": []},
        {"class_names": ["chair", "chair"]},
        {"min_depth_m": 5.0, "max_depth_m": 2.0},
        {"cy": 3.0},
        {"fx": -1.0, "fy": 1.0, "cx": 1.0, "cy": 1.0},
        {"val_fraction": 0.7, "test_fraction": 0.4},
        {"max_pixels": 0},
        {"depth_dir": ""},
        {"validity_channel": "yes"},
    ],
)
def test_bad_params_refused(tmp_path, params):
    with pytest.raises(ConfigError, match=next(iter(params))):
        DepthAdapter(tmp_path, params)


def test_old_param_names_point_to_the_new_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown depth adapter param 'classes'.*'class_names'"):
        DepthAdapter(tmp_path, {"classes": ["chair"]})
    with pytest.raises(ConfigError, match=r"'split_seed'.*accepted:.*\bseed\b"):
        DepthAdapter(tmp_path, {"split_seed": 3})
    p = DepthAdapter(tmp_path, {"class_names": ["chair"], "seed": 3, "max_pixels": "1e6"}).params
    assert isinstance(p, DepthParams) and p.seed == 3 and p.max_pixels == 1e6
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 4  # type: ignore[misc]


def test_params_declared_with_docs_and_encodings_match():
    rows = DepthParams.describe()
    assert {r["name"] for r in rows} == {f.name for f in dataclasses.fields(DepthParams)}
    assert all(r["doc"] for r in rows)
    hints = typing.get_type_hints(DepthParams)
    assert set(typing.get_args(hints["encoding"])) == set(ENCODING_CHANNELS)
    assert DepthAdapter.Params is DepthParams and DepthAdapter.name == "depth"


def test_max_pixels_checked_from_the_header_in_discover(tmp_path):
    voc_dataset(tmp_path, {f"f{i}": np.full((24, 32), 1000, np.uint16) for i in range(3)})
    write_png16(tmp_path / "depth" / "f1.png", np.full((40, 60), 1000, np.uint16))  # 2400 px
    with pytest.raises(
        DataError, match=r"f1\.png: declares 60 x 40 px = 2,400, over the limit max_pixels=1,000"
    ):
        DepthAdapter(tmp_path, {"max_pixels": 1000}).discover()
    log = PrepareLog(on_error="skip")
    a = DepthAdapter(tmp_path, {"max_pixels": 1000}, log=log)
    assert [r.ref_id for r in a.discover()] == ["f0", "f2"]
    (skip,) = log.skipped
    assert skip["file"].endswith("f1.png") and skip["unit"] == "image"
    assert "'max_pixels'" in skip["reason"] and skip["stage"] == "discover"
    # A .npy depth map is checked from its header the same way.
    (tmp_path / "depth" / "f1.png").unlink()
    np.save(tmp_path / "depth" / "f1.npy", np.ones((40, 60), np.float32))
    with pytest.raises(DataError, match=r"f1\.npy: declares 60 x 40 px.*max_pixels"):
        DepthAdapter(tmp_path, {"max_pixels": 1000}).discover()


def test_decode_time_size_guard_kept(tmp_path):
    write_png16(tmp_path / "big.png", np.full((40, 60), 1000, np.uint16))
    with pytest.raises(DataError, match=r"big\.png: declared size 60x40 = 2400 pixels exceeds"):
        read_depth(tmp_path / "big.png", max_pixels=1000)


def test_rgb_header_checked_for_rgbd(tmp_path):
    voc_dataset(tmp_path, {"a": np.full((24, 32), 1000, np.uint16)}, rgb=True)
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(tmp_path / "rgb" / "a.png")
    assert DepthAdapter(tmp_path, {"max_pixels": 1000}).discover()  # colour unused: not read
    with pytest.raises(DataError, match=r"rgb[/\\]a\.png: declares 320 x 240 px.*max_pixels"):
        DepthAdapter(tmp_path, {"max_pixels": 1000, "encoding": "rgbd"}).discover()


@pytest.mark.parametrize("keep", ["half", "most", "no_iend"])
@pytest.mark.parametrize("lenient_pillow", [False, True])
def test_truncated_16bit_png_raises_in_read(tmp_path, monkeypatch, keep, lenient_pillow):
    """A 16-bit PNG written by Pillow, then cut: the header still reads (discover passes), the
    full decode in read() raises, even with Pillow told to accept truncated images."""
    mm = np.random.default_rng(7).integers(1, 60000, (48, 64)).astype(np.uint16)
    voc_dataset(tmp_path, {"a": mm})
    png = tmp_path / "depth" / "a.png"
    data = png.read_bytes()
    cut = {"half": len(data) // 2, "most": len(data) - 40, "no_iend": len(data) - 12}[keep]
    png.write_bytes(data[:cut])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pillow)
    a = DepthAdapter(tmp_path, {})
    (ref,) = a.discover()
    with pytest.raises(DataError, match=r"a\.png.*cannot read depth image.*(truncated|Truncated)"):
        list(a.read(ref))


def test_truncated_npy_refused_in_discover(tmp_path):
    voc_dataset(tmp_path, {"a": np.ones((24, 32), np.float32)})
    npy = tmp_path / "depth" / "a.npy"
    npy.write_bytes(npy.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"a\.npy: cannot read \.npy header"):
        DepthAdapter(tmp_path, {}).discover()


def test_one_bad_annotation_among_many_goes_through_the_log(tmp_path):
    voc_dataset(tmp_path, {f"f{i}": np.full((24, 32), 1000, np.uint16) for i in range(4)})
    (tmp_path / "Annotations" / "f2.xml").write_text("<annotation><object><name>chair")
    with pytest.raises(DataError, match=r"f2\.xml: malformed VOC XML"):
        DepthAdapter(tmp_path, {}).discover()
    a = DepthAdapter(tmp_path, {}, log=PrepareLog(on_error="skip"))
    refs = a.discover()
    assert [r.ref_id for r in refs] == ["f0", "f1", "f3"] and a.class_names == ["chair"]
    (skip,) = a.log.skipped
    assert skip["file"].endswith("f2.xml") and "malformed VOC XML" in skip["reason"]
    assert skip["unit"] == "image"
    # COCO: an image naming a missing depth map is one unit among the file's images.
    coco = {
        "images": [
            {"id": 1, "file_name": "f0.png"},
            {"id": 2, "file_name": "ghost.png"},
            {"id": 3, "file_name": "f3.png"},
        ],
        "categories": [{"id": 1, "name": "chair"}],
        "annotations": [{"image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (1, 2, 3)],
    }
    (tmp_path / "c.json").write_text(json.dumps(coco))
    params = {"layout": "coco", "coco_file": "c.json"}
    with pytest.raises(DataError, match=r"c\.json: sample ghost:.*'ghost'"):
        DepthAdapter(tmp_path, params).discover()
    a = DepthAdapter(tmp_path, params, log=PrepareLog(on_error="skip"))
    assert [r.ref_id for r in a.discover()] == ["f0", "f3"]
    assert a.log.skipped[0]["sample"] == "ghost"


def test_objects_of_unlisted_classes_left_out_with_one_warning_per_file(tmp_path):
    write_png16(tmp_path / "depth" / "a.png", np.full((24, 32), 1500, np.uint16))
    write_png16(tmp_path / "depth" / "b.png", np.full((24, 32), 1500, np.uint16))
    objs = [("chair", [3, 4, 10, 12]), ("lamp", [1, 1, 5, 5]), ("lamp", [6, 6, 9, 9])]
    objs += [("plant", [2, 2, 8, 8])]
    write_voc(tmp_path / "Annotations" / "a.xml", "a.png", objs)
    write_voc(tmp_path / "Annotations" / "b.xml", "b.png", [("chair", [3, 4, 10, 12])])
    a = DepthAdapter(tmp_path, {"class_names": ["chair"]})
    samples = {s.sample_id: s for ref in a.discover() for s in a.read(ref)}
    np.testing.assert_array_equal(samples["a"].labels, [1])
    np.testing.assert_array_equal(samples["a"].boxes, [[2, 3, 10, 12]])
    (w,) = a.warnings
    assert w["file"].endswith("a.xml") and w["sample"] == "a"
    assert w["reason"] == (
        "left out 3 object(s) of classes not in class_names: 'lamp' x2, 'plant' x1"
    )
    assert DepthAdapter(tmp_path, {}).discover() and not DepthAdapter(tmp_path, {}).warnings


def test_nyu_frame_size_checked_in_discover(tmp_path):
    d = np.ones((2, 18, 26))
    z = np.zeros((2, 18, 26))
    write_nyu(tmp_path / "nyu_depth_v2_labeled.mat", d, z, z, ["chair"])
    assert len(DepthAdapter(tmp_path, {}).discover()) == 2
    with pytest.raises(
        DataError, match=r"labeled\.mat: declares 26 x 18 px frames = 468, over the limit"
    ):
        DepthAdapter(tmp_path, {"max_pixels": 400}).discover()


# --- export, render, demo ----------------------------------------------------------------------
def test_export_median_depth_and_camera_centre(tmp_path):
    mm = np.full((24, 32), 3000, np.uint16)
    mm[4:12, 8:20] = 1500
    mm[5, 9] = 0  # a hole inside the box is not a measurement
    mm[6, 10] = 1600
    voc_dataset(tmp_path, {"a": mm})
    a = DepthAdapter(tmp_path, dict(K))
    (ref,) = a.discover()
    (s,) = a.read(ref)
    box = np.array([[8.0, 4.0, 20.0, 12.0]])
    items = [
        {
            "sample_id": s.sample_id,
            "source": s.source,
            "meta": s.meta,
            "affine": s.affine,
            "detections": {"boxes": box, "scores": [0.8], "labels": [1]},
        }
    ]
    (path,) = a.export_predictions(items, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions_depth.json"]
    (row,) = json.loads(path.read_text())
    (det,) = row["detections"]
    inside = mm[4:12, 8:20]
    z = float(np.median(inside[inside > 0])) / 1000.0
    assert det["median_depth_m"] == pytest.approx(z) and det["depth_measured"]
    u, v = 14.0 - 0.5, 8.0 - 0.5  # box centre as an OpenCV pixel index
    expected = [(u - K["cx"]) * z / K["fx"], (v - K["cy"]) * z / K["fy"], z]
    np.testing.assert_allclose(det["centre_camera_m"], expected, rtol=1e-9)
    assert det["class"] == "chair"


def test_render_colour_map(tmp_path):
    img = np.zeros((2, 8, 10), np.float32)
    img[0] = np.linspace(1, 5, 10)[None, :]
    pic = DepthAdapter(tmp_path, {}).render(img)
    assert pic.dtype == np.uint8 and pic.shape == (8, 10, 3)
    assert not np.array_equal(pic[:, 0], pic[:, -1])  # near and far get different colours
    assert not (pic[..., 0] == pic[..., 1]).all()  # a colour map, not grey


def test_demo_round_trip_and_not_separable_by_depth(tmp_path):
    params = DepthAdapter.write_demo(tmp_path, num_images=90, image_size=64, seed=1)
    assert params["class_names"] == list(CLASSES)
    assert DepthParams.parse(params).to_dict().items() >= params.items()  # the new names
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert get_adapter("depth") is DepthAdapter
    assert (tmp_path / "depth" / "scene_00000.png").is_file()
    with Image.open(tmp_path / "depth" / "scene_00000.png") as im:
        assert im.mode == "I;16"  # real 16-bit mm PNGs
    a = DepthAdapter(tmp_path, params)
    refs = a.discover()
    assert a.class_names == list(CLASSES)
    assert {r.split for r in refs} == {"train", "val", "test"}
    depths = {c: [] for c in range(1, 4)}
    for ref in refs:
        (s,) = a.read(ref)
        assert 1 <= len(s.labels) <= 3
        side = np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert (side >= 0.12 * 64).all() and (side <= 0.6 * 64).all()
        raw = np.asarray(Image.open(ref.paths["depth"]), dtype=np.float64) / 1000
        for b, lab in zip(s.boxes.astype(int), s.labels):
            patch = raw[b[1] : b[3], b[0] : b[2]]
            depths[int(lab)].append(np.percentile(patch[patch > 0], 10))
    assert all(len(v) >= 5 for v in depths.values())
    ranges = [(min(v), max(v)) for v in depths.values()]
    # The classes' object depth ranges overlap widely: no depth threshold separates them.
    assert max(lo for lo, _ in ranges) < min(hi for _, hi in ranges) - 1.0
