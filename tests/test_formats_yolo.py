"""YOLO txt labels (modalities/formats/yolo.py) and the rgb collection layout reading them:
the Ultralytics tree (images/<split> <-> labels/<split>), a flat tree, names from data.yaml
(list or mapping) or classes.txt, segment lines, background images, refused lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dsod_core.errors import DataError
from modalities.base import PrepareLog
from modalities.formats.yolo import parse_yolo_txt, read_yolo_names
from modalities.rgb.adapter import RGBAdapter


def _jpg(path: Path, w: int = 40, h: int = 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (40, 90, 200)).save(path, quality=95)


def _txt(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def ultralytics(tmp_path):
    """images/{train,val}/*.jpg, labels mirrored, data.yaml with a names mapping."""
    _jpg(tmp_path / "images" / "train" / "a.jpg")
    _jpg(tmp_path / "images" / "train" / "b.jpg")  # empty txt: background
    _jpg(tmp_path / "images" / "val" / "c.jpg")  # no txt at all: background
    _txt(tmp_path / "labels" / "train" / "a.txt",
         "0 0.5 0.5 0.5 0.5\n1 0.1 0.1 0.3 0.1 0.2 0.6\n\n")  # fmt: skip
    _txt(tmp_path / "labels" / "train" / "b.txt", "")
    with open(tmp_path / "data.yaml", "w") as fh:
        yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                        "names": {0: "boat", 1: "buoy"}}, fh)  # fmt: skip
    return tmp_path


def test_ultralytics_tree_boxes_splits_and_backgrounds(ultralytics):
    log = PrepareLog()
    a = RGBAdapter(ultralytics, {"format": "collection", "labels": "yolo"}, log=log)
    samples = {s.sample_id: s for ref in a.discover() for s in a.read(ref)}
    assert a.class_names == ["boat", "buoy"]
    assert {k: s.split for k, s in samples.items()} == {
        "train/a": "train", "train/b": "train", "val/c": "val"
    }  # fmt: skip
    # cx,cy,w,h normalised on a 40x20 image -> xyxy px; the segment -> its points' bbox
    np.testing.assert_allclose(samples["train/a"].boxes, [[10, 5, 30, 15], [4, 2, 12, 12]])
    assert samples["train/a"].labels.tolist() == [1, 2]
    assert len(samples["train/b"].boxes) == 0 and len(samples["val/c"].boxes) == 0
    assert log.counts["background_kept"] == 2


def test_flat_tree_with_classes_txt_and_class_map(tmp_path):
    _jpg(tmp_path / "images" / "x.jpg")
    _txt(tmp_path / "labels" / "x.txt", "1 0.5 0.5 1.0 1.0\n0 0.25 0.5 0.1 0.2\n")
    _txt(tmp_path / "labels" / "classes.txt", "boat\nbird\n")  # labelImg's YOLO names file
    params = {"format": "collection", "labels": "yolo", "class_map": {"boat": "ship", "bird": None}}
    a = RGBAdapter(tmp_path, params)
    (s,) = [s for ref in a.discover() for s in a.read(ref)]
    assert a.class_names == ["ship"] and s.labels.tolist() == [1]
    np.testing.assert_allclose(s.boxes, [[8, 8, 12, 12]])


@pytest.mark.parametrize(
    "line, reason",
    [
        ("0 0.5 0.5 0.2", "got 4 values"),
        ("0 0.5 0.5 0.2 0.2 0.9", "got 6 values"),
        ("x 0.5 0.5 0.2 0.2", "class 'x' is not an integer"),
        ("0 0.5 0.5 nan 0.2", "'nan' is not a number"),
        ("0 0.5 1.2 0.2 0.2", "value 1.2 is outside [0, 1]"),
        ("0 0.5 0.5 0 0.2", "box of size 0 x 0.2"),
    ],
)
def test_malformed_lines_are_refused_with_file_and_line(tmp_path, line, reason):
    path = tmp_path / "labels" / "a.txt"
    _txt(path, f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError) as info:
        parse_yolo_txt(path, shown="labels/a.txt")
    assert str(info.value).startswith("labels/a.txt:2: ") and reason in str(info.value)


def test_tolerance_names_and_unknown_index(tmp_path):
    path = tmp_path / "a.txt"
    _txt(path, "0 0.5 0.5 1.0000004 0.2\n")  # exporters' rounding: accepted, clipped
    ((cls, box),) = parse_yolo_txt(path)
    assert cls == 0 and box[0] == 0.0 and box[2] == 1.0
    assert parse_yolo_txt(tmp_path / "none.txt") == []  # missing: background
    _txt(tmp_path / "d.yaml", "names: [a, b]\n")
    assert read_yolo_names(tmp_path / "d.yaml") == ["a", "b"]
    _txt(tmp_path / "d.yaml", "names: {0: a, 2: b}\n")
    with pytest.raises(DataError, match="'names' keys must be 0..1"):
        read_yolo_names(tmp_path / "d.yaml")
    # a class index beyond the names: refused through the log, naming the txt
    _jpg(tmp_path / "images" / "a.jpg")
    _txt(tmp_path / "labels" / "a.txt", "3 0.5 0.5 0.2 0.2\n")
    params = {"format": "collection", "labels": "yolo", "class_names": ["a", "b"]}
    with pytest.raises(DataError, match=r"labels/a\.txt: class index 3 has no name"):
        RGBAdapter(tmp_path, params).discover()
    log = PrepareLog(on_error="skip")
    assert RGBAdapter(tmp_path, params, log=log).discover() == []
    assert log.skipped[0]["file"].endswith("labels/a.txt")
