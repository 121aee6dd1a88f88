"""The small-target set (modalities/thermal/small_targets.py): real 8-bit PNG + VOC files,
targets of 4-8 px in 512 px frames, background frames; read by the thermal adapter and cut
into tiles the way docs/small_objects.md trains it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dsod_core.tiling import tile_sample
from modalities.formats.voc import parse_voc_xml
from modalities.thermal.adapter import ThermalAdapter
from modalities.thermal.small_targets import main, write_small_target_demo


def test_files_sizes_and_backgrounds(tmp_path):
    params = write_small_target_demo(tmp_path, num_images=10, image_size=512, seed=3)
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 10
    sides, backgrounds = [], 0
    for png in images:
        with Image.open(png) as im:
            assert im.mode == "L" and im.size == (512, 512)
        ann = parse_voc_xml(tmp_path / "annotations" / f"{png.stem}.xml")
        backgrounds += not ann["objects"]
        for obj in ann["objects"]:
            x1, y1, x2, y2 = obj["box"]  # 1-based inclusive pixels -> continuous
            sides.append(max(x2 - x1, y2 - y1))
    assert backgrounds == 2  # every fifth frame
    assert sides and 4 <= min(sides) and max(sides) <= 10  # 4-8 px, rounded out to pixels
    a = ThermalAdapter(tmp_path, params)
    refs = a.discover()
    assert len(refs) == 10 and a.class_names == ["target"] and a.channel_names == ["intensity"]


def test_targets_survive_tiling_and_stand_out(tmp_path):
    params = write_small_target_demo(tmp_path, num_images=10, image_size=512, seed=1)
    a = ThermalAdapter(tmp_path, params)
    (sample,) = a.read(next(r for r in a.discover() if r.meta["boxes"]))
    tiles = tile_sample(sample, 64, 16)
    assert len(tiles) == 11 * 11
    kept = sum(len(t.boxes) for t in tiles)
    assert kept >= len(sample.boxes)  # every target is seen whole by at least one tile
    img = sample.image[0]
    for x1, y1, x2, y2 in sample.boxes.astype(int):
        peak = img[y1 : y2 + 1, x1 : x2 + 1].max()
        ring = np.median(img[max(y1 - 8, 0) : y2 + 9, max(x1 - 8, 0) : x2 + 9])
        assert peak - ring > 15 / 255  # a warm point above its surroundings


def test_command_line_prints_the_params(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--num-images", "10"]) == 0
    assert '"labels": "voc"' in capsys.readouterr().out
