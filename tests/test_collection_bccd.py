"""A real VOC set (tests/data/bccd: three original BCCD images and XMLs, MIT licence) read by the
rgb adapter as a VOC devkit and as a plain collection folder with split files: the same
images, boxes and labels either way, and nothing skipped or warned."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from modalities.base import PrepareLog
from modalities.rgb.adapter import RGBAdapter

BCCD = Path(__file__).parent / "data" / "bccd"
CLASSES = ["WBC", "RBC", "Platelets"]
MAIN = "BCCD/ImageSets/Main"


def _read(params: dict) -> tuple[dict, PrepareLog]:
    log = PrepareLog()
    a = RGBAdapter(BCCD, params, log=log)
    samples = {s.meta["file_name"]: s for ref in a.discover() for s in a.read(ref)}
    assert a.class_names == CLASSES
    return samples, log


def test_bccd_devkit_and_collection_layouts_agree():
    devkit, log1 = _read(
        {
            "years": ["BCCD"],
            "train_sets": ["BCCD/train"],
            "val_sets": ["BCCD/val"],
            "test_sets": ["BCCD/test"],
            "class_names": CLASSES,
        }  # fmt: skip
    )
    folder, log2 = _read(
        {
            "format": "collection",
            "labels": "voc",
            "image_dir": "BCCD/JPEGImages",
            "label_dir": "BCCD/Annotations",
            "class_names": CLASSES,
            "split_files": {s: f"{MAIN}/{s}.txt" for s in ("train", "val", "test")},
        }  # fmt: skip
    )
    assert not log1.warnings and not log2.warnings
    assert sorted(devkit) == sorted(folder) == [
        "BloodImage_00000.jpg", "BloodImage_00001.jpg", "BloodImage_00031.jpg"
    ]  # fmt: skip
    splits = {k: s.split for k, s in devkit.items()}
    assert splits == {k: s.split for k, s in folder.items()}
    assert splits == {"BloodImage_00000.jpg": "val", "BloodImage_00001.jpg": "train",
                      "BloodImage_00031.jpg": "test"}  # fmt: skip
    names = Counter(CLASSES[lab - 1] for s in devkit.values() for lab in s.labels)
    assert names == {"RBC": 55, "WBC": 4, "Platelets": 4}
    for key, s in devkit.items():
        assert s.image.shape == (3, 480, 640)
        np.testing.assert_array_equal(s.boxes, folder[key].boxes)
        np.testing.assert_array_equal(s.labels, folder[key].labels)
    # BloodImage_00000.xml's first object: WBC, <bndbox> 260 177 491 376 (1-based inclusive)
    first = devkit["BloodImage_00000.jpg"]
    assert first.labels[0] == 1
    np.testing.assert_array_equal(first.boxes[0], [259, 176, 491, 376])
