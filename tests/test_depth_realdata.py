"""Depth frames with labels as datasets ship them: VOC as labelImg writes it, COCO JSON, YOLO txt
and masks through the shared labelled-image layer (``layout: collection``), label image names
paired with depth maps (and colour images) by stem, explicit split files for every layout,
background frames counted, and a real TUM RGB-D depth frame (tests/data/depth_real)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import DataError
from modalities.depth import DepthAdapter
from tests.test_depth import write_nyu
from tests.test_depth_formats import K, index_json, write_scene

REAL = Path(__file__).parent / "data" / "depth_real"
W, H = 32, 24


def png16(path: Path, mm: int | np.ndarray = 1500) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((H, W), mm, np.uint16) if np.isscalar(mm) else np.asarray(mm, np.uint16)
    Image.fromarray(arr).save(path)  # Pillow writes mode I;16: a 16-bit grey PNG


def labelimg_xml(filename: str, objects, size=(W, H), folder="depth") -> str:
    """A VOC file as labelImg writes it (``<path>``, ``<source>``, ``<segmented>``...); an
    object given without a box is written without ``<bndbox>`` (a point/tag annotation)."""
    parts = [
        "<annotation>",
        f"\t<folder>{folder}</folder>",
        f"\t<filename>{filename}</filename>",
        f"\t<path>C:\\Users\\me\\{folder}\\{filename}</path>",
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>",
        f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>"
        "\n\t\t<depth>1</depth>\n\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for name, box in objects:
        parts += ["\t<object>", f"\t\t<name>{name}</name>", "\t\t<pose>Unspecified</pose>"]
        parts += ["\t\t<truncated>0</truncated>", "\t\t<difficult>0</difficult>"]
        if box is not None:
            x1, y1, x2, y2 = box
            parts.append(
                f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
                f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>"
            )
        parts.append("\t</object>")
    return "\n".join([*parts, "</annotation>"]) + "\n"


def reasons(adapter) -> list[str]:
    return [w["reason"] for w in adapter.warnings]


def read(adapter, refs) -> dict:
    return {r.ref_id: next(iter(adapter.read(r))) for r in refs}


# --- 1. VOC as labelImg writes it -----------------------------------------------------------
@pytest.mark.parametrize("layout", ["voc", "collection"])
def test_labelimg_voc_quirks(tmp_path, layout):
    """<filename> without extension resolved by stem, <object> without <bndbox> counted and
    warned, <size> disagreeing with the depth map a warning (the map wins, boxes clipped),
    an XML without boxes a background frame (counted)."""
    for stem in ("frame.0001", "frame.0002", "frame.0003"):
        png16(tmp_path / "depth" / f"{stem}.png")
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "frame.0001.xml").write_text(
        labelimg_xml("frame.0001", [("chair", (3, 4, 10, 12)), ("chair", None)])
    )
    (ann / "frame.0002.xml").write_text(
        labelimg_xml("frame.0002.jpg", [("table", (20, 5, 40, 30))], size=(64, 48))
    )
    (ann / "frame.0003.xml").write_text(labelimg_xml("frame.0003.png", []))
    a = DepthAdapter(tmp_path, {"layout": layout, "test_fraction": 0.0, "val_fraction": 0.0})
    refs = a.discover()
    assert sorted(r.ref_id for r in refs) == ["frame.0001", "frame.0002", "frame.0003"]
    assert a.class_names == ["chair", "table"]
    samples = read(a, refs)
    np.testing.assert_array_equal(samples["frame.0001"].boxes, [[2, 3, 10, 12]])
    np.testing.assert_array_equal(samples["frame.0002"].boxes, [[19, 4, 32, 24]])  # clipped
    assert samples["frame.0003"].boxes.shape == (0, 4)
    text = reasons(a)
    assert any("1 VOC object(s) without a <bndbox> ignored" in r for r in text)
    assert a.log.counts["no_box_objects"] == 1
    (size,) = [w for w in a.warnings if "declares image size" in w["reason"]]
    assert "64x48 but the image is 32x24" in size["reason"] and size["sample"] == "frame.0002"
    assert a.log.counts["background_images"] == 1  # counted, not warned (ordinary negatives)
    assert not any("background" in r for r in text)


def test_voc_layout_counts_depth_maps_without_xml(tmp_path):
    png16(tmp_path / "depth" / "a.png")
    png16(tmp_path / "depth" / "b.png")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(labelimg_xml("a.png", [("box", (1, 1, 5, 5))]))
    a = DepthAdapter(tmp_path, {})
    assert [r.ref_id for r in a.discover()] == ["a"]
    assert a.log.counts["no_annotation_file"] == 1
    # the collection layout reads it as a background frame instead
    c = DepthAdapter(tmp_path, {"layout": "collection"})
    assert sorted(r.ref_id for r in c.discover()) == ["a", "b"]
    assert c.log.counts["background_images"] == 1


# --- 2. COCO with the shared quirks, paired by stem ----------------------------------------
def coco(images, cats, anns) -> dict:
    return {"images": images, "categories": cats, "annotations": anns}


def test_coco_collection_quirks_and_pairing(tmp_path):
    """Labels drawn on the colour images (file_name frame_0001.jpg) pair with the depth maps
    (a .png and a .npy) and the colour images by stem; categories matched by name across two
    files with different ids; class_map drops one; crowd-only file read as objects; an
    annotation of an unlisted image id skipped and counted; an image without annotations a
    background frame."""
    png16(tmp_path / "depth" / "frame_0001.png")
    np.save(tmp_path / "depth" / "frame_0002.npy", np.full((H, W), 1.5, np.float32))
    png16(tmp_path / "depth" / "frame_0003.png")
    (tmp_path / "rgb").mkdir()
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "rgb" / "frame_0001.jpg")
    img = lambda i, n: {"id": i, "file_name": n, "width": W, "height": H}  # noqa: E731
    train = coco(
        [img(1, "frame_0001.jpg"), img(2, "frame_0002.jpg")],
        [{"id": 1, "name": "chair"}, {"id": 2, "name": "person"}],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 8, 9], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 4, 4], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 4, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ],
    )
    val = coco(
        [img(7, "frame_0003.jpg"), img(8, "frame_0004.jpg")],
        [{"id": 5, "name": "chair"}],  # same class, another id
        [{"id": 9, "image_id": 7, "category_id": 5, "bbox": [4, 4, 10, 10], "iscrowd": 1}],
    )
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "val.json").write_text(json.dumps(val))
    png16(tmp_path / "depth" / "frame_0004.png")
    params = {
        "layout": "collection",
        "labels": "coco",
        "coco_json": {"train": "train.json", "val": "val.json"},
        "class_map": {"person": None},
        "encoding": "rgbd",
    }
    a = DepthAdapter(tmp_path, params)
    refs = {r.ref_id: r for r in a.discover()}
    assert {k: r.split for k, r in refs.items()} == {
        "frame_0001": "train", "frame_0002": "train", "frame_0003": "val", "frame_0004": "val"
    }  # fmt: skip
    assert a.class_names == ["chair"]
    assert refs["frame_0001"].paths["rgb"] == tmp_path / "rgb" / "frame_0001.jpg"
    assert refs["frame_0002"].paths["depth"].suffix == ".npy"
    counts = a.log.counts
    assert counts["coco_unmatched"] == 1 and counts["class_map_dropped"] == 1
    assert counts["crowd_as_objects"] == 1 and counts["background_images"] == 1
    s = next(iter(a.read(refs["frame_0001"])))
    np.testing.assert_array_equal(s.boxes, [[2, 3, 10, 12]])
    assert s.image.shape[0] == 4  # colour paired: rgbd
    b = DepthAdapter(tmp_path, {**params, "encoding": "depth"})
    v = next(iter(b.read({r.ref_id: r for r in b.discover()}["frame_0003"])))
    assert v.crowd.tolist() == [False]  # crowd-only file: read as objects (crowd: auto)
    with pytest.raises(DataError, match="image id 99"):
        DepthAdapter(tmp_path, {**params, "unmatched": "error"}).discover()


# --- 3. YOLO txt and masks ---------------------------------------------------------------------
def test_yolo_and_masks_collections(tmp_path):
    png16(tmp_path / "depth" / "a.png")
    png16(tmp_path / "depth" / "b.png")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (tmp_path / "labels" / "b.txt").write_text("")  # a background frame
    (tmp_path / "classes.txt").write_text("chair\ntable\n")
    a = DepthAdapter(tmp_path, {"layout": "collection", "labels": "yolo"})
    samples = read(a, a.discover())
    assert a.class_names == ["chair", "table"]
    np.testing.assert_allclose(samples["a"].boxes, [[12, 6, 20, 18]])
    assert samples["a"].labels.tolist() == [2] and a.log.counts["background_images"] == 1

    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 3:9] = 1
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    m = DepthAdapter(tmp_path, {"layout": "collection", "labels": "masks", "mask_class": "blob"})
    samples = read(m, m.discover())
    np.testing.assert_array_equal(samples["a"].boxes, [[3, 2, 9, 6]])
    assert samples["b"].boxes.shape == (0, 4) and m.log.counts["background_images"] == 1


# --- 4. explicit split files, every layout -------------------------------------------------------
def voc_tree(root: Path, stems) -> None:
    (root / "Annotations").mkdir(parents=True)
    for s in stems:
        png16(root / "depth" / f"{s}.png")
        (root / "Annotations" / f"{s}.xml").write_text(
            labelimg_xml(f"{s}.png", [("c", (1, 1, 4, 4))])
        )


def lists(root: Path, **splits) -> None:
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, names in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("# ids\n" + "\n".join(names))


@pytest.mark.parametrize("layout", ["voc", "coco", "collection"])
def test_split_files_for_label_layouts(tmp_path, layout):
    voc_tree(tmp_path, ["a", "b", "c", "d"])
    doc = coco(
        [{"id": i, "file_name": f"{s}.png"} for i, s in enumerate("abcd", 1)],
        [{"id": 1, "name": "c"}],
        [],
    )
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    lists(tmp_path, train=["a", "b.png"], test=["depth/c.png"])  # d in no list: left out
    a = DepthAdapter(tmp_path, {"layout": layout, "class_names": ["c"]})
    assert {r.ref_id: r.split for r in a.discover()} == {"a": "train", "b": "train", "c": "test"}
    assert any("in no split list" in r for r in reasons(a))
    # split_files overrides split_dir; the same frame in two lists is refused naming both
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tr.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "mine" / "va.txt").write_text("b.png\n")
    params = {"layout": layout, "split_files": {"train": "mine/tr.txt", "val": "mine/va.txt"}}
    with pytest.raises(DataError) as err:
        DepthAdapter(tmp_path, {**params, "class_names": ["c"]}).discover()
    assert "tr.txt" in str(err.value) and "va.txt" in str(err.value)


def test_split_files_for_nyu_and_sunrgbd(tmp_path):
    n = 3
    d = np.full((n, 6, 8), 2.0, np.float32)
    zeros = np.zeros((n, 6, 8))
    write_nyu(tmp_path / "nyu_depth_v2_labeled.mat", d, zeros, zeros, ["bed"])
    lists(tmp_path, train=["1", "nyu_0001"], test=["3"])  # 1-based index or id
    a = DepthAdapter(tmp_path, {"layout": "nyu"})
    assert {r.ref_id: r.split for r in a.discover()} == {
        "nyu_0000": "train", "nyu_0001": "train", "nyu_0002": "test"
    }  # fmt: skip

    sun = tmp_path / "sun"
    for name in ("s1", "s2"):
        write_scene(sun / "kv1" / name, np.full((6, 8), 1500), index_json([], []))
    lists(sun, val=["kv1/s1"], test=["s2"])
    b = DepthAdapter(sun, {"layout": "sunrgbd"})
    assert {r.ref_id: r.split for r in b.discover()} == {"kv1/s1": "val", "kv1/s2": "test"}
    assert b.log.counts["background_images"] == 2
    assert K  # the scenes carry the intrinsics of test_depth_formats


# --- 5. a real TUM RGB-D frame -----------------------------------------------------------------
def test_real_tum_frame_with_labelimg_voc_and_colour(tmp_path):
    (tmp_path / "depth").mkdir()
    (tmp_path / "rgb").mkdir()
    shutil.copy(REAL / "tum_depth.png", tmp_path / "depth" / "1305031102.160407.png")
    shutil.copy(REAL / "tum_color.png", tmp_path / "rgb" / "1305031102.160407.png")
    (tmp_path / "Annotations").mkdir()
    objects = [("chair", (1, 33, 31, 60)), ("chair", (47, 30, 66, 54)), ("globe", (7, 2, 20, 13))]
    (tmp_path / "Annotations" / "1305031102.160407.xml").write_text(
        labelimg_xml("1305031102.160407", objects, size=(80, 60))  # no extension
    )
    params = {
        "layout": "collection",
        "labels": "voc",
        "depth_unit": "mm",
        "depth_scale": 0.2,  # TUM: metres = value / 5000
        "encoding": "rgbd",
        "validity_channel": True,
        "fx": 65.0, "fy": 65.0, "cx": 40.0, "cy": 30.0,
    }  # fmt: skip
    a = DepthAdapter(tmp_path, params)
    (ref,) = a.discover()
    (s,) = a.read(ref)
    raw = np.asarray(Image.open(REAL / "tum_depth.png"), np.float64)
    measured = raw > 0
    assert 0.15 < 1 - measured.mean() < 0.25  # the sensor's holes
    np.testing.assert_allclose(s.image[3][measured], raw[measured] / 5000, rtol=1e-6)
    assert s.valid.sum() == measured.sum() and s.image[4].sum() == measured.sum()
    assert a.class_names == ["chair", "globe"] and s.labels.tolist() == [1, 1, 2]
    assert not any("declares image size" in r for r in reasons(a))


def test_collection_params_pick_the_collection_layout_or_are_refused():
    from dsod_core.errors import ConfigError
    from modalities.depth.adapter import DepthAdapter

    assert DepthAdapter(".", {"labels": "yolo"})._resolve_layout() == "collection"
    with pytest.raises(
        ConfigError, match="'labels': applies to layout: collection, not layout: voc"
    ):
        DepthAdapter(".", {"layout": "voc", "labels": "yolo"})
