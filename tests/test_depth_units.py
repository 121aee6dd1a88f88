"""Independence units of the depth layouts: NYU v2 rooms from the ``scenes`` cell array, SUN
RGB-D recordings from the release tree, and ``group_by`` on the other layouts. Files are written
by the formats' own tools (h5py in MATLAB v7.3's layout, Pillow PNGs, VOC XML and COCO JSON);
each test checks that a group never lies in two splits over enough groups that a per-frame
split would have split one of them with near certainty."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from dsod_core.data.store import StoreReader
from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.depth import DepthAdapter
from modalities.depth.nyu import room
from modalities.depth.sunrgbd import recording
from pipelines.prepare import prepare
from tests.test_depth_formats import NAMES, POLYS, index_json, mm_map, write_nyu_mat, write_scene

H, W = 6, 8


def _splits_by_group(refs) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for ref in refs:
        out[ref.meta["group"]].add(ref.split)
    return out


def _assert_whole(refs, n_groups: int) -> None:
    """Every group in one split, the expected number of groups, more than one split used."""
    by_group = _splits_by_group(refs)
    assert len(by_group) == n_groups
    assert all(len(s) == 1 for s in by_group.values()), by_group
    assert len({r.split for r in refs}) > 1


# --- NYU Depth v2 --------------------------------------------------------------------------
def _scenes(n_rooms: int) -> list[str]:
    """Two frames per recording, rooms 0, 3, 6, ... recorded twice (a and b)."""
    out = []
    for k in range(n_rooms):
        kind = ("kitchen", "living_room", "bedroom")[k % 3]
        tags = ("a", "b") if k % 3 == 0 else ("",)
        out += [f"{kind}_{k:04d}{t}" for t in tags for _ in range(2)]
    return out


def write_nyu(root: Path, scenes: list[str] | None, n: int | None = None) -> Path:
    """A labelled .mat of ``len(scenes)`` frames with the ``scenes`` cell array as MATLAB
    v7.3 writes it ([1, N] object references into ``#refs#``, uint16 char arrays)."""
    n = len(scenes) if scenes is not None else n
    rng = np.random.default_rng(0)
    depths = rng.uniform(0.5, 4.0, (n, H, W))
    labels = np.zeros((n, H, W), np.int64)
    labels[:, 1:3, 2:5] = 1
    inst = (labels > 0).astype(np.int64)
    images = rng.integers(0, 256, (n, H, W, 3))
    path = root / "nyu_depth_v2_labeled.mat"
    root.mkdir(parents=True, exist_ok=True)
    write_nyu_mat(path, depths, images, labels, inst, ["chair"])
    if scenes is not None:
        with h5py.File(path, "r+") as f:
            refs = []
            for i, name in enumerate(scenes):
                ds = f["#refs#"].create_dataset(f"s{i}", data=np.array([[ord(c)] for c in name]))
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                refs.append(ds.ref)
            ds = f.create_dataset("scenes", data=np.array([refs], dtype=h5py.ref_dtype))
            ds.attrs["MATLAB_class"] = np.bytes_("cell")
    return path


def test_nyu_room_strips_the_recording_letter():
    assert room("kitchen_0028a") == room("kitchen_0028b") == "kitchen_0028"
    assert room("living_room_0050") == "living_room_0050"
    assert room("office_kitchen_0001c") == "office_kitchen_0001"
    assert room("study_room_12a") == "study_room_12a"  # not 4 digits: kept as written


def test_nyu_frames_grouped_by_room_and_split_whole(tmp_path):
    scenes = _scenes(40)
    write_nyu(tmp_path, scenes)
    a = DepthAdapter(
        tmp_path, {"class_names": ["chair"], "val_fraction": 0.3, "test_fraction": 0.3}
    )
    refs = a.discover()
    assert len(refs) == len(scenes) == 108
    assert [r.meta["group"] for r in refs] == [room(s) for s in scenes]
    assert refs[0].meta["group"] == "kitchen_0000"  # kitchen_0000a and ...b: one room
    _assert_whole(refs, 40)
    # the samples carry it: Sample.unit is the room, not the .mat every frame comes from
    for ref in refs[:8]:
        (s,) = a.read(ref)
        assert s.group == s.unit == room(scenes[int(ref.ref_id[4:])])
        assert s.source.endswith(".mat")


def test_nyu_group_by_folder_keeps_recordings_apart_and_regex_takes_the_kind(tmp_path):
    scenes = _scenes(40)
    write_nyu(tmp_path, scenes)
    a = DepthAdapter(tmp_path, {"group_by": "folder"})
    refs = a.discover()
    assert [r.meta["group"] for r in refs] == scenes  # kitchen_0000a, kitchen_0000b apart
    _assert_whole(refs, len(set(scenes)))
    b = DepthAdapter(tmp_path, {"group_by": r"^([a-z_]+?)_\d{4}"})
    kinds = _splits_by_group(b.discover())
    assert set(kinds) == {"kitchen", "living_room", "bedroom"}
    assert all(len(s) == 1 for s in kinds.values())


def test_nyu_group_by_not_matching_is_refused_naming_the_file(tmp_path):
    write_nyu(tmp_path, _scenes(3))
    a = DepthAdapter(tmp_path, {"group_by": r"^(bathroom)_"})
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat.*does not match.*kitchen"):
        a.discover()
    # skip mode: the frames of no group are skipped, recorded, the others kept
    log = PrepareLog(on_error="skip")
    b = DepthAdapter(tmp_path, {"group_by": r"^(kitchen)_"}, log=log)
    refs = b.discover()
    assert {r.meta["group"] for r in refs} == {"kitchen"} and len(refs) == 4
    assert len(log.skipped) == len(_scenes(3)) - 4


def test_nyu_without_scenes_every_frame_its_own_unit(tmp_path):
    write_nyu(tmp_path, None, n=5)
    a = DepthAdapter(tmp_path, {})
    refs = a.discover()
    assert [r.meta["group"] for r in refs] == [f"nyu_{i:04d}" for i in range(5)]
    assert a.log.counts["nyu_frames_without_scene"] == 5


def test_nyu_scenes_of_wrong_length_refused(tmp_path):
    path = write_nyu(tmp_path, _scenes(3))
    with h5py.File(path, "r+") as f:
        refs = f["scenes"][()]
        del f["scenes"]
        f.create_dataset("scenes", data=refs[:, :-1], dtype=h5py.ref_dtype)
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat.*'scenes' names 7 frames"):
        DepthAdapter(tmp_path, {}).discover()


def _nyu_entry(root: Path, **adapter) -> dict:
    return {
        "modality": "depth",
        "root": str(root),
        "adapter": {"class_names": ["chair"], **adapter},
    }


def test_nyu_prepare_report_counts_rooms_and_refuses_a_list_splitting_a_room(tmp_path):
    scenes = _scenes(12)
    write_nyu(tmp_path / "d", scenes)
    out = tmp_path / "out"
    entry = _nyu_entry(tmp_path / "d", val_fraction=0.3, test_fraction=0.3)
    report = prepare("d", entry, out / "d.h5", out / "d.report.json", compression=None)
    units = report["units"]
    assert units["total"] == 12 and units["straddling"] == 0
    assert units["train"] + units["val"] + units["test"] == 12
    # the store keeps the room: training subsets and the bootstrap see 12 units, not one .mat
    reader = StoreReader(out / "d.h5")
    keys = reader.unit_keys(range(len(scenes)))
    assert sorted(set(keys)) == sorted({room(s) for s in scenes})
    assert len(set(reader.sources(range(len(scenes))))) == 1
    # official-style lists (1-based indices) that put the two frames of a room apart: kept as
    # listed, refused by the prepare stage's straddle check
    lists = tmp_path / "d" / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    n = len(scenes)
    (lists / "train.txt").write_text("\n".join(str(i) for i in range(1, n)) + "\n")
    (lists / "test.txt").write_text(f"{n}\n")
    a = DepthAdapter(tmp_path / "d", {"class_names": ["chair"]})
    refs = a.discover()
    assert refs[-1].split == "test" and refs[-2].split == "train"  # not moved
    assert refs[-1].meta["group"] == refs[-2].meta["group"] == room(scenes[-1])
    with pytest.raises(DataError, match=r"independence unit.*more than one split"):
        prepare("d", _nyu_entry(tmp_path / "d"), out / "e.h5", out / "e.report.json")


def test_unlisted_frames_join_their_room_split(tmp_path):
    scenes = _scenes(6)
    write_nyu(tmp_path, scenes)
    lists = tmp_path / "ImageSets" / "Main"
    lists.mkdir(parents=True)
    (lists / "test.txt").write_text("nyu_0000\n")  # one frame of kitchen_0000 (4 frames)
    a = DepthAdapter(tmp_path, {"unlisted": "hash", "test_fraction": 0.0, "val_fraction": 0.0})
    refs = a.discover()
    by_group = _splits_by_group(refs)
    assert by_group["kitchen_0000"] == {"test"}  # the unlisted 3 follow the listed one
    assert all(s == {"train"} for g, s in by_group.items() if g != "kitchen_0000")


# --- SUN RGB-D -----------------------------------------------------------------------------
def test_sunrgbd_recording_rule():
    # every scan of one SUN3D place (d507_1, d507_2) shows the same room: one unit
    for scan in ("d507_1", "d507_2"):
        assert recording(f"SUNRGBD/xtion/sun3ddata/mit_32_d507/{scan}/0000103-000004295641") == (
            "SUNRGBD/xtion/sun3ddata/mit_32_d507"
        )
    assert recording(
        "kv2/kinect2data/000002_2014-05-26_14-23-37_260595134347_rgbf000103-resize"
    ) == ("kv2/kinect2data/2014-05-26_14-23-37_260595134347")
    for own in ("kv1/NYUdata/NYU0001", "realsense/lg/2014_10_24-18_13_55-1311000073", "x"):
        assert recording(own) == own
    assert recording("xtion/sun3ddata/mit_32_d507") == "xtion/sun3ddata/mit_32_d507"
    assert recording("xtion/sun3ddata") == "xtion/sun3ddata"


def _sun_tree(root: Path) -> dict[str, str]:
    """Scene folder -> expected group: 12 SUN3D sequences of 6 places (two scans each: the
    place is the unit) and 6 Kinect v2 sessions of 2 frames each, 6 NYU frames (their own
    units)."""
    expected = {}
    for k in range(12):
        seq = f"xtion/sun3ddata/place_{k // 2}/seq_{k}"
        for j in range(2):
            expected[f"{seq}/{j:07d}-000000{k}{j}"] = f"xtion/sun3ddata/place_{k // 2}"
    for k in range(6):
        for j in range(2):
            session = f"2014-05-2{k}_14-23-37_2605951343{k}"
            rel = f"kv2/kinect2data/{k * 2 + j:06d}_{session}_rgbf{j:06d}-resize"
            expected[rel] = f"kv2/kinect2data/{session}"
    for k in range(6):
        expected[f"kv1/NYUdata/NYU{k + 1:04d}"] = f"kv1/NYUdata/NYU{k + 1:04d}"
    mm = mm_map(0)
    for rel in expected:
        write_scene(root / rel, mm, index_json(POLYS, NAMES), rgb=False)
    return expected


def test_sunrgbd_frames_grouped_by_recording(tmp_path):
    expected = _sun_tree(tmp_path)
    a = DepthAdapter(tmp_path, {"layout": "sunrgbd", "val_fraction": 0.3, "test_fraction": 0.3})
    refs = a.discover()
    assert {r.ref_id: r.meta["group"] for r in refs} == expected
    _assert_whole(refs, 18)  # 6 places, 6 Kinect v2 sessions, 6 NYU frames
    (s,) = a.read(refs[0])
    assert s.group == expected[refs[0].ref_id]


def test_sunrgbd_group_by_overrides_and_refuses_a_path_it_does_not_match(tmp_path):
    expected = _sun_tree(tmp_path)
    a = DepthAdapter(tmp_path, {"layout": "sunrgbd", "group_by": "folder:2"})
    refs = a.discover()
    assert {r.meta["group"] for r in refs} == {
        "xtion/sun3ddata",
        "kv2/kinect2data",
        "kv1/NYUdata",
    }
    assert len(refs) == len(expected)
    b = DepthAdapter(tmp_path, {"layout": "sunrgbd", "group_by": r"sun3ddata/(place_\d+)/"})
    with pytest.raises(DataError, match=r"kv1/NYUdata/NYU0001.*does not match"):
        b.discover()


# --- VOC, COCO, collection: group_by on the path -------------------------------------------
def _depth_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mm = np.full((H, W), 1500, np.uint16)
    Image.frombytes("I;16", (W, H), mm.astype("<u2").tobytes()).save(path)


def _voc(stem: str) -> str:
    return (
        f"<annotation><filename>{stem}.png</filename><size><width>{W}</width>"
        f"<height>{H}</height><depth>1</depth></size><object><name>box</name><bndbox>"
        "<xmin>2</xmin><ymin>2</ymin><xmax>5</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )


def _voc_tree(root: Path, n_seq: int = 30, per: int = 3) -> list[str]:
    stems = [f"seq{k:02d}_{j:04d}" for k in range(n_seq) for j in range(per)]
    (root / "Annotations").mkdir(parents=True)
    for stem in stems:
        _depth_png(root / "depth" / f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(_voc(stem))
    return stems


def test_voc_group_by_regex_keeps_sequences_whole(tmp_path):
    stems = _voc_tree(tmp_path)
    plain = DepthAdapter(tmp_path, {"layout": "voc"}).discover()
    assert all(r.meta["group"] is None for r in plain)  # default: every frame its own unit
    a = DepthAdapter(tmp_path, {"layout": "voc", "group_by": r"(seq\d+)_"})
    refs = a.discover()
    assert len(refs) == len(stems)
    assert refs[0].meta["group"] == "seq00"
    _assert_whole(refs, 30)
    (s,) = a.read(refs[0])
    assert s.unit == "seq00"
    # a frame the rule does not match: refused naming its XML, or skipped
    (tmp_path / "Annotations" / "odd.xml").write_text(_voc("odd"))
    _depth_png(tmp_path / "depth" / "odd.png")
    with pytest.raises(DataError, match=r"Annotations/odd\.xml.*does not match"):
        DepthAdapter(tmp_path, {"layout": "voc", "group_by": r"(seq\d+)_"}).discover()
    log = PrepareLog(on_error="skip")
    kept = DepthAdapter(tmp_path, {"layout": "voc", "group_by": r"(seq\d+)_"}, log=log)
    assert len(kept.discover()) == len(stems)
    assert [s["file"].endswith("odd.xml") for s in log.skipped] == [True]


def test_coco_group_by_folder_of_file_name(tmp_path):
    images, anns = [], []
    for k in range(30):
        for j in range(3):
            stem = f"s{k:02d}_{j:04d}"
            _depth_png(tmp_path / "depth" / f"{stem}.png")
            iid = len(images) + 1
            images.append(
                {"id": iid, "file_name": f"seq_{k:02d}/{stem}.png", "width": W, "height": H}
            )
            anns.append(
                {"id": iid, "image_id": iid, "category_id": 1, "bbox": [1, 1, 3, 2], "iscrowd": 0}
            )
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "box"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    a = DepthAdapter(tmp_path, {"layout": "coco", "group_by": "folder"})
    refs = a.discover()
    assert refs[0].meta["group"] == "seq_00" and len(refs) == 90
    _assert_whole(refs, 30)


def test_collection_group_by_folder_of_the_depth_map(tmp_path):
    for k in range(30):
        for j in range(3):
            _depth_png(tmp_path / "depth" / f"seq_{k:02d}" / f"f{j}.png")
    a = DepthAdapter(
        tmp_path,
        {"layout": "collection", "labels": "none", "group_by": "folder", "class_names": ["box"]},
    )
    refs = a.discover()
    assert refs[0].meta["group"] == "depth/seq_00" and len(refs) == 90
    _assert_whole(refs, 30)
    (s,) = a.read(refs[0])
    assert s.group == "depth/seq_00"


@pytest.mark.parametrize(
    ("spec", "why"),
    [("folder:0", "N >= 1"), ("(unclosed", "not a valid regular expression"), ("  ", "must be")],
)
def test_group_by_param_checked(tmp_path, spec, why):
    with pytest.raises(ConfigError, match=rf"group_by.*{why}"):
        DepthAdapter(tmp_path, {"group_by": spec})
