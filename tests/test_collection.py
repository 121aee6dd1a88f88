"""The shared labelled-image layer (modalities/formats/collection.py) through the rgb adapter's
``collection`` format and its ``voc``/``coco`` layouts: VOC files as labelImg and CVAT write
them, COCO quirks (crowd, unmatched, class_map, categories by name), background images, and
split files. Images are written with Pillow, COCO with json.dump, XML as the tools write it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import ConfigError, DataError
from modalities.base import PrepareLog
from modalities.formats.collection import CollectionParams, discover_collection
from modalities.rgb.adapter import RGBAdapter


def _png(path: Path, w: int = 32, h: int = 24, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(len(path.name)).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _labelimg_xml(path: Path, filename: str, size, objects, *, extra: str = "") -> None:
    """A VOC file laid out as labelImg's writer lays it out (tabs, <path>, <source>)."""
    objs = "".join(
        f"\t<object>\n\t\t<name>{n}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>{int(d)}</difficult>\n"
        f"\t\t<bndbox>\n\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n"
        f"\t\t\t<xmax>{b[2]}</xmax>\n\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for n, d, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation>\n\t<folder>images</folder>\n\t<filename>{filename}</filename>\n"
        f"\t<path>/home/user/images/{filename}</path>\n"
        "\t<source>\n\t\t<database>Unknown</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n"
        f"\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n{objs}{extra}"
        "</annotation>\n"
    )


# a CVAT "PASCAL VOC 1.1" style object: float corners, <occluded>, <attributes>, and a point
# annotation exported without any <bndbox>
CVAT_POINT = (
    "<object><name>car</name><occluded>0</occluded><difficult>0</difficult>"
    "<attributes><attribute><name>kind</name><value>point</value></attribute></attributes>"
    "</object>"
)


def _read(adapter: RGBAdapter) -> dict:
    return {s.sample_id: s for ref in adapter.discover() for s in adapter.read(ref)}


def _reasons(log: PrepareLog) -> list[str]:
    return [w["reason"] for w in log.warnings]


@pytest.fixture
def voc_folder(tmp_path):
    """images/ + annotations/ without ImageSets: <filename> without extension, with a wrong
    extension, with another case; a point object; an image without XML; a size mismatch."""
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / "b.jpg", fmt="PNG")  # named .jpg, holds a PNG: Pillow reads it
    _png(tmp_path / "images" / "C.PNG")
    _png(tmp_path / "images" / "d.png")  # no XML: a background image
    ann = tmp_path / "annotations"
    _labelimg_xml(ann / "a.xml", "a", (32, 24), [("car", 0, (2, 3, 10, 12))])  # no extension
    _labelimg_xml(ann / "b.xml", "b.jpeg", (32, 24), [("person", 1, (5, 5, 20, 20))])
    _labelimg_xml(ann / "c.xml", "C.png", (40, 24), [("car", 0, (1.5, 2.5, 30.5, 20))],
                  extra=CVAT_POINT)  # fmt: skip
    return tmp_path


def test_voc_folder_resolves_filenames_by_stem_and_counts_quirks(voc_folder):
    log = PrepareLog()
    a = RGBAdapter(voc_folder, {"format": "collection", "labels": "voc"}, log=log)
    samples = _read(a)
    assert sorted(samples) == ["C", "a", "b", "d"]
    assert a.class_names == ["car", "person"]  # names found, sorted
    assert samples["a"].source.endswith("images/a.png")
    np.testing.assert_array_equal(samples["a"].boxes, [[1, 2, 10, 12]])  # 1-based inclusive
    assert samples["b"].difficult.tolist() == [True] and samples["b"].labels.tolist() == [2]
    np.testing.assert_allclose(samples["C"].boxes, [[0.5, 1.5, 30.5, 20]])
    assert samples["d"].boxes.shape == (0, 4) and samples["d"].meta["background"]
    reasons = _reasons(log)
    assert "1 VOC object(s) without a <bndbox> ignored (no box: not objects)" in reasons
    assert any(r.startswith("1 image(s) without an annotation file") and "'d'" in r
               for r in reasons)  # fmt: skip
    assert "1 background images (no boxes) kept" not in reasons  # a count, not a warning
    assert log.counts["background_kept"] == 1
    # c.xml declares 40x24 but the image is 32x24: one warning, the image wins
    (size,) = [w for w in log.warnings if "declares image size" in w["reason"]]
    assert size["file"].endswith("annotations/c.xml") and size["sample"] == "C"
    assert samples["C"].image.shape == (3, 24, 32)


def test_voc_folder_errors_name_the_file(voc_folder):
    _labelimg_xml(voc_folder / "annotations" / "e.xml", "nothere.png", (32, 24), [])
    with pytest.raises(DataError, match=r"annotations/e\.xml: no image for <filename>"):
        RGBAdapter(voc_folder, {"format": "collection", "labels": "voc"}).discover()
    log = PrepareLog(on_error="skip")
    refs = RGBAdapter(voc_folder, {"format": "collection", "labels": "voc"}, log=log).discover()
    assert len(refs) == 4 and log.skipped[0]["file"].endswith("annotations/e.xml")
    # a box far outside the real image is still refused at read, naming the XML
    _labelimg_xml(voc_folder / "annotations" / "e.xml", "d", (64, 24), [("car", 0, (2, 2, 60, 9))])
    with pytest.raises(DataError, match=r"annotations/e\.xml: sample d: box .* outside the 32x24"):
        _read(RGBAdapter(voc_folder, {"format": "collection", "labels": "voc"}))


def test_devkit_layout_resolves_filename_by_stem_and_counts(tmp_path):
    """The rgb devkit layout: <filename> without extension, a PNG where the XML says .jpg,
    point objects without <bndbox> and a background image, all counted."""
    _png(tmp_path / "JPEGImages" / "x.png")
    _png(tmp_path / "JPEGImages" / "y.PNG")
    _labelimg_xml(tmp_path / "Annotations" / "x.xml", "x", (32, 24), [("cat", 0, (2, 2, 9, 9))])
    _labelimg_xml(tmp_path / "Annotations" / "y.xml", "y.jpg", (32, 24), [], extra=CVAT_POINT)
    sets = tmp_path / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("x\ny\n")
    log = PrepareLog()
    params = {"years": ["."], "train_sets": ["train"], "test_sets": [], "class_names": ["cat"]}
    samples = _read(RGBAdapter(tmp_path, params, log=log))
    assert samples["x"].source.endswith("JPEGImages/x.png")
    assert samples["y"].meta["file_name"] == "y.PNG" and len(samples["y"].boxes) == 0
    assert _reasons(log) == [
        "1 VOC object(s) without a <bndbox> ignored (no box: not objects)",
    ]
    assert log.counts["background_kept"] == 1


# --- COCO ------------------------------------------------------------------------------------
def _coco(path: Path, images, anns, cats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"images": images, "annotations": anns, "categories": cats}, fh)


def _img(i, name, w=32, h=24):
    return {"id": i, "file_name": name, "width": w, "height": h}


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


@pytest.fixture
def coco_folder(tmp_path):
    for name in ("p.png", "q.png", "r.png"):
        _png(tmp_path / "images" / name)
    # two files, category ids differ, names match; "boat" is the dataset's name for ship
    _coco(
        tmp_path / "train.json",
        [_img(1, "p.png"), _img(2, "q.png")],
        [
            _ann(1, 1, 3, [1, 1, 8, 8]),
            _ann(2, 2, 4, [2, 2, 5, 5]),
            _ann(3, 99, 3, [0, 0, 2, 2]),
            _ann(4, 2, 5, [0, 0, 3, 3]),
            _ann(5, 1, 3, [4, 4, 0, 6]),
        ],
        [{"id": 3, "name": "boat"}, {"id": 4, "name": "buoy"}, {"id": 5, "name": "logo"}],
    )
    _coco(tmp_path / "val.json", [_img(7, "r.png")], [_ann(1, 7, 1, [3, 3, 6, 6], crowd=1)],
          [{"id": 1, "name": "boat"}, {"id": 2, "name": "buoy"}])  # fmt: skip
    return tmp_path


COCO_PARAMS = {
    "format": "collection",
    "labels": "coco",
    "coco_json": {"train": "train.json", "val": "val.json"},
    "class_map": {"boat": "ship", "logo": None},
}


def test_coco_quirks_are_counted_in_one_warning_each(coco_folder):
    log = PrepareLog()
    a = RGBAdapter(coco_folder, COCO_PARAMS, log=log)
    samples = _read(a)
    assert a.class_names == ["ship", "buoy"]
    assert {k: s.split for k, s in samples.items()} == {"p": "train", "q": "train", "r": "val"}
    np.testing.assert_array_equal(samples["p"].boxes, [[1, 1, 9, 9]])  # zero-width one dropped
    assert samples["q"].labels.tolist() == [2]  # buoy (id 4 here), the logo dropped
    # val.json: its only annotation is crowd -> auto reads it as an object (named param)
    assert samples["r"].labels.tolist() == [1] and not samples["r"].crowd.any()
    reasons = "\n".join(_reasons(log))
    assert "1 annotation(s) refer to image ids the file does not list, skipped" in reasons
    assert "first ids [99]" in reasons
    assert "every one of the 1 boxes is iscrowd: read as objects (crowd: auto" in reasons
    assert "crowd: ignore" in reasons
    assert "1 object(s) of classes ['logo'] dropped by class_map" in reasons
    assert "1 zero-width or zero-height COCO box(es) dropped" in reasons


def test_coco_crowd_and_unmatched_params(coco_folder):
    a = RGBAdapter(coco_folder, {**COCO_PARAMS, "crowd": "ignore"})
    r = _read(a)["r"]
    assert r.crowd.tolist() == [True]
    with pytest.raises(DataError, match=r"train\.json: annotation 3 refers to image id 99"):
        RGBAdapter(coco_folder, {**COCO_PARAMS, "unmatched": "error"}).discover()
    strict = {**COCO_PARAMS, "class_map": {"boat": "ship"}, "class_names": ["ship", "buoy"]}
    with pytest.raises(DataError, match=r"train\.json: sample q: unknown class 'logo'"):
        RGBAdapter(coco_folder, strict).discover()
    log = PrepareLog()
    RGBAdapter(coco_folder, {**strict, "unknown_class": "skip"}, log=log).discover()
    assert "1 object(s) of unknown classes ['logo'] skipped" in "\n".join(_reasons(log))
    with pytest.raises(ConfigError, match="crowd"):
        RGBAdapter(coco_folder, {**COCO_PARAMS, "crowd": "sometimes"})


def test_coco_layout_takes_class_map_crowd_and_unmatched(tmp_path):
    """The rgb coco layout (per-split JSON, image_dirs): a dataset whose category is "boat"
    trains class "ship"; unmatched annotations counted; a crowd-only file read as objects."""
    _png(tmp_path / "train2017" / "1.png")
    _coco(tmp_path / "annotations" / "train.json", [_img(1, "1.png")],
          [_ann(1, 1, 9, [1, 1, 5, 5], crowd=1), _ann(2, 5, 9, [1, 1, 5, 5]),
           _ann(3, 1, 2, [2, 2, 4, 4], crowd=1)],
          [{"id": 2, "name": "flag"}, {"id": 9, "name": "boat"}])  # fmt: skip
    params = {"format": "coco", "train_json": "annotations/train.json", "test_json": None,
              "class_map": {"boat": "ship", "flag": ""}}  # fmt: skip
    log = PrepareLog()
    a = RGBAdapter(tmp_path, params, log=log)
    (s,) = _read(a).values()
    assert a.class_names == ["ship"] and a.label_to_category_id == {1: 9}
    assert s.labels.tolist() == [1] and s.crowd.tolist() == [False]
    reasons = "\n".join(_reasons(log))
    assert "1 annotation(s) refer to image ids the file does not list" in reasons
    assert "every one of the 2 annotations is iscrowd: read as objects" in reasons
    assert "1 annotation(s) of categories dropped by class_map" in reasons
    s = next(iter(_read(RGBAdapter(tmp_path, {**params, "crowd": "ignore"})).values()))
    assert s.crowd.tolist() == [True]


# --- backgrounds, splits, the API for other modalities ----------------------------------------
class _Bare:
    """What discover_collection needs of an adapter: root, log, resolve_inside_root."""

    def __init__(self, root, params):
        from modalities.base import ModalityAdapter

        self.root, self.log = Path(root), PrepareLog()
        self.params = CollectionParams.parse(params, owner="test")
        self._resolve = ModalityAdapter.resolve_inside_root

    def resolve_inside_root(self, rel, ref):
        return self._resolve(self, rel, ref)


def test_split_files_and_keep_background(voc_folder):
    (voc_folder / "lists").mkdir()
    (voc_folder / "lists" / "train.txt").write_text("# train\na.png\n\nb\n")
    (voc_folder / "lists" / "val.txt").write_text("images/C.PNG\nmissing_one\n")
    params = {"labels": "voc", "split_files": {"train": "lists/train.txt", "val": "lists/val.txt"}}
    bare = _Bare(voc_folder, params)
    counts: dict = {}
    items, names = discover_collection(bare, bare.params, image_suffixes=(".png", ".jpg"),
                                       counts=counts)  # fmt: skip
    assert {i.image_id: i.split for i in items} == {"a": "train", "b": "train", "C": "val"}
    assert counts["split_not_found"] == 1 and counts["split_unlisted_dropped"] == 1
    assert names == ["car", "person"]
    (voc_folder / "lists" / "val.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"lists/val\.txt: unit 'a' is listed for split 'val'"):
        discover_collection(bare, bare.params, image_suffixes=(".png", ".jpg"))
    # keep_background: 0 drops the image without boxes, counted
    bare = _Bare(voc_folder, {"labels": "voc", "keep_background": 0.0})
    counts = {}
    items, _ = discover_collection(bare, bare.params, image_suffixes=(".png", ".jpg"),
                                   counts=counts)  # fmt: skip
    assert "d" not in {i.image_id for i in items} and counts["background_dropped"] == 1


def test_collection_params_are_checked():
    with pytest.raises(ConfigError, match="coco_json"):
        CollectionParams.parse({"labels": "coco"}, owner="t")
    with pytest.raises(ConfigError, match="split_files"):
        CollectionParams.parse({"split_files": {"training": "t.txt"}}, owner="t")
    with pytest.raises(ConfigError, match="mask_class"):
        CollectionParams.parse({"labels": "masks"}, owner="t")


def test_rgb_params_of_another_layout_are_refused_not_ignored():
    from dsod_core.errors import ConfigError

    with pytest.raises(ConfigError, match="'split_files': applies to format: collection"):
        RGBAdapter(".", {"split_files": {"train": "train.txt"}})  # format: voc
    with pytest.raises(ConfigError, match="'crowd': does not apply to format: voc"):
        RGBAdapter(".", {"crowd": "objects"})
    with pytest.raises(ConfigError, match="'years': does not apply to format: collection"):
        RGBAdapter(".", {"format": "collection", "years": ["VOC2012"]})
    with pytest.raises(ConfigError, match="'train_json': does not apply to format: voc"):
        RGBAdapter(".", {"train_json": "a.json"})
    RGBAdapter(".", {"format": "coco", "crowd": "objects", "class_map": {"boat": "ship"}})
