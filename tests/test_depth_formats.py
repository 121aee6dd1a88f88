"""Depth formats read back from files written by the formats' own tools: a SUN RGB-D release
tree (16-bit PNG written by Pillow with the toolbox's 3-bit circular shift, ``intrinsics.txt``,
``annotation2Dfinal/index.json`` polygons) and an NYU Depth v2 labelled ``.mat`` written with
h5py in MATLAB v7.3's layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.depth import DepthAdapter

H, W = 24, 34  # H != W so a transposition mistake cannot pass
K = [[41.5, 0.0, 16.25], [0.0, 43.0, 11.75], [0.0, 0.0, 1.0]]


# --- SUN RGB-D ---------------------------------------------------------------------------------
def rotl3(mm: np.ndarray) -> np.ndarray:
    """What the SUN RGB-D PNGs store: millimetres rotated left by 3 bits (16-bit)."""
    v = mm.astype(np.uint32)
    return (((v << 3) | (v >> 13)) & 0xFFFF).astype(np.uint16)


def write_scene(folder: Path, mm: np.ndarray, index: dict | str, rgb: bool = True) -> None:
    """One SUN RGB-D scene folder: depth/, image/, intrinsics.txt, annotation2Dfinal/."""
    (folder / "depth").mkdir(parents=True)
    stored = rotl3(mm)
    img = Image.frombytes("I;16", (mm.shape[1], mm.shape[0]), stored.astype("<u2").tobytes())
    assert img.mode == "I;16"
    img.save(folder / "depth" / "0000103.png")
    if rgb:
        (folder / "image").mkdir()
        col = np.random.default_rng(1).integers(0, 256, (*mm.shape, 3), dtype=np.uint8)
        Image.fromarray(col).save(folder / "image" / "0000103.jpg", quality=95)
    (folder / "intrinsics.txt").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row) for row in K) + "\n"
    )
    (folder / "extrinsics").mkdir()
    (folder / "extrinsics" / "20140101.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    (folder / "annotation2Dfinal").mkdir()
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "annotation2Dfinal" / "index.json").write_text(text)


def index_json(polygons: list[tuple[int, list[float], list[float]]], names: list) -> dict:
    """The annotator's JSON: ``objects`` (``None`` -> ``null``, ``{}`` kept) and the polygons
    of ``frames[0]`` as ``(object index, xs, ys)``."""
    return {
        "name": "scene/",
        "date": 1400000000,
        "fileList": ["image/0000103.jpg"],
        "img_width": W,
        "img_height": H,
        "conflictList": [None] * len(names),
        "objects": [n if n is None or isinstance(n, dict) else {"name": n} for n in names],
        "frames": [
            {"polygon": [{"x": xs, "y": ys, "object": k} for k, xs, ys in polygons]},
        ],
    }


def mm_map(seed: int) -> np.ndarray:
    """Known depths in mm, with holes (0) and readings past 8.191 m whose stored value uses
    the wrapped-around high bits (a plain ``/ 8`` would get them wrong)."""
    rng = np.random.default_rng(seed)
    mm = rng.integers(500, 9800, (H, W)).astype(np.uint16)
    mm[rng.random((H, W)) < 0.1] = 0
    mm[0, :4] = [8192, 8193, 9000, 9999]
    return mm


NAMES = ["Chair", "wall", None, "Night_Stand", {}, "tv", "table"]
POLYS = [
    (0, [3.5, 10.25, 8.0, 4.0], [2.0, 3.5, 12.75, 9.0]),  # chair: [3.5, 2, 10.25, 12.75]
    (1, [0.0, 34.0, 34.0, 0.0], [0.0, 0.0, 8.0, 8.0]),  # wall: not asked for
    (2, [5.0, 6.0, 6.0], [5.0, 5.0, 6.0]),  # deleted object (null): unnamed
    (3, [-4.0, 7.5, 2.0], [15.0, 30.0, 18.5]),  # night stand, clipped: [0, 15, 7.5, 24]
    (4, [1.0, 2.0, 2.0], [1.0, 1.0, 2.0]),  # object {} without a name: unnamed
    (5, [20.0, 33.0, 28.0, 21.5], [4.0, 6.0, 19.0, 17.25]),  # tv -> television
    (6, [12.0, 40.0, 26.0], [14.0, 16.0, 22.0]),  # table, clipped at x = 34
    (0, [40.0, 50.0, 45.0], [1.0, 5.0, 9.0]),  # chair wholly outside the image: dropped
]
CLASSES = ["chair", "table", "night stand", "television"]
TRUTH = [  # (label, box) kept, in polygon order
    (1, [3.5, 2.0, 10.25, 12.75]),
    (3, [0.0, 15.0, 7.5, 24.0]),
    (4, [20.0, 4.0, 33.0, 19.0]),
    (2, [12.0, 14.0, 34.0, 22.0]),
]
PARAMS = {"class_names": CLASSES, "sunrgbd_name_map": {"TV": "television"}}
SCENES = [
    "SUNRGBD/kv1/NYUdata/NYU0001",
    "SUNRGBD/kv2/kinect2data/000002_2014-05-26_14-23-37_260595134347_rgbf000103-resize",
    "SUNRGBD/realsense/lg/2014_10_24-18_13_55-1311000073",
    "SUNRGBD/xtion/sun3ddata/mit_32_d463/d463_1/0000001-000000020431",
]


def sun_tree(root: Path) -> dict[str, np.ndarray]:
    truth = {}
    for i, rel in enumerate(SCENES):
        truth[rel] = mm_map(i)
        write_scene(root / rel, truth[rel], index_json(POLYS, NAMES))
    return truth


def test_sunrgbd_tree_boxes_depth_and_intrinsics(tmp_path):
    truth = sun_tree(tmp_path)
    # A folder with depth and intrinsics but no 2D annotation is not a scene (one warning).
    bare = tmp_path / "SUNRGBD/kv1/b3dodata/img_0063"
    (bare / "depth").mkdir(parents=True)
    (bare / "intrinsics.txt").write_text("1 0 1\n0 1 1\n0 0 1\n")
    a = DepthAdapter(tmp_path, {**PARAMS, "max_depth_m": 10.0})  # layout auto -> sunrgbd
    refs = a.discover()
    assert sorted(r.ref_id for r in refs) == sorted(SCENES)
    assert a.class_names == CLASSES
    for ref in refs:
        (s,) = a.read(ref)
        mm = truth[ref.ref_id]
        assert s.image.shape == (1, H, W)
        np.testing.assert_array_equal(s.valid, mm > 0)
        # Depth in mm after un-shifting equals the truth (float32 metres: within 0.01 mm).
        np.testing.assert_allclose(s.image[0][mm > 0] * 1000.0, mm[mm > 0], atol=0.01)
        assert s.meta["intrinsics"] == {"fx": 41.5, "fy": 43.0, "cx": 16.25, "cy": 11.75}
        assert s.labels.tolist() == [lab for lab, _ in TRUTH]
        np.testing.assert_allclose(s.boxes, [b for _, b in TRUTH], atol=0.5)
        np.testing.assert_allclose(s.boxes, [b for _, b in TRUTH], atol=1e-5)
    by_sample = {}
    for w in a.warnings:
        by_sample.setdefault(w["sample"], []).append(w["reason"])
    assert by_sample.pop(None) == [
        "left out 1 folder(s) with depth/ and intrinsics.txt but no "
        "annotation2Dfinal/index.json: SUNRGBD/kv1/b3dodata/img_0063"
    ]
    assert set(by_sample) == set(SCENES)
    for reasons in by_sample.values():
        assert reasons == [
            "left out 3 object(s) of classes not in class_names: '(unnamed)' x2, 'wall' x1",
            f"left out 1 polygon(s) whose box is empty inside the {W}x{H} image",
        ]


def test_sunrgbd_rgbd_split_lists_and_export_use_unshifted_depth(tmp_path):
    truth = sun_tree(tmp_path)
    (tmp_path / "ImageSets/Main").mkdir(parents=True)
    (tmp_path / "ImageSets/Main/train.txt").write_text(f"{SCENES[0]}\n{SCENES[2]}\n")
    (tmp_path / "ImageSets/Main/test.txt").write_text(f"{SCENES[1]}\n")
    a = DepthAdapter(tmp_path, {**PARAMS, "layout": "sunrgbd", "encoding": "rgbd"})
    refs = a.discover()
    assert {r.ref_id: r.split for r in refs} == {
        SCENES[0]: "train",
        SCENES[2]: "train",
        SCENES[1]: "test",
    }
    ref = next(r for r in refs if r.ref_id == SCENES[1])
    (s,) = a.read(ref)
    assert s.image.shape == (4, H, W) and np.isfinite(s.image).all()
    mm = truth[SCENES[1]]
    box = [3.0, 2.0, 11.0, 13.0]  # pixel centres 3..10 x 2..12
    (path,) = a.export_predictions(
        [
            {
                "sample_id": s.sample_id,
                "source": s.source,
                "meta": s.meta,
                "affine": s.affine,
                "detections": {"boxes": [box], "scores": [0.9], "labels": [1]},
            }
        ],
        tmp_path / "out",
    )
    (row,) = json.loads(path.read_text())[0]["detections"]
    inside = mm[2:13, 3:11]
    assert row["median_depth_m"] == pytest.approx(np.median(inside[inside > 0]) / 1000.0)


def test_sunrgbd_unshift_off_reads_plain_millimetres(tmp_path):
    mm = mm_map(0)
    write_scene(tmp_path / "scene", mm, index_json(POLYS[:1], NAMES))
    # The same file without un-shifting reads the stored values as millimetres.
    a = DepthAdapter(tmp_path, {**PARAMS, "sunrgbd_unshift": False, "max_depth_m": 70.0})
    (s,) = a.read(a.discover()[0])
    stored = rotl3(mm).astype(np.float64)
    ok = (stored >= 100) & (stored <= 70000)  # inside [min_depth_m, max_depth_m]
    np.testing.assert_array_equal(s.valid, ok)
    assert (stored[mm > 0] != mm[mm > 0]).all() and ok.sum() > 0.8 * ok.size
    np.testing.assert_allclose(s.image[0][ok] * 1000.0, stored[ok], rtol=1e-6)


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"frames": [{"polygon": [', "cannot parse SUN RGB-D annotation JSON"),
        ('{"objects": []}', "no 'frames' list"),
        ("[1, 2]", "is not an object"),
        (
            json.dumps(index_json([(0, [1.0, 2.0], [1.0])], ["chair"])),
            r"frames\[0\]\.polygon\[0\] needs equal-length",
        ),
        (
            json.dumps(index_json([(5, [1.0, 2.0], [1.0, 3.0])], ["chair"])),
            r"names object 5, not an index into 'objects' \(1 entries\)",
        ),
        (
            json.dumps(index_json([(0, [1.0, "a"], [1.0, 3.0])], ["chair"])),
            "lists of finite numbers",
        ),
    ],
)
def test_sunrgbd_malformed_index_json_one_line_error_naming_the_file(tmp_path, text, why):
    write_scene(tmp_path / "SUNRGBD/kv1/NYUdata/NYU0002", mm_map(0), text)
    with pytest.raises(DataError) as info:
        DepthAdapter(tmp_path, PARAMS).discover()
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(
        str(tmp_path / "SUNRGBD/kv1/NYUdata/NYU0002/annotation2Dfinal/index.json")
    )
    assert re.search(why, msg)


def test_sunrgbd_bad_scene_skipped_through_the_log_and_depth_file_checks(tmp_path):
    sun_tree(tmp_path)
    bad = tmp_path / SCENES[2] / "annotation2Dfinal" / "index.json"
    bad.write_text("{not json")
    log = PrepareLog(on_error="skip")
    a = DepthAdapter(tmp_path, PARAMS, log=log)
    assert sorted(r.ref_id for r in a.discover()) == sorted(set(SCENES) - {SCENES[2]})
    (skip,) = log.skipped
    assert skip["file"] == str(bad) and skip["unit"] == "scene"
    assert "cannot parse SUN RGB-D annotation JSON" in skip["reason"]
    bad.write_text(json.dumps(index_json(POLYS, NAMES)))
    # Two depth PNGs in one scene: refused, naming the folder.
    extra = tmp_path / SCENES[0] / "depth" / "0000104.png"
    Image.frombytes("I;16", (W, H), np.ones((H, W), "<u2").tobytes()).save(extra)
    with pytest.raises(DataError, match=r"NYU0001/depth: expected one depth PNG.*found 2"):
        DepthAdapter(tmp_path, {**PARAMS, "layout": "sunrgbd"}).discover()
    # An 8-bit PNG is not SUN RGB-D depth.
    extra.unlink()
    Image.fromarray(np.ones((H, W), np.uint8)).save(tmp_path / SCENES[0] / "depth/0000103.png")
    a = DepthAdapter(tmp_path, PARAMS)
    ref = next(r for r in a.discover() if r.ref_id == SCENES[0])
    with pytest.raises(DataError, match=r"0000103\.png.*not a depth file"):
        list(a.read(ref))


def test_sunrgbd_name_map_must_target_class_names(tmp_path):
    with pytest.raises(ConfigError, match=r"sunrgbd_name_map.*\['sofa'\]"):
        DepthAdapter(tmp_path, {"class_names": ["chair"], "sunrgbd_name_map": {"couch": "sofa"}})


# --- NYU Depth v2 labelled .mat ----------------------------------------------------------------
def write_nyu_mat(path: Path, depths, images, labels, instances, names) -> None:
    """``nyu_depth_v2_labeled.mat`` as MATLAB v7.3 writes it (HDF5 with a 512-byte MAT
    userblock). Arrays are given in image order ([N, H, W], [N, H, W, 3]); MATLAB holds them
    as H x W x N (H x W x 3 x N) column-major, which h5py sees with the axes reversed:
    [N, W, H] and [N, 3, W, H]. ``names`` is a C x 1 cell: h5py sees [1, C] object references
    into ``#refs#``, each a uint16 char array [len, 1]."""
    with h5py.File(path, "w", userblock_size=512) as f:

        def put(where, name, data, cls):
            ds = where.create_dataset(name, data=data)
            ds.attrs["MATLAB_class"] = np.bytes_(cls)
            return ds

        d = np.asarray(depths, "<f4").transpose(0, 2, 1)
        put(f, "depths", d, "single")
        put(f, "rawDepths", d, "single")
        put(f, "images", np.asarray(images, "u1").transpose(0, 3, 2, 1), "uint8")
        put(f, "labels", np.asarray(labels, "<u2").transpose(0, 2, 1), "uint16")
        put(f, "instances", np.asarray(instances, "u1").transpose(0, 2, 1), "uint8")
        refs_grp = f.create_group("#refs#")
        refs = []
        for i, name in enumerate(names):
            ds = put(refs_grp, f"b{i}", np.array([[ord(c)] for c in name], "<u2"), "char")
            ds.attrs["MATLAB_int_decode"] = np.int32(2)
            refs.append(ds.ref)
        put(f, "names", np.array([refs], dtype=h5py.ref_dtype), "cell")
        # containers.Map is an opaque MATLAB object; h5py sees a small uint32 array.
        m = put(f, "namesToIds", np.array([[3707764736, 2, 1, 1, 1, 1]], "<u4"), "containers.Map")
        m.attrs["MATLAB_object_decode"] = np.int32(3)
        put(f, "accelData", np.zeros((4, len(depths)), "<f4"), "single")
    header = (
        b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2012 "
        b"HDF5 schema 1.00 ."
    )
    with open(path, "r+b") as fh:  # the MAT header in the userblock: text, version, endian
        fh.write(header.ljust(116) + b"\0" * 8 + b"\x00\x02IM")


def test_nyu_mat_published_layout_instance_boxes(tmp_path):
    names = ["bed", "chair", "wall", "table"]  # labels 1..4 (1-based into names)
    n = 2
    labels = np.zeros((n, H, W), np.int64)
    inst = np.zeros((n, H, W), np.int64)
    truth = []
    # Frame 0: two chairs (instances 1, 2), a table whose instance number 1 equals a chair's,
    # an L-shaped bed, a wall (not asked for) and a labelled pixel with instance 0 (none).
    labels[0, 2:6, 3:9], inst[0, 2:6, 3:9] = 2, 1  # chair 1: x 3..9, y 2..6
    labels[0, 10:20, 25:31], inst[0, 10:20, 25:31] = 2, 2  # chair 2
    labels[0, 14:22, 5:20], inst[0, 14:22, 5:20] = 4, 1  # table 1
    labels[0, 0:3, 20:24], inst[0, 0:3, 20:24] = 1, 1  # bed, L: a bar ...
    labels[0, 0:9, 22:24], inst[0, 0:9, 22:24] = 1, 1  # ... and a leg
    labels[0, 8:10, 0:2], inst[0, 8:10, 0:2] = 3, 1  # wall
    labels[0, 23, 33], inst[0, 23, 33] = 2, 0  # a chair pixel of no instance
    truth.append(
        {
            (2, (3, 2, 9, 6)),
            (2, (25, 10, 31, 20)),
            (3, (5, 14, 20, 22)),
            (1, (20, 0, 24, 9)),
        }
    )
    # Frame 1: one chair cut in two by a table in front (one box spans both parts).
    labels[1, 5:15, 2:30], inst[1, 5:15, 2:30] = 2, 3
    labels[1, 0:24, 12:18], inst[1, 0:24, 12:18] = 4, 2
    truth.append({(2, (2, 5, 30, 15)), (3, (12, 0, 18, 24))})
    rng = np.random.default_rng(5)
    depths = rng.uniform(0.7, 6.0, (n, H, W))
    images = rng.integers(0, 256, (n, H, W, 3))
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    write_nyu_mat(mat, depths, images, labels, inst, names)
    assert mat.read_bytes()[:10] == b"MATLAB 7.3" and h5py.is_hdf5(mat)

    classes = ["bed", "chair", "table"]
    a = DepthAdapter(tmp_path, {"class_names": classes, "encoding": "rgbd"})
    refs = a.discover()
    assert [r.ref_id for r in refs] == ["nyu_0000", "nyu_0001"]
    for i, ref in enumerate(refs):
        (s,) = a.read(ref)
        np.testing.assert_allclose(s.image[3], depths[i].astype(np.float32))
        np.testing.assert_allclose(s.image[:3], images[i].transpose(2, 0, 1) / 255.0, rtol=1e-6)
        got = {(lab, tuple(b)) for lab, b in zip(s.labels.tolist(), s.boxes.tolist())}
        assert len(got) == len(s.labels) == len(truth[i])
        assert got == truth[i]
    assert [w["reason"] for w in a.warnings] == [
        "left out 1 object(s) of classes not in class_names: 'wall' x1"
    ]


def test_nyu_mat_label_shape_mismatch_refused_in_discover(tmp_path):
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    z = np.zeros((2, H, W))
    write_nyu_mat(mat, z + 1.0, np.zeros((2, H, W, 3)), z, z, ["chair"])
    with h5py.File(mat, "r+") as f:
        del f["labels"]
        f["labels"] = np.zeros((2, H, W), "<u2")  # image order: not transposed
    with pytest.raises(DataError, match=r"labeled\.mat: dataset 'labels' has shape \(2, 24, 34\)"):
        DepthAdapter(tmp_path, {}).discover()
