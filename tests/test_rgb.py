"""The RGB adapter: VOC and COCO trees written by hand to the formats' specs, read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import ConfigError, DataError
from modalities import get_adapter
from modalities.rgb import (
    _DEMO_COLOURS,
    _DEMO_PALETTES,
    BOX_TOLERANCE_PX,
    VOC_CLASSES,
    RGBAdapter,
    from_coco_results,
    to_coco_results,
)

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
    with pytest.raises(DataError, match=r"Annotations/0000\d\d\.xml: unknown class"):
        RGBAdapter(root, {**params, "classes": sub}).discover()
    samples = _read_all(RGBAdapter(root, {**params, "classes": sub, "unknown_classes": "skip"}))
    for key, (objs, _) in truth.items():
        kept = [o for o in objs if o[0] in sub]
        boxes, labels, diff = _expected(kept, classes=sub)
        np.testing.assert_array_equal(samples[key].boxes, boxes)
        np.testing.assert_array_equal(samples[key].labels, labels)
        assert samples[key].meta["skipped_unknown"] == len(objs) - len(kept)


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
    # declared size differs from the image
    _voc_xml(tmp_path / "Annotations" / "a.xml", "a.png", (w + 1, h), [])
    with pytest.raises(DataError, match=r"Annotations/a\.xml.*declares image size 21x16"):
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
        "no_bndbox",
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
    elif case == "no_bndbox":
        xml.write_text(
            "<annotation><filename>a.png</filename><object><name>cat</name></object></annotation>"
        )
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
    "bomb": "more than max_pixels",
    "not_a_number": "not a number",
    "no_bndbox": "no <bndbox>",
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
    with pytest.raises(ConfigError, match="unknown_classes"):
        RGBAdapter(tmp_path, {"unknown_classes": "ignore"})
    with pytest.raises(ConfigError, match="classes"):
        RGBAdapter(tmp_path, {"classes": ["a", "a"]})
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
            np.testing.assert_array_equal(s.difficult, [bool(x["iscrowd"]) for x in mine])
            np.testing.assert_array_equal(
                s.image, pixels[img["id"]].transpose(2, 0, 1) / np.float32(255)
            )
            assert s.meta["image_id"] == img["id"]
    assert len(samples["coco/12"].boxes) == 0  # kept although unannotated
    assert samples["coco/5"].difficult.sum() >= 1  # the crowd region is there, flagged

    dropped = _read_all(RGBAdapter(root, {**params, "keep_difficult": False}))
    for sid, s in samples.items():
        np.testing.assert_array_equal(dropped[sid].boxes, s.boxes[~s.difficult])


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
    elif case == "unknown_image":
        train["annotations"][0]["image_id"] = 777
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
        RGBAdapter(root, {**params, "classes": ["train", "person", "toothbrush"]}).discover()
    a = RGBAdapter(root, {**params, "classes": ["person", "train", "toothbrush"]})
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
    names = list(_DEMO_COLOURS)
    palette = np.array([_DEMO_COLOURS[n] for n in names], float)
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
            colour_ok += nearest in _DEMO_PALETTES[a.class_names[label - 1]]
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
    palette = np.array(list(_DEMO_COLOURS.values()), float)
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
    # max_pixels given as YAML reads 50e6: a string, accepted as a number
    a = RGBAdapter(tmp_path, {**params, "max_pixels": "50e6"})
    assert a.params["max_pixels"] == 50e6
    with pytest.raises(ConfigError, match="val_fraction"):
        RGBAdapter(tmp_path, {**params, "val_fraction": 1.0})
