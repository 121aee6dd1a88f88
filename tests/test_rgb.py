"""The RGB adapter: VOC and COCO trees written by hand to the formats' specs, read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import ConfigError, DataError
from modalities import get_adapter
from modalities.base import PrepareLog
from modalities.rgb import (
    BOX_TOLERANCE_PX,
    VOC_CLASSES,
    RGBAdapter,
    RGBParams,
    from_coco_results,
    parse_voc_xml,
    to_coco_results,
    voc_xml,
)
from modalities.rgb.demo import DEMO_COLOURS, DEMO_PALETTES

# --- writers of the native formats (independent of the adapter) -----------------------------


def _rgb_png(path: Path, w: int, h: int, seed: int) -> np.ndarray:
    """A random RGB PNG (lossless, so pixel values can be compared exactly)."""
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return arr


def _voc_xml(path: Path, filename: str, size: tuple[int, int] | None, objects: list) -> None:
    """objects: (name, difficult, (xmin, ymin, xmax, ymax)) in VOC 1-based inclusive pixels."""
    body = [f"<annotation><folder>X</folder><filename>{filename}</filename>"]
    if size:
        body.append(
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        )
    for name, difficult, (x1, y1, x2, y2) in objects:
        body.append(
            f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>"
            # a person-layout part: its box must not be taken for the object's
            "<part><name>head</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>"
            "<ymax>2</ymax></bndbox></part></object>"
        )
    body.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body))


def _voc_image(
    root: Path,
    year: str,
    image_id: str,
    objects: list,
    w=20,
    h=16,
    seed=0,
    filename: str | None = None,
) -> np.ndarray:
    arr = _rgb_png(root / year / "JPEGImages" / f"{image_id}.png", w, h, seed)
    _voc_xml(
        root / year / "Annotations" / f"{image_id}.xml",
        filename or f"{image_id}.png",
        (w, h),
        objects,
    )
    return arr


def _voc_list(root: Path, year: str, name: str, ids: list[str]) -> None:
    path = root / year / "ImageSets" / "Main" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _random_voc_objects(rng: np.random.Generator, n: int, w: int, h: int) -> list:
    objs = []
    for _ in range(n):
        x1, x2 = sorted(rng.integers(1, w + 1, 2))
        y1, y2 = sorted(rng.integers(1, h + 1, 2))
        objs.append(
            (
                VOC_CLASSES[rng.integers(20)],
                bool(rng.random() < 0.4),
                (int(x1), int(y1), int(x2), int(y2)),
            )
        )
    return objs


def _expected(objs: list, classes=VOC_CLASSES, keep_difficult=True):
    """Reference conversion, written out: 1-based inclusive -> continuous 0-based."""
    boxes, labels, diff = [], [], []
    for name, difficult, (x1, y1, x2, y2) in objs:
        if difficult and not keep_difficult:
            continue
        boxes.append([x1 - 1, y1 - 1, x2, y2])
        labels.append(list(classes).index(name) + 1)
        diff.append(difficult)
    return (
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(labels, np.int64),
        np.array(diff, bool),
    )


def _read_all(adapter) -> dict:
    out = {}
    for ref in adapter.discover():
        for s in adapter.read(ref):
            s.validate(
                num_channels=len(adapter.channel_names), num_classes=len(adapter.class_names)
            )
            out[s.sample_id] = s
    return out


@pytest.fixture
def voc_tree(tmp_path):
    """VOCdevkit with VOC2007 (trainval + test) and VOC2012 (trainval)."""
    root = tmp_path / "VOCdevkit"
    rng = np.random.default_rng(3)
    truth = {}
    objs = [
        ("dog", True, (3, 2, 12, 9)),
        ("person", False, (1, 1, 20, 16)),
        ("tvmonitor", False, (5, 5, 5, 5)),
    ]  # full image; a 1-px box
    truth["VOC2007/000001"] = (objs, _voc_image(root, "VOC2007", "000001", objs, seed=1))
    truth["VOC2007/000002"] = ([], _voc_image(root, "VOC2007", "000002", [], seed=2))
    objs = _random_voc_objects(rng, 5, 20, 16)
    truth["VOC2007/000003"] = (objs, _voc_image(root, "VOC2007", "000003", objs, seed=3))
    objs = _random_voc_objects(rng, 4, 24, 12)
    truth["VOC2012/2008_000001"] = (
        objs,
        _voc_image(root, "VOC2012", "2008_000001", objs, w=24, h=12, seed=4),
    )
    _voc_list(root, "VOC2007", "trainval", ["000001", "000002"])
    _voc_list(root, "VOC2007", "test", ["000003"])
    _voc_list(root, "VOC2012", "trainval", ["2008_000001"])
    params = {
        "years": ["VOC2007", "VOC2012"],
        "train_sets": ["trainval"],
        "test_sets": ["VOC2007/test"],
    }
    return root, params, truth


# --- VOC ------------------------------------------------------------------------------------


def test_registered_and_channels():
    assert get_adapter("rgb") is RGBAdapter
    a = RGBAdapter("/nonexistent", {})
    assert a.channel_names == ["red", "green", "blue"]
    assert a.class_names == list(VOC_CLASSES) and len(a.class_names) == 20
    assert a.class_names[0] == "aeroplane" and a.class_names[-1] == "tvmonitor"


def test_voc_07_12_boxes_labels_difficult_splits(voc_tree):
    root, params, truth = voc_tree
    samples = _read_all(RGBAdapter(root, params))
    assert set(samples) == set(truth)
    splits = {k: s.split for k, s in samples.items()}
    assert splits == {
        "VOC2007/000001": "train",
        "VOC2007/000002": "train",
        "VOC2007/000003": "test",
        "VOC2012/2008_000001": "train",
    }
    for key, (objs, pixels) in truth.items():
        s = samples[key]
        boxes, labels, diff = _expected(objs)
        np.testing.assert_array_equal(s.boxes, boxes)
        np.testing.assert_array_equal(s.labels, labels)
        np.testing.assert_array_equal(s.difficult, diff)
        assert s.crowd.shape == (len(labels),) and not s.crowd.any()  # VOC has no crowd
        # 8-bit RGB / 255, channel-first, no other scaling
        np.testing.assert_array_equal(s.image, pixels.transpose(2, 0, 1).astype(np.float32) / 255)
        np.testing.assert_array_equal(RGBAdapter(root, params).render(s.image), pixels)
        np.testing.assert_array_equal(s.affine, np.eye(4))
        assert s.meta["image_id"] == key.split("/")[1]
        assert s.source.endswith(f"{key.split('/')[0]}/JPEGImages/{key.split('/')[1]}.png")
    assert samples["VOC2007/000002"].boxes.shape == (0, 4)
    # the hand-checked one: (3,2,12,9) 1-based inclusive covers columns 2..11 0-based
    np.testing.assert_array_equal(samples["VOC2007/000001"].boxes[0], [2, 1, 12, 9])
    np.testing.assert_array_equal(samples["VOC2007/000001"].boxes[2], [4, 4, 5, 5])


def test_voc_drop_difficult_and_unknown_classes(voc_tree, tmp_path):
    root, params, truth = voc_tree
    samples = _read_all(RGBAdapter(root, {**params, "keep_difficult": False}))
    for key, (objs, _) in truth.items():
        boxes, labels, diff = _expected(objs, keep_difficult=False)
        np.testing.assert_array_equal(samples[key].boxes, boxes)
        np.testing.assert_array_equal(samples[key].labels, labels)
        assert not samples[key].difficult.any()

    # A class subset: unknown names error by default (naming the XML), or are skipped.
    sub = ["person", "dog"]
    with pytest.raises(
        DataError, match=r"Annotations/0000\d\d\.xml: sample VOC2007/0000\d\d: unknown class"
    ):
        RGBAdapter(root, {**params, "class_names": sub}).discover()
    log = PrepareLog()
    a = RGBAdapter(root, {**params, "class_names": sub, "unknown_class": "skip"}, log=log)
    samples = _read_all(a)
    for key, (objs, _) in truth.items():
        kept = [o for o in objs if o[0] in sub]
        boxes, labels, diff = _expected(kept, classes=sub)
        np.testing.assert_array_equal(samples[key].boxes, boxes)
        np.testing.assert_array_equal(samples[key].labels, labels)
        assert samples[key].meta["skipped_unknown"] == len(objs) - len(kept)
    # each image with skipped objects is noted once (file, sample, reason), nothing skipped
    noted = {w["sample"]: w for w in log.warnings}
    assert a.warnings is log.warnings and not log.skipped
    for key, (objs, _) in truth.items():
        n = sum(o[0] not in sub for o in objs)
        if n:
            assert noted[key]["file"].endswith(f"Annotations/{key.split('/')[1]}.xml")
            assert noted[key]["reason"].startswith(f"{n} object(s) of unknown class")
        else:
            assert key not in noted


def test_voc_set_syntax(voc_tree):
    root, params, _ = voc_tree
    # A plain name is read in every year: VOC2012 has no test list -> the missing list named.
    with pytest.raises(DataError, match=r"VOC2012/ImageSets/Main/test\.txt: image list not found"):
        RGBAdapter(root, {**params, "test_sets": ["test"]}).discover()
    # Year-qualified train list: only VOC2007 trainval.
    refs = RGBAdapter(root, {**params, "train_sets": ["VOC2007/trainval"]}).discover()
    assert sorted(r.ref_id for r in refs) == ["VOC2007/000001", "VOC2007/000002", "VOC2007/000003"]
    # An image in two splits is refused, naming both lists.
    _voc_list(root, "VOC2007", "val", ["000003"])
    with pytest.raises(DataError, match=r"test\.txt.*'000003'.*val\.txt"):
        RGBAdapter(root, {**params, "val_sets": ["VOC2007/val"]}).discover()


def test_voc_root_is_the_year_folder(tmp_path):
    objs = [("cat", False, (2, 3, 7, 8))]
    _voc_image(tmp_path, ".", "a", objs)
    _voc_list(tmp_path, ".", "train", ["a"])
    samples = _read_all(
        RGBAdapter(tmp_path, {"years": ["."], "train_sets": ["train"], "test_sets": []})
    )
    np.testing.assert_array_equal(samples["a"].boxes, [[1, 2, 7, 8]])


def test_voc_filename_falls_back_to_the_devkit_name(tmp_path):
    """<filename> naming a file that is not there: JPEGImages/<id>.jpg, as the devkit loads."""
    arr = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(arr).save(tmp_path / "JPEGImages" / "a.jpg", quality=95)
    _voc_xml(tmp_path / "Annotations" / "a.xml", "IMG_0001.JPG", (20, 16), [])
    _voc_list(tmp_path, ".", "train", ["a"])
    (s,) = _read_all(
        RGBAdapter(tmp_path, {"years": ["."], "train_sets": ["train"], "test_sets": []})
    ).values()
    assert s.source.endswith("JPEGImages/a.jpg") and s.meta["file_name"] == "a.jpg"
    with Image.open(tmp_path / "JPEGImages" / "a.jpg") as im:  # the decoded JPEG, exactly
        np.testing.assert_array_equal(np.round(s.image * 255), np.asarray(im).transpose(2, 0, 1))


def test_voc_box_tolerance_and_size_checks(tmp_path):
    params = {"years": ["."], "train_sets": ["train"], "test_sets": []}
    w, h = 20, 16
    # xmin=0 and xmax=w+1 stick out by exactly the tolerance: clipped to the image
    _voc_image(tmp_path, ".", "a", [("cat", False, (0, 1, w + 1, h))], w=w, h=h)
    _voc_list(tmp_path, ".", "train", ["a"])
    assert BOX_TOLERANCE_PX == 1.0
    (s,) = _read_all(RGBAdapter(tmp_path, params)).values()
    np.testing.assert_array_equal(s.boxes, [[0, 0, w, h]])
    # beyond the tolerance: error naming the XML
    _voc_xml(
        tmp_path / "Annotations" / "a.xml", "a.png", (w, h), [("cat", False, (1, 1, w + 2, 5))]
    )
    a = RGBAdapter(tmp_path, params)
    with pytest.raises(DataError, match=r"Annotations/a\.xml.*outside the 20x16 image"):
        _read_all(a)
    # declared size differs from the image: a warning naming the XML, the image wins and the
    # boxes are still checked against the real image
    _voc_xml(
        tmp_path / "Annotations" / "a.xml", "a.png", (w + 1, h), [("cat", False, (2, 2, 9, 9))]
    )
    a = RGBAdapter(tmp_path, params)
    (s,) = _read_all(a).values()
    assert s.image.shape == (3, h, w) and s.meta["width"] == w
    (warning,) = [x for x in a.log.warnings if "declares image size" in x["reason"]]
    assert warning["file"].endswith("Annotations/a.xml")
    assert "21x16 but the image is 20x16; the image's size is used" in warning["reason"]
    _voc_xml(
        tmp_path / "Annotations" / "a.xml", "a.png", (w + 5, h), [("cat", False, (2, 2, 24, 9))]
    )
    with pytest.raises(DataError, match=r"Annotations/a\.xml.*outside the 20x16 image"):
        _read_all(RGBAdapter(tmp_path, params))


@pytest.mark.parametrize(
    "case",
    [
        "malformed_xml",
        "missing_image",
        "outside",
        "inverted",
        "escape",
        "truncated",
        "bomb",
        "not_a_number",
    ],
)
def test_voc_errors_name_the_file(tmp_path, case):
    params = {"years": ["VOC2007"], "train_sets": ["train"], "test_sets": []}
    root = tmp_path / "devkit"
    year = root / "VOC2007"
    _voc_image(root, "VOC2007", "a", [("cat", False, (2, 2, 9, 9))])
    _voc_list(root, "VOC2007", "train", ["a"])
    xml = year / "Annotations" / "a.xml"
    culprit = xml
    if case == "malformed_xml":
        xml.write_text("<annotation><object><name>cat</name>")
    elif case == "missing_image":
        (year / "JPEGImages" / "a.png").unlink()
    elif case == "outside":
        _voc_xml(xml, "a.png", (20, 16), [("cat", False, (2, 2, 9, 30))])
    elif case == "inverted":
        _voc_xml(xml, "a.png", (20, 16), [("cat", False, (9, 2, 2, 9))])
    elif case == "escape":
        _rgb_png(tmp_path / "outside.png", 20, 16, 0)  # exists, but outside the root
        _voc_xml(xml, "../../../outside.png", (20, 16), [])
    elif case == "truncated":
        jpg = year / "JPEGImages" / "a.jpg"
        arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(arr).save(jpg, quality=95)
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
        _voc_xml(xml, "a.jpg", (64, 64), [])
        culprit = jpg
    elif case == "bomb":
        params["max_pixels"] = 100  # the 20x16 image declares 320 pixels
        culprit = year / "JPEGImages" / "a.png"
    elif case == "not_a_number":
        xml.write_text(xml.read_text().replace("<xmin>2</xmin>", "<xmin>two</xmin>"))
    with pytest.raises(DataError) as info:
        _read_all(RGBAdapter(root, params))
    msg = str(info.value)
    assert str(culprit.relative_to(tmp_path)) in msg, msg
    assert VOC_REASONS[case] in msg, msg
    assert "\n" not in msg


VOC_REASONS = {
    "malformed_xml": "malformed VOC XML",
    "missing_image": "not found",
    "outside": "outside the 20x16 image",
    "inverted": "inverted box",
    "escape": "escapes the dataset root",
    "truncated": "cannot decode image",
    "bomb": "over the limit max_pixels=100",
    "not_a_number": "not a number",
}


def test_voc_image_modes_converted_to_rgb(tmp_path):
    """Grey, palette and RGBA files become RGB (reference conversions written in numpy)."""
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (8, 10), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (8, 10), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 10, 4), dtype=np.uint8)
    (tmp_path / "JPEGImages").mkdir()
    Image.fromarray(grey, "L").save(tmp_path / "JPEGImages" / "g.png")
    p = Image.fromarray(idx, "P")
    p.putpalette(palette.reshape(-1).tolist())
    p.save(tmp_path / "JPEGImages" / "p.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "JPEGImages" / "r.png")
    for i in "gpr":
        _voc_xml(tmp_path / "Annotations" / f"{i}.xml", f"{i}.png", (10, 8), [])
    _voc_list(tmp_path, ".", "train", list("gpr"))
    samples = _read_all(
        RGBAdapter(tmp_path, {"years": ["."], "train_sets": ["train"], "test_sets": []})
    )
    expected = {"g": np.repeat(grey[..., None], 3, 2), "p": palette[idx], "r": rgba[..., :3]}
    for key, ref in expected.items():
        np.testing.assert_array_equal(samples[key].image, ref.transpose(2, 0, 1) / np.float32(255))


def test_bad_params_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="format"):
        RGBAdapter(tmp_path, {"format": "yolo"})
    with pytest.raises(ConfigError, match="unknown rgb adapter param"):
        RGBAdapter(tmp_path, {"sets": ["x"]})
    with pytest.raises(ConfigError, match="VOC2099"):
        RGBAdapter(tmp_path, {"test_sets": ["VOC2099/test"]})
    with pytest.raises(ConfigError, match="max_pixels"):
        RGBAdapter(tmp_path, {"max_pixels": -1})
    with pytest.raises(ConfigError, match="unknown_class"):
        RGBAdapter(tmp_path, {"unknown_class": "ignore"})
    with pytest.raises(ConfigError, match="class_names"):
        RGBAdapter(tmp_path, {"class_names": ["a", "a"]})
    # the old names are refused, pointing at the new ones
    with pytest.raises(ConfigError, match="'classes'; did you mean 'class_names'"):
        RGBAdapter(tmp_path, {"classes": ["a"]})
    with pytest.raises(ConfigError, match="'unknown_classes'; did you mean 'unknown_class'"):
        RGBAdapter(tmp_path, {"unknown_classes": "skip"})
    with pytest.raises(ConfigError, match="image_dirs"):
        RGBAdapter(tmp_path, {"format": "coco", "image_dirs": {"train": "x", "tset": "y"}})
    with pytest.raises(ConfigError, match="image_dirs"):
        RGBAdapter(tmp_path, {"format": "coco", "image_dirs": {"train": "x"}})


# --- COCO -----------------------------------------------------------------------------------


@pytest.fixture
def coco_tree(tmp_path):
    root = tmp_path / "coco"
    cats = [
        {"id": 90, "name": "toothbrush"},
        {"id": 1, "name": "person"},
        {"id": 7, "name": "train"},
    ]  # unsorted, non-contiguous
    rng = np.random.default_rng(11)
    pixels = {}
    images, anns = [], []
    for image_id, (w, h) in {5: (30, 20), 9: (16, 24), 12: (20, 20)}.items():
        pixels[image_id] = _rgb_png(root / "train2017" / f"{image_id:012d}.png", w, h, image_id)
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.png", "width": w, "height": h}
        )
    aid = 0
    for image_id, w, h in [(5, 30, 20), (9, 16, 24)]:  # image 12 has no annotations
        for _ in range(4):
            x, y = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
            bw, bh = rng.uniform(0.5, w - x), rng.uniform(0.5, h - y)
            aid += 1
            anns.append(
                {
                    "id": aid,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 7, 90])),
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": int(rng.random() < 0.3),
                }
            )
    anns.append(
        {
            "id": 99,
            "image_id": 5,
            "category_id": 7,
            "bbox": [1.0, 1.0, 5.0, 4.0],
            "iscrowd": 1,
            "area": 20.0,
        }
    )
    (root / "annotations").mkdir(parents=True)
    train = {"images": images, "annotations": anns, "categories": cats}
    (root / "annotations" / "train.json").write_text(json.dumps(train))
    pixels[3] = _rgb_png(root / "val2017" / "000000000003.png", 12, 10, 3)
    test = {
        "images": [{"id": 3, "file_name": "000000000003.png", "width": 12, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 90, "bbox": [0, 0, 12, 10], "iscrowd": 0}
        ],
        "categories": list(reversed(cats)),
    }
    (root / "annotations" / "test.json").write_text(json.dumps(test))
    params = {
        "format": "coco",
        "train_json": "annotations/train.json",
        "test_json": "annotations/test.json",
        "image_dirs": {"train": "train2017", "test": "val2017"},
    }
    return root, params, train, test, pixels


def test_coco_read(coco_tree):
    root, params, train, test, pixels = coco_tree
    a = RGBAdapter(root, params)
    samples = _read_all(a)
    assert a.class_names == ["person", "train", "toothbrush"]  # sorted by category id
    assert a.label_to_category_id == {1: 1, 2: 7, 3: 90}
    label_of = {1: 1, 7: 2, 90: 3}
    assert set(samples) == {"coco/5", "coco/9", "coco/12", "coco/3"}
    assert samples["coco/3"].split == "test" and samples["coco/5"].split == "train"
    for data in (train, test):
        for img in data["images"]:
            s = samples[f"coco/{img['id']}"]
            mine = [x for x in data["annotations"] if x["image_id"] == img["id"]]
            exp = np.array(
                [
                    [
                        x["bbox"][0],
                        x["bbox"][1],
                        x["bbox"][0] + x["bbox"][2],
                        x["bbox"][1] + x["bbox"][3],
                    ]
                    for x in mine
                ],
                np.float32,
            )
            np.testing.assert_allclose(s.boxes, exp.reshape(-1, 4), rtol=0, atol=1e-5)
            np.testing.assert_array_equal(s.labels, [label_of[x["category_id"]] for x in mine])
            # iscrowd marks the box crowd, never difficult
            np.testing.assert_array_equal(s.crowd, [bool(x["iscrowd"]) for x in mine])
            assert not s.difficult.any()
            np.testing.assert_array_equal(
                s.image, pixels[img["id"]].transpose(2, 0, 1) / np.float32(255)
            )
            assert s.meta["image_id"] == img["id"]
    assert len(samples["coco/12"].boxes) == 0  # kept although unannotated
    assert samples["coco/5"].crowd.sum() >= 1  # the crowd region is there, flagged
    crowd_box = np.array([1.0, 1.0, 6.0, 5.0], np.float32)  # annotation 99, iscrowd: 1
    five = samples["coco/5"]
    at = np.flatnonzero((five.boxes == crowd_box).all(axis=1))
    assert len(at) == 1 and five.crowd[at[0]] and not five.difficult[at[0]]
    assert five.labels[at[0]] == 2  # keeps its class ("train", category 7)

    dropped = _read_all(RGBAdapter(root, {**params, "keep_difficult": False}))
    for sid, s in samples.items():
        np.testing.assert_array_equal(dropped[sid].boxes, s.boxes[~s.crowd])
        np.testing.assert_array_equal(dropped[sid].labels, s.labels[~s.crowd])
        assert not dropped[sid].crowd.any() and not dropped[sid].difficult.any()


def test_coco_crowd_flags_survive_the_store(coco_tree, tmp_path):
    from dsod_core.data.store import StoreReader, StoreWriter

    root, params, *_ = coco_tree
    a = RGBAdapter(root, params)
    samples = _read_all(a)
    path = tmp_path / "coco.h5"
    with StoreWriter(
        path, modality="rgb", class_names=a.class_names, channel_names=a.channel_names
    ) as w:
        for s in samples.values():
            w.add(s)
    r = StoreReader(path)
    got = {r.get(i).sample_id: r.get(i) for i in range(len(r))}
    assert sum(int(s.crowd.sum()) for s in got.values()) >= 1
    for sid, s in samples.items():
        np.testing.assert_array_equal(got[sid].crowd, s.crowd)
        np.testing.assert_array_equal(got[sid].difficult, s.difficult)


def test_coco_results_round_trip_and_pycocotools(coco_tree, tmp_path):
    from pycocotools.coco import COCO

    root, params, train, _, _ = coco_tree
    a = RGBAdapter(root, params)
    refs = a.discover()
    rng = np.random.default_rng(2)
    items, truth = [], {}
    for ref in refs:
        (s,) = a.read(ref)
        n = int(rng.integers(0, 5))
        _, h, w = s.image.shape
        xy = rng.uniform(0, [w / 2, h / 2], (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, [w / 2, h / 2], (n, 2))], 1)
        det = {"boxes": boxes, "scores": rng.uniform(0, 1, n), "labels": rng.integers(1, 4, n)}
        items.append(
            {
                "sample_id": s.sample_id,
                "source": s.source,
                "meta": s.meta,
                "affine": s.affine,
                "detections": det,
            }
        )
        truth[s.meta["image_id"]] = det
    out = tmp_path / "pred"
    written = a.export_predictions(items, out)
    assert {p.name for p in written} >= {"coco_results.json", "categories.json"}
    rows = json.loads((out / "coco_results.json").read_text())
    assert len(rows) == sum(len(d["scores"]) for d in truth.values())
    cat_of = {1: 1, 2: 7, 3: 90}
    for row in rows:  # written by hand: xywh in original pixels, original category ids
        assert row["category_id"] in (1, 7, 90)
    back = from_coco_results(rows, a.label_to_category_id)
    for image_id, det in truth.items():
        if not len(det["scores"]):
            assert image_id not in back
            continue
        np.testing.assert_allclose(back[image_id]["boxes"], det["boxes"], atol=2e-3, rtol=0)
        np.testing.assert_array_equal(back[image_id]["labels"], det["labels"])
        np.testing.assert_allclose(back[image_id]["scores"], det["scores"], atol=1e-5, rtol=0)
        mine = [r for r in rows if r["image_id"] == image_id]
        assert [r["category_id"] for r in mine] == [cat_of[int(v)] for v in det["labels"]]
        b = det["boxes"]
        np.testing.assert_allclose(
            [r["bbox"] for r in mine],
            np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1),
            atol=2e-3,
            rtol=0,
        )
    cats = json.loads((out / "categories.json").read_text())
    assert cats == [
        {"id": 1, "name": "person"},
        {"id": 7, "name": "train"},
        {"id": 90, "name": "toothbrush"},
    ]
    # The file is what pycocotools' loadRes takes against the original ground truth.
    gt = COCO(str(root / "annotations" / "train.json"))
    train_rows = [r for r in rows if r["image_id"] in gt.getImgIds()]
    if train_rows:
        dt = gt.loadRes(train_rows)
        assert len(dt.getAnnIds()) == len(train_rows)
    # an affine (stored image at half resolution) maps back to original pixels
    scaled = [
        {
            **items[0],
            "affine": np.diag([2.0, 2.0, 1.0, 1.0]),
            "detections": {"boxes": [[1, 2, 3, 5]], "scores": [0.5], "labels": [3]},
        }
    ]
    (row,) = to_coco_results(scaled, a.label_to_category_id)
    assert row["bbox"] == [2.0, 4.0, 4.0, 6.0] and row["category_id"] == 90


def test_voc_export_devkit_files(voc_tree, tmp_path):
    root, params, _ = voc_tree
    a = RGBAdapter(root, params)
    (s,) = a.read(next(r for r in a.discover() if r.ref_id == "VOC2007/000003"))
    det = {
        "boxes": np.array([[0.0, 1.0, 5.5, 7.0], [2.0, 2.0, 4.0, 4.0]]),
        "scores": np.array([0.9, 0.25]),
        "labels": np.array([12, 15]),
    }
    item = {
        "sample_id": s.sample_id,
        "source": s.source,
        "meta": s.meta,
        "affine": s.affine,
        "detections": det,
        "split": "test",
    }
    a.export_predictions([item], tmp_path)
    dog = (tmp_path / "comp4_det_test_dog.txt").read_text().split()
    assert dog[0] == "000003" and float(dog[1]) == pytest.approx(0.9)
    # back to the devkit's 1-based inclusive convention
    np.testing.assert_allclose([float(v) for v in dog[2:]], [1.0, 2.0, 5.5, 7.0])
    rows = json.loads((tmp_path / "coco_results.json").read_text())
    assert [r["category_id"] for r in rows] == [12, 15]  # VOC: the label itself
    assert rows[0]["image_id"] == "000003" and rows[0]["bbox"] == [0.0, 1.0, 5.5, 6.0]


@pytest.mark.parametrize(
    "case",
    [
        "malformed_json",
        "missing_image",
        "outside",
        "inverted",
        "dotdot",
        "absolute",
        "unknown_category",
        "unknown_image",
        "no_images_key",
    ],
)
def test_coco_errors_name_the_file(coco_tree, tmp_path, case):
    root, params, train, _, _ = coco_tree
    path = root / "annotations" / "train.json"
    culprit = path
    if case == "malformed_json":
        path.write_text(json.dumps(train)[:-10])
    elif case == "missing_image":
        (root / "train2017" / "000000000009.png").unlink()
    elif case == "outside":
        train["annotations"][0]["bbox"] = [20.0, 5.0, 12.0, 3.0]  # x2 = 32 > 30 + 1
        train["annotations"][0]["image_id"] = 5
    elif case == "inverted":
        train["annotations"][0]["bbox"] = [5.0, 5.0, -2.0, 3.0]
    elif case == "dotdot":
        _rgb_png(tmp_path / "secret.png", 30, 20, 0)
        train["images"][0]["file_name"] = "../../secret.png"
    elif case == "absolute":
        _rgb_png(tmp_path / "secret.png", 30, 20, 0)
        train["images"][0]["file_name"] = str(tmp_path / "secret.png")
    elif case == "unknown_category":
        train["annotations"][0]["category_id"] = 2
    elif case == "unknown_image":  # refused with unmatched: error (default skip: counted)
        train["annotations"][0]["image_id"] = 777
        params = {**params, "unmatched": "error"}
    elif case == "no_images_key":
        del train["images"]
    if case != "malformed_json":
        path.write_text(json.dumps(train))
    with pytest.raises(DataError) as info:
        _read_all(RGBAdapter(root, params))
    msg = str(info.value)
    assert str(culprit.relative_to(tmp_path)) in msg, msg
    assert COCO_REASONS[case] in msg, msg


COCO_REASONS = {
    "malformed_json": "malformed COCO JSON",
    "missing_image": "000000000009.png not found",
    "outside": "outside the 30x20 image",
    "inverted": "inverted",
    "dotdot": "escapes the dataset root",
    "absolute": "must be relative",
    "unknown_category": "unknown category id 2",
    "unknown_image": "unknown image id 777",
    "no_images_key": "lacks a 'images' list",
}


def test_coco_classes_param_is_checked(coco_tree):
    root, params, *_ = coco_tree
    with pytest.raises(ConfigError, match="person"):
        RGBAdapter(root, {**params, "class_names": ["train", "person", "toothbrush"]}).discover()
    a = RGBAdapter(root, {**params, "class_names": ["person", "train", "toothbrush"]})
    a.discover()
    assert a.class_names == ["person", "train", "toothbrush"]


# --- demo -----------------------------------------------------------------------------------


def test_demo_reads_back_and_is_consistent(tmp_path):
    params = RGBAdapter.write_demo(tmp_path, num_images=40, image_size=64, seed=1)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        assert (tmp_path / sub).is_dir()
    assert len(list((tmp_path / "JPEGImages").glob("*.jpg"))) == 40
    a = get_adapter("rgb")(tmp_path, params)
    samples = _read_all(a)
    assert a.class_names == ["circle", "square", "triangle"]
    assert len(samples) == 40
    splits = [s.split for s in samples.values()]
    assert splits.count("test") == 6 and splits.count("val") == 6 and splits.count("train") == 28
    counts = np.zeros(4, int)
    colour_ok, colour_checked = 0, 0
    names = list(DEMO_COLOURS)
    palette = np.array([DEMO_COLOURS[n] for n in names], float)
    for s in samples.values():
        assert s.image.shape == (3, 64, 64)
        assert 1 <= len(s.boxes) <= 3
        sides = np.stack([s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1]], 1)
        assert (sides >= 0.3 * 64 - 1).all() and (sides <= 0.55 * 64 + 2).all()
        np.add.at(counts, s.labels, 1)
        # the centre of a visible, non-difficult object shows a colour of its class's palette
        xml = (tmp_path / "Annotations" / f"{s.sample_id}.xml").read_text()
        occluded = [int(v.split("<")[0]) for v in xml.split("<occluded>")[1:]]
        for box, label, diff, occ in zip(s.boxes, s.labels, s.difficult, occluded):
            if diff or occ:
                continue
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            rgb = s.image[:, cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(3, -1).mean(1) * 255
            nearest = names[int(np.argmin(((palette - rgb) ** 2).sum(1)))]
            colour_checked += 1
            colour_ok += nearest in DEMO_PALETTES[a.class_names[label - 1]]
    assert (counts[1:] > 0).all()
    assert colour_checked > 20 and colour_ok >= 0.9 * colour_checked
    # a fresh write with the same seed is identical; another seed differs
    other = tmp_path / "again"
    RGBAdapter.write_demo(other, num_images=40, image_size=64, seed=1)
    assert (other / "Annotations" / "000007.xml").read_text() == (
        tmp_path / "Annotations" / "000007.xml"
    ).read_text()


def test_demo_has_difficult_objects_and_default_size(tmp_path):
    params = RGBAdapter.write_demo(tmp_path, seed=0)  # defaults: 240 images of 96 px
    samples = _read_all(RGBAdapter(tmp_path, params))
    assert len(samples) == 240
    assert all(s.image.shape == (3, 96, 96) for s in samples.values())
    n_diff = sum(int(s.difficult.sum()) for s in samples.values())
    n_obj = sum(len(s.boxes) for s in samples.values())
    assert 0 < n_diff < 0.15 * n_obj
    # difficult objects are the faint ones: their centre is far from every palette colour
    palette = np.array(list(DEMO_COLOURS.values()), float)
    dist = {True: [], False: []}
    for s in samples.values():
        for box, diff in zip(s.boxes, s.difficult):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            rgb = s.image[:, cy, cx] * 255
            dist[bool(diff)].append(np.sqrt(((palette - rgb) ** 2).sum(1)).min())
    assert np.median(dist[True]) > 2 * np.median(dist[False])


def test_val_fraction_moves_train_images_only(tmp_path):
    import hashlib

    params = RGBAdapter.write_demo(tmp_path, num_images=60, image_size=48, seed=2)
    plain = {r.ref_id: r.split for r in RGBAdapter(tmp_path, params).discover()}
    adapter = RGBAdapter(tmp_path, {**params, "val_fraction": 0.5})
    moved = {r.ref_id: r.split for r in adapter.discover()}
    assert set(plain) == set(moved)
    for key, split in plain.items():
        if split != "train":  # the dataset's own val and test lists are kept
            assert moved[key] == split
        else:
            # reference: the stable hash rule of modalities.base.assign_split, written out
            u = int.from_bytes(hashlib.sha256(f"0:{key}".encode()).digest()[:8], "big") / 2**64
            assert moved[key] == ("val" if u < 0.5 else "train")
    n_moved = sum(plain[k] == "train" and v == "val" for k, v in moved.items())
    assert 0.3 * 42 < n_moved < 0.7 * 42  # 42 demo train images, half expected to move
    # the seed param is the hash's seed
    reseeded = {
        r.ref_id: r.split
        for r in RGBAdapter(tmp_path, {**params, "val_fraction": 0.5, "seed": 7}).discover()
    }
    for key, split in plain.items():
        if split == "train":
            u = int.from_bytes(hashlib.sha256(f"7:{key}".encode()).digest()[:8], "big") / 2**64
            assert reseeded[key] == ("val" if u < 0.5 else "train")
    assert reseeded != moved
    # max_pixels given as YAML reads 50e6: a string, accepted as a number
    a = RGBAdapter(tmp_path, {**params, "max_pixels": "50e6"})
    assert a.params.max_pixels == 50e6
    with pytest.raises(ConfigError, match="val_fraction"):
        RGBAdapter(tmp_path, {**params, "val_fraction": 1.0})


# --- the format modules on their own --------------------------------------------------------


def test_parse_voc_xml_plain_data_and_writer_round_trip(tmp_path):
    objects = [
        {"name": "cat", "box": [1.2, 0.0, 7.5, 9.0], "difficult": True, "truncated": True},
        {"name": "a<b&c", "box": [0.0, 3.0, 10.0, 8.0], "occluded": True},
    ]
    path = tmp_path / "x.xml"
    path.write_text(voc_xml("x&y.jpg", 10, 9, objects))
    ann = parse_voc_xml(path)
    assert ann["filename"] == "x&y.jpg" and ann["size"] == [10, 9]
    # written as the covering 1-based inclusive range, read back as continuous edges
    assert [o["box"] for o in ann["objects"]] == [[1.0, 0.0, 8.0, 9.0], [0.0, 3.0, 10.0, 8.0]]
    assert [o["name"] for o in ann["objects"]] == ["cat", "a<b&c"]
    assert [o["difficult"] for o in ann["objects"]] == [True, False]
    assert [o["truncated"] for o in ann["objects"]] == [True, False]
    assert [o["occluded"] for o in ann["objects"]] == [False, True]
    # size 0 ("unknown") and absent <filename>; messages name the shown path
    path.write_text("<annotation><size><width>0</width><height>0</height></size></annotation>")
    assert parse_voc_xml(path) == {"filename": None, "size": None, "objects": [], "no_box": []}
    # an object without <bndbox> (labelImg/CVAT points, tags) is no object, not an error
    path.write_text("<annotation><object><name>cat</name></object></annotation>")
    assert parse_voc_xml(path, shown="shown/x.xml")["no_box"] == ["cat"]
    assert parse_voc_xml(path)["objects"] == []
    path.write_text("<notvoc/>")
    with pytest.raises(DataError, match="expected <annotation>"):
        parse_voc_xml(path)


def test_voc_entity_expansion_refused(tmp_path):
    """A billion-laughs style DTD is refused by defusedxml, as a DataError naming the XML."""
    params = {"years": ["."], "train_sets": ["train"], "test_sets": []}
    _voc_image(tmp_path, ".", "a", [("cat", False, (2, 2, 9, 9))])
    _voc_list(tmp_path, ".", "train", ["a"])
    (tmp_path / "Annotations" / "a.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx">'
        '<!ENTITY y "&x;&x;&x;&x;&x;&x;&x;&x;">]><annotation><filename>&y;</filename>'
        "</annotation>"
    )
    with pytest.raises(DataError, match=r"Annotations/a\.xml: sample a: malformed VOC XML"):
        RGBAdapter(tmp_path, params).discover()


def test_params_dataclass_describes_every_param():
    rows = {r["name"]: r for r in RGBParams.describe()}
    assert {"class_names", "unknown_class", "max_pixels", "val_fraction", "seed"} <= set(rows)
    assert all(r["doc"] for r in rows.values())
    p = RGBParams.parse({"max_pixels": "1e3", "class_names": ["a"]}, owner="rgb")
    assert p.max_pixels == 1000.0 and p.class_names == ["a"] and p.seed == 0
    assert RGBAdapter("/nonexistent", p).params is p


# --- the error policy: per image through the log, per file raised ---------------------------


def _voc_many(root: Path, n: int = 4) -> dict:
    for i in range(n):
        _voc_image(root, ".", f"im{i}", [("cat", False, (2, 2, 9, 9))], seed=i)
    _voc_list(root, ".", "train", [f"im{i}" for i in range(n)])
    return {"years": ["."], "train_sets": ["train"], "test_sets": []}


def test_one_malformed_xml_among_many_goes_through_the_log(tmp_path):
    params = _voc_many(tmp_path)
    (tmp_path / "Annotations" / "im2.xml").write_text("<annotation><object>")
    (tmp_path / "Annotations" / "im3.xml").write_text(
        (tmp_path / "Annotations" / "im3.xml").read_text().replace("<xmin>2<", "<xmin>9<")
        .replace("<xmax>9<", "<xmax>2<")
    )  # fmt: skip
    # error mode: the first bad image stops discovery, naming its file
    with pytest.raises(DataError, match=r"Annotations/im2\.xml: sample im2: malformed VOC XML"):
        RGBAdapter(tmp_path, params).discover()
    # skip mode: the bad images are recorded (file, unit, sample, reason), the rest listed
    log = PrepareLog(on_error="skip")
    refs = RGBAdapter(tmp_path, params, log=log).discover()
    assert [r.ref_id for r in refs] == ["im0", "im1"]
    assert [(s["file"], s["unit"], s["sample"], s["stage"]) for s in log.skipped] == [
        (str(tmp_path / "Annotations" / "im2.xml"), "image", "im2", "discover"),
        (str(tmp_path / "Annotations" / "im3.xml"), "image", "im3", "discover"),
    ]
    assert "malformed VOC XML" in log.skipped[0]["reason"]
    assert "inverted box of 'cat'" in log.skipped[1]["reason"]


@pytest.mark.parametrize("case", ["unknown_class", "escape", "missing_image"])
def test_per_image_xml_problems_are_skippable(tmp_path, case):
    params = _voc_many(tmp_path, 3)
    xml = tmp_path / "Annotations" / "im1.xml"
    if case == "unknown_class":
        _voc_xml(xml, "im1.png", (20, 16), [("dragon", False, (2, 2, 9, 9))])
    elif case == "escape":
        _voc_xml(xml, "../../secret.png", (20, 16), [])
    else:
        (tmp_path / "JPEGImages" / "im1.png").unlink()
    log = PrepareLog(on_error="skip")
    refs = RGBAdapter(tmp_path, params, log=log).discover()
    assert [r.ref_id for r in refs] == ["im0", "im2"]
    (rec,) = log.skipped
    assert rec["file"] == str(xml) and rec["sample"] == "im1"
    assert {"unknown_class": "unknown class 'dragon'", "escape": "escapes the dataset root",
            "missing_image": "im1.png not found"}[case] in rec["reason"]  # fmt: skip


def test_file_level_problems_raise_even_in_skip_mode(tmp_path, coco_tree):
    params = _voc_many(tmp_path / "voc")
    with pytest.raises(DataError, match=r"ImageSets/Main/val\.txt: image list not found"):
        RGBAdapter(
            tmp_path / "voc", {**params, "val_sets": ["val"]}, log=PrepareLog(on_error="skip")
        ).discover()
    root, coco_params, train, _, _ = coco_tree
    (root / "annotations" / "train.json").write_bytes(b"\x00\xff not json")
    with pytest.raises(DataError, match=r"annotations/train\.json: malformed COCO JSON"):
        RGBAdapter(root, coco_params, log=PrepareLog(on_error="skip")).discover()
    # two entries with one id, an annotation of no listed image: the file's fault
    train["images"].append(dict(train["images"][0]))
    (root / "annotations" / "train.json").write_text(json.dumps(train))
    with pytest.raises(DataError, match="duplicate image id 5"):
        RGBAdapter(root, coco_params, log=PrepareLog(on_error="skip")).discover()
    train["images"].pop()
    train["annotations"][0]["image_id"] = 777
    (root / "annotations" / "train.json").write_text(json.dumps(train))
    strict = {**coco_params, "unmatched": "error"}
    with pytest.raises(DataError, match="unknown image id 777"):
        RGBAdapter(root, strict, log=PrepareLog(on_error="skip")).discover()
    # unmatched: skip (the default): counted in one warning naming the JSON, nothing refused
    log = PrepareLog(on_error="skip")
    refs = RGBAdapter(root, coco_params, log=log).discover()
    assert refs and not log.skipped
    (w,) = [
        w for w in log.warnings if "do not list" in w["reason"] or "does not list" in w["reason"]
    ]
    assert w["file"].endswith("annotations/train.json")
    assert w["reason"].startswith("1 annotation(s) refer to image ids") and "[777]" in w["reason"]


@pytest.mark.parametrize("case", ["bad_entry", "missing_image", "bad_annotation", "unknown_cat"])
def test_one_bad_coco_image_goes_through_the_log(coco_tree, case):
    root, params, train, _, _ = coco_tree
    path = root / "annotations" / "train.json"
    if case == "bad_entry":
        train["images"][1]["file_name"] = ""  # image 9
    elif case == "missing_image":
        (root / "train2017" / "000000000009.png").unlink()
    elif case == "bad_annotation":
        next(a for a in train["annotations"] if a["image_id"] == 9)["bbox"] = [1, 2, "w", 4]
    else:
        next(a for a in train["annotations"] if a["image_id"] == 9)["category_id"] = 2
    path.write_text(json.dumps(train))
    with pytest.raises(DataError, match=r"annotations/train\.json: sample coco/9: "):
        RGBAdapter(root, params).discover()
    log = PrepareLog(on_error="skip")
    a = RGBAdapter(root, params, log=log)
    samples = _read_all(a)
    assert set(samples) == {"coco/5", "coco/12", "coco/3"}  # image 9 alone is left out
    (rec,) = log.skipped
    assert rec["file"].endswith("annotations/train.json") and rec["sample"] == "coco/9"
    assert {"bad_entry": "'file_name' must be a non-empty string",
            "missing_image": "000000000009.png not found",
            "bad_annotation": "bbox must be [x, y, w, h]",
            "unknown_cat": "unknown category id 2"}[case] in rec["reason"]  # fmt: skip
    # the other images keep all their annotations
    n5 = sum(x["image_id"] == 5 for x in train["annotations"])
    assert len(samples["coco/5"].boxes) == n5


# --- read(): the whole image decodes or the image is refused --------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_raises_naming_the_file(tmp_path, fmt):
    """A file Pillow wrote, then cut: Pillow opens it lazily (the header is intact), so only
    decoding every pixel inside read() shows the damage."""
    params = {"years": ["."], "train_sets": ["train"], "test_sets": []}
    ext = {"JPEG": "jpg", "PNG": "png"}[fmt]
    img = tmp_path / "JPEGImages" / f"a.{ext}"
    img.parent.mkdir(parents=True)
    arr = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(arr).save(img, format=fmt)
    img.write_bytes(img.read_bytes()[: img.stat().st_size * 2 // 3])
    with Image.open(img) as im:  # the cut file still opens: the header alone looks fine
        assert im.size == (128, 96)
    _voc_xml(tmp_path / "Annotations" / "a.xml", f"a.{ext}", (128, 96), [])
    _voc_list(tmp_path, ".", "train", ["a"])
    a = RGBAdapter(tmp_path, params)
    (ref,) = a.discover()  # listing reads no pixels
    with pytest.raises(DataError) as info:
        list(a.read(ref))
    msg = str(info.value)
    assert msg.startswith(f"{img}: sample a: cannot decode image: "), msg
    assert "truncated" in msg, msg


def test_max_pixels_message_names_the_param(tmp_path):
    params = {**_voc_many(tmp_path, 1), "max_pixels": 300}
    a = RGBAdapter(tmp_path, params)
    (ref,) = a.discover()
    with pytest.raises(DataError) as info:
        list(a.read(ref))
    assert str(info.value) == (
        f"{tmp_path / 'JPEGImages' / 'im0.png'}: sample im0: declares 20 x 16 px = 320, over "
        "the limit max_pixels=300 (raise the adapter param 'max_pixels' to read it)"
    )
    (s,) = RGBAdapter(tmp_path, {**params, "max_pixels": 320}).read(ref)
    assert s.image.shape == (3, 16, 20)
