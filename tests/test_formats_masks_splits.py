"""Masks -> boxes (modalities/formats/masks.py) through the rgb collection layout, and explicit
split files (modalities/formats/splits.py). Masks are PNGs written with Pillow as SIRST-style
infrared sets ship them (``<stem>_pixels0.png``, 0/255)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsod_core.errors import DataError
from modalities.base import PrepareLog
from modalities.formats.masks import mask_boxes
from modalities.formats.splits import assign_splits, read_split_files, unit_aliases
from modalities.rgb.adapter import RGBAdapter


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_components_are_boxes_8_connected_and_small_ones_dropped():
    m = np.zeros((10, 12), np.uint8)
    m[1:3, 1:4] = 255  # 6 px
    m[3, 4] = 255  # touches the first one diagonally: same component (8-connectivity)
    m[6:9, 8:10] = 255  # 6 px
    m[0, 11] = 255  # 1 px
    boxes, classes, dropped = mask_boxes(m, single_class=True, min_pixels=2)
    assert boxes == [[1, 1, 5, 4], [8, 6, 10, 9]] and classes == [1, 1] and dropped == 1
    v = np.zeros((4, 6), np.uint8)
    v[1:3, 0:2] = 1
    v[1:3, 2:4] = 2  # touches class 1: still its own box
    boxes, classes, _ = mask_boxes(v, single_class=False)
    assert sorted(zip(classes, map(tuple, boxes))) == [(1, (0, 1, 2, 3)), (2, (2, 1, 4, 3))]


def test_sirst_style_masks_through_the_rgb_adapter(tmp_path):
    img = np.full((16, 20), 30, np.uint8)
    _save(tmp_path / "images" / "Misc_1.png", img)
    _save(tmp_path / "images" / "Misc_2.png", img)
    _save(tmp_path / "images" / "Misc_3.png", img)  # no mask: background, counted
    m1 = np.zeros((16, 20), np.uint8)
    m1[4:7, 5:8] = 255
    m1[12, 1] = 255  # 1 px, under mask_min_pixels
    _save(tmp_path / "masks" / "Misc_1_pixels0.png", m1)
    _save(tmp_path / "masks" / "Misc_2_pixels0.png", np.zeros((16, 20), np.uint8))
    params = {"format": "collection", "labels": "masks", "mask_suffix": "_pixels0",
              "mask_class": "target", "mask_min_pixels": 2}  # fmt: skip
    log = PrepareLog()
    a = RGBAdapter(tmp_path, params, log=log)
    samples = {s.sample_id: s for ref in a.discover() for s in a.read(ref)}
    assert a.class_names == ["target"]
    np.testing.assert_array_equal(samples["Misc_1"].boxes, [[5, 4, 8, 7]])
    assert len(samples["Misc_2"].boxes) == 0 and len(samples["Misc_3"].boxes) == 0
    reasons = "\n".join(w["reason"] for w in log.warnings)
    assert "1 mask component(s) of fewer than mask_min_pixels=2 pixels dropped" in reasons
    assert "1 image(s) without a mask read as background images" in reasons
    assert log.counts["background_kept"] == 2
    # a mask of another size than its image is refused naming the mask
    _save(tmp_path / "masks" / "Misc_2_pixels0.png", np.zeros((8, 20), np.uint8))
    with pytest.raises(DataError, match=r"masks/Misc_2_pixels0\.png: mask is 20x8"):
        RGBAdapter(tmp_path, params).discover()


def test_split_files_entries_conflicts_and_unlisted(tmp_path):
    (tmp_path / "train.txt").write_text("# comment\n a.png \n\nsub/b\n./c # trailing\n")
    (tmp_path / "val.txt").write_text("d\r\nghost\n")
    listed = read_split_files({"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"})
    assert {e: s for e, (s, _) in listed.items()} == {
        "a.png": "train", "sub/b": "train", "c": "train", "d": "val", "ghost": "val"
    }  # fmt: skip
    units = {u: unit_aliases(f"{u}.png", "images") for u in ("a", "sub/b", "c", "d", "e")}
    got = assign_splits(units, listed, unlisted="drop")
    assert got.split == {"a": "train", "sub/b": "train", "c": "train", "d": "val"}
    assert [e for e, _ in got.not_found] == ["ghost"] and got.unlisted == ["e"]
    hashed = assign_splits(units, listed, unlisted="hash", val_fraction=0.5)
    assert hashed.split["e"] in ("train", "val")
    (tmp_path / "val.txt").write_text("a\n")
    (tmp_path / "test.txt").write_text("a.png\n")
    with pytest.raises(DataError, match=r"test\.txt: 'a\.png' is listed for split 'test' here"):
        read_split_files({"train": tmp_path / "train.txt", "test": tmp_path / "test.txt"})
    listed = read_split_files({"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"})
    with pytest.raises(DataError, match=r"val\.txt: unit 'a' is listed for split 'val'"):
        assign_splits(units, listed)
