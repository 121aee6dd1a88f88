"""The synthetic thermal demo set, written in the formats thermal datasets ship.

Scenes are temperature fields in kelvin (a 285-295 K background with a gradient and sensor
noise) with small warm targets: ``person`` (an upright ellipse near 306 K) and ``vehicle``
(a wide box near 300 K with a hot engine patch near 325 K), 0-2 per frame. Each frame is
written as the frame kinds of real sets, in turn:

* 8-bit AGC PNG (the frame's 1st-99th percentile window to 0..255) stored as ``L``, as
  ``RGB`` with R == G == B, and as a grey palette ``P`` image;
* 16-bit radiometric PNG and 16-bit TIFF of counts ``kelvin / 0.01`` (FLIR TLinear).

Labels are Pascal VOC XML in ``annotations/``: some ``<filename>`` without the extension,
background frames (no target) whose XML holds a point annotation (an ``<object>`` without
``<bndbox>``), and one frame without any XML (a background image to the label layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsod_core.errors import ConfigError
from dsod_core.io import write_atomic, write_with
from modalities.formats.voc import voc_xml

DEMO_CLASSES = ("person", "vehicle")
#: Kelvin per count of the demo's 16-bit frames (what ``intensity: temperature`` needs).
DEMO_GAIN = 0.01
#: The frame kinds written in turn: (Pillow mode or "I;16", file suffix).
KINDS = (("L", ".png"), ("RGB", ".png"), ("P", ".png"), ("I;16", ".png"), ("I;16", ".tif"))


def write_demo(
    out_dir: str | Path, *, num_images: int = 48, image_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Write ``images/f*.{png,tif}`` and ``annotations/f*.xml`` under ``out_dir``; return
    the params that read them back (``root=out_dir``): VOC labels, intensity ``agc``, a
    15/15 % val/test hash split."""
    if num_images < 6:
        raise ConfigError(f"write_demo needs num_images >= 6, got {num_images}")
    if image_size < 32:
        raise ConfigError(f"write_demo needs image_size >= 32, got {image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        stem = f"f{i:04d}"
        background = i % 7 == 3
        kelvin, objects = demo_scene(rng, image_size, 0 if background else int(rng.integers(1, 3)))
        mode, suffix = KINDS[i % len(KINDS)]
        write_with(
            out / "images" / f"{stem}{suffix}",
            lambda tmp, k=kelvin, m=mode, s=suffix: _frame(k, m).save(
                tmp, format="PNG" if s == ".png" else "TIFF"
            ),
        )
        if i == num_images - 1:
            continue  # no XML at all: a background image to the label layer
        name = stem if i % 4 == 1 else f"{stem}{suffix}"  # some <filename> without extension
        xml = voc_xml(name, image_size, image_size, objects, depth=1, folder="thermal")
        if background:  # a point annotation: an <object> without <bndbox>, not an object
            point = "  <object><name>person</name><point><x>5</x><y>5</y></point></object>\n"
            xml = xml.replace("</annotation>", point + "</annotation>")
        write_atomic(out / "annotations" / f"{stem}.xml", xml)
    return {
        "labels": "voc",
        "image_dir": "images",
        "label_dir": "annotations",
        "class_names": list(DEMO_CLASSES),
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "intensity": "agc",
    }


def demo_scene(
    rng: np.random.Generator, size: int, n_targets: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A ``[size, size]`` kelvin field and its targets (``name``, continuous xyxy ``box``)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = rng.uniform(285.0, 295.0)
    kelvin = base + rng.uniform(-3, 3) * yy + rng.uniform(-2, 2) * xx
    objects: list[dict[str, Any]] = []
    for _ in range(n_targets):
        name = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
        bw, bh = (0.12, 0.28) if name == "person" else (0.3, 0.16)
        w, h = (max(4, round(f * size * rng.uniform(0.8, 1.2))) for f in (bw, bh))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if name == "person":
            cy, cx = y + h / 2, x + w / 2
            inside = ((yy * size + 0.5 - cy) / (h / 2)) ** 2 + (
                (xx * size + 0.5 - cx) / (w / 2)
            ) ** 2 <= 1
            kelvin[inside] = rng.uniform(304.0, 308.0)
        else:
            kelvin[y : y + h, x : x + w] = rng.uniform(298.0, 302.0)
            kelvin[y : y + h // 2, x : x + max(2, w // 3)] = rng.uniform(320.0, 330.0)
        objects.append({"name": name, "box": [float(x), float(y), float(x + w), float(y + h)]})
    kelvin += rng.normal(0.0, 0.15, kelvin.shape)
    return kelvin, objects


def _frame(kelvin: np.ndarray, mode: str) -> Image.Image:
    """The kelvin field as a frame of ``mode``: 16-bit counts, or an 8-bit AGC image."""
    if mode == "I;16":
        return Image.fromarray(np.round(kelvin / DEMO_GAIN).astype(np.uint16))
    lo, hi = np.percentile(kelvin, [1, 99])
    grey = np.round(np.clip((kelvin - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    image = Image.fromarray(grey, "L")
    if mode == "RGB":
        return image.convert("RGB")
    if mode == "P":  # a grey palette: index g is grey level g
        indexed = Image.fromarray(grey, "P")
        indexed.putpalette([v for g in range(256) for v in (g, g, g)])
        return indexed
    return image
